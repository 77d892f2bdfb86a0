"""Durations and sizes as a config file writes them (public: the ctl client will want the
same spellings)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["parse_duration", "parse_size"]

_DURATION_RE: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_DURATION_UNITS: Final[Mapping[str, float]] = MappingProxyType(
    {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
)
_SIZE_RE: Final = re.compile(r"^([0-9]+)(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
_SIZE_UNITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "B": 1,
        "kB": 1000,
        "KB": 1000,
        "MB": 1000**2,
        "GB": 1000**3,
        "TB": 1000**4,
        "KiB": 1024,
        "MiB": 1024**2,
        "GiB": 1024**3,
        "TiB": 1024**4,
    }
)
_MAX_DURATION: Final = 7 * 24 * 3600.0
"""A week: longer than any sane timeout, short enough that arithmetic on deadlines is safe."""
_MAX_SIZE: Final = 1 << 50


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string with a unit: ``250ms``, ``5s``, ``2m``, ``1h``.

    A bare string like ``"5"`` is refused: a unit-less string is usually a quoting accident,
    and guessing seconds vs milliseconds is how timeouts end up 1000x off.

    Raises:
        ValueError: not a finite, non-negative duration in one of those spellings.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        if value > _MAX_DURATION:
            raise ValueError(f"{value} seconds is more than a week")
        return float(value)
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("a duration must be a finite, non-negative number")
        if value > _MAX_DURATION:
            raise ValueError(f"{value} seconds is more than a week")
        return value
    if isinstance(value, str):
        match = _DURATION_RE.match(value.strip())
        if match is None:
            raise ValueError("not a duration")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if seconds > _MAX_DURATION:
            raise ValueError(f"{value} is more than a week")
        return seconds
    raise ValueError("not a duration")


def parse_size(value: object) -> int:
    """Bytes from an int or a string with a unit: ``64KiB``, ``512MiB``, ``1GiB``, ``10MB``.

    Units are case-sensitive on purpose: ``KB``/``MB``/``GB`` are powers of 1000 and
    ``KiB``/``MiB``/``GiB`` powers of 1024. redis.conf reads ``1mb`` as 1024*1024 but ``1m``
    as 1000000; rather than inherit that trap, lowercase ``mb`` is refused with a hint.

    Raises:
        ValueError: not a non-negative whole number of bytes in one of those spellings.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        if value > _MAX_SIZE:
            raise ValueError("size is too large")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value.strip())
        if match is None:
            raise ValueError("not a size")
        digits = match.group(1)
        if len(digits) > 20:
            raise ValueError("size is too large")
        size = int(digits) * _SIZE_UNITS[match.group(2)]
        if size > _MAX_SIZE:
            raise ValueError("size is too large")
        return size
    raise ValueError("not a size")

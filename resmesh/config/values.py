"""One value of each kind, checked: the typed value, or a :class:`ConfigError` saying why not.

Every checker takes ``where`` (what turns a key path into an error in the right file) and the
value's key path, so each message names the key; each fix shows a value that would work.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Final, TypeVar

from .address import Address
from .errors import Errors, KeyPath, describe, suggest, unknown_fix
from .units import parse_duration, parse_size

__all__ = [
    "NAME_FIX",
    "NAME_RE",
    "address",
    "boolean",
    "choice",
    "duration",
    "mapping",
    "name",
    "number",
    "size",
    "string",
    "whole",
]

NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NAME_FIX: Final = "use letters, digits, '-' and '_' (up to 64, starting with a letter or digit)"

_E = TypeVar("_E", bound=enum.StrEnum)


def mapping(
    where: Errors,
    value: object,
    path: KeyPath,
    known: tuple[str, ...] | None,
    *,
    example: str,
    required: tuple[str, ...] = (),
    allow_null: bool = False,
) -> dict[str, object]:
    """Check that ``value`` is a mapping with string keys; with ``known``, only those keys.

    ``allow_null`` lets an emptied section (``users:`` with nothing under it, which YAML reads
    as null) mean "defaults" rather than being an error.
    """
    if value is None and allow_null:
        return {}
    if not isinstance(value, dict):
        raise where.error(
            path,
            f"expected a mapping, got {describe(value)}",
            f"write it as a mapping, e.g. {example}",
        )
    for key in value:
        if not isinstance(key, str):
            hint = " (YAML reads yes/no/on/off as booleans)" if isinstance(key, bool) else ""
            raise where.error(
                path,
                f"keys must be strings, got {describe(key)}{hint}",
                f"quote the key, e.g. '{key}':",
            )
        if known is not None and key not in known:
            raise where.error((*path, key), f"unknown key {key!r}", unknown_fix(key, known))
    for key in required:
        if key not in value:
            raise where.error(
                (*path, key), f"missing required key {key!r}", f"add it, e.g. {example}"
            )
    return value


def name(where: Errors, text: str, path: KeyPath, what: str) -> str:
    """A name of something the file defines (a cluster, group, user or preset)."""
    if not NAME_RE.match(text):
        raise where.error(path, f"{text!r} is not a valid {what} name", NAME_FIX)
    return text


def string(
    where: Errors, value: object, path: KeyPath, *, example: str, allow_empty: bool = False
) -> str:
    if isinstance(value, str):
        if not value and not allow_empty:
            raise where.error(path, "empty string", f"give a value, e.g. {example}")
        try:
            value.encode()  # strings go on the wire as UTF-8: "\ud800" cannot
        except UnicodeEncodeError:
            raise where.error(
                path,
                "contains a lone surrogate (an escape such as \\ud800), which is not text",
                f"write plain text, e.g. {example}",
            ) from None
        return value
    if isinstance(value, bool | int | float):
        fix = f"quote it: '{value}'"
    else:
        fix = f"write a string, e.g. {example}"
    raise where.error(path, f"expected a string, got {describe(value)}", fix)


def boolean(where: Errors, value: object, path: KeyPath) -> bool:
    if isinstance(value, bool):
        return value
    raise where.error(
        path,
        f"expected true or false, got {describe(value)}",
        "write true or false, without quotes",
    )


def whole(where: Errors, value: object, path: KeyPath, low: int, high: int) -> int:
    """A whole number in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            fix = f"remove the quotes: {value.strip()}"
        elif isinstance(value, float) and value.is_integer():
            fix = f"write a whole number: {int(value)}"
        else:
            fix = f"write a whole number from {low} to {high}"
        raise where.error(path, f"expected a whole number, got {describe(value)}", fix)
    if not low <= value <= high:
        raise where.error(
            path,
            f"{describe(value)} is out of range {low}..{high}",
            f"use a number from {low} to {high}",
        )
    return value


def number(
    where: Errors,
    value: object,
    path: KeyPath,
    low: float,
    high: float,
    *,
    example: str,
    low_open: bool = False,
    ratio: bool = False,
) -> float:
    """A finite number in ``low..high`` (``low`` excluded with ``low_open``).

    ``ratio`` marks a 0..1 share, so that ``50%`` gets the fix "write 0.5".
    """
    span = f"{'above ' if low_open else ''}{_plain(low)} to {_plain(high)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        fix = f"write a number from {span}, e.g. {example}"
        if isinstance(value, str):
            text = value.strip()
            if ratio and text.endswith("%") and _finite(text[:-1]):
                fix = (
                    f"write the share as a ratio from 0 to 1: {text} is {float(text[:-1]) / 100:g}"
                )
            elif text.endswith("%"):
                fix = f"write the number without '%', e.g. {example}"
            elif _finite(text):
                fix = f"remove the quotes: {text}"
        raise where.error(path, f"expected a number, got {describe(value)}", fix)
    if isinstance(value, float) and not math.isfinite(value):
        raise where.error(
            path, f"expected a finite number, got {describe(value)}", f"use e.g. {example}"
        )
    if value < low or value > high or (low_open and value == low):
        raise where.error(
            path,
            f"{describe(value)} is out of range {span}",
            f"use a number from {span}, e.g. {example}",
        )
    return float(value)


def duration(where: Errors, value: object, path: KeyPath, *, positive: bool, example: str) -> float:
    """Seconds (see :func:`~resmesh.config.units.parse_duration`); ``positive`` refuses 0."""
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise where.error(
            path,
            f"expected a duration, got {describe(value)}{_reason(exc)}",
            f"write seconds or a number with a unit (ms, s, m, h), e.g. {example}",
        ) from None
    if positive and seconds <= 0:
        raise where.error(
            path, "must be more than zero", f"give a positive duration, e.g. {example}"
        )
    return seconds


def size(where: Errors, value: object, path: KeyPath, *, example: str) -> int:
    """Bytes, at least 1 (see :func:`~resmesh.config.units.parse_size`)."""
    try:
        parsed = parse_size(value)
    except ValueError as exc:
        raise where.error(
            path,
            f"expected a size, got {describe(value)}{_reason(exc)}",
            "write bytes or a number with a unit: B, KB, MB, GB (powers of 1000) or "
            f"KiB, MiB, GiB (powers of 1024), e.g. {example}",
        ) from None
    if parsed < 1:
        raise where.error(path, "must be at least 1 byte", f"use a size such as {example}")
    return parsed


def choice(where: Errors, value: object, path: KeyPath, kind: type[_E]) -> _E:
    """One of an enum's values; YAML 1.1's ``false`` for a bare ``off`` is read as ``off``."""
    options = [member.value for member in kind]
    if value is False and "off" in options:
        return kind("off")
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
        suggestion = suggest(value, options)
        fix = f"did you mean {suggestion!r}?" if suggestion else f"use one of {', '.join(options)}"
    else:
        fix = f"use one of {', '.join(options)}"
    raise where.error(path, f"expected one of {', '.join(options)}, got {describe(value)}", fix)


def address(
    where: Errors, value: object, path: KeyPath, *, example: str, allow_port_zero: bool
) -> Address:
    fix = f"write it as host:port, e.g. {example}"
    if not isinstance(value, str):
        raise where.error(path, f"expected host:port, got {describe(value)}", fix)
    try:
        parsed = Address.parse(value)
    except ValueError as exc:
        raise where.error(path, f"expected host:port, got {value!r} ({exc})", fix) from None
    if parsed.port == 0 and not allow_port_zero:
        raise where.error(path, "port 0 is not a real port", fix)
    return parsed


def _reason(exc: ValueError) -> str:
    """``"; <why>"`` when the parser said more than "not a duration/size"."""
    text = str(exc)
    return "" if text.startswith("not a ") else f"; {text}"


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False

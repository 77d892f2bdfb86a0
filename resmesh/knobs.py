"""How a configuration knob is written: its kind, its range, an example.

A policy's config dataclass (:class:`resmesh.policies.breaker.BreakerConfig` and its siblings)
is also the type the configuration file builds, so a knob has one name everywhere: the YAML key
is the attribute. The fields a file may set carry a :class:`Knob` in their metadata, and
:mod:`resmesh.config.fields` parses any such dataclass from YAML with it; fields without one
(a window's bucket count, say) keep their defaults.

Why a module of its own that imports nothing of resmesh: the policies must not depend on the
config package (which builds their types), and both need this vocabulary.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Final, TypeVar, final

__all__ = ["Kind", "Knob", "knob", "knobs"]

_T = TypeVar("_T")

#: The metadata key a knob is stored under (``dataclasses.field(metadata=...)``).
_KNOB: Final = "resmesh.knob"


class Kind(enum.Enum):
    """What a knob's value is, and so how it may be written."""

    BOOL = "true or false"
    INT = "a whole number"
    NUMBER = "a number"
    RATIO = "a share from 0 to 1 (0.5, not 50%)"
    DURATION = "seconds, or a number with a unit: 250ms, 5s, 2m, 1h"
    SIZE = "bytes, or a number with a unit: 64KiB, 512MiB, 10MB"
    ENUM = "one of a few names"
    STRING = "text"


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Knob:
    """What the loader checks for one field.

    Attributes:
        kind: the value's kind.
        low, high: the range (inclusive) of an ``INT``, ``NUMBER`` or ``RATIO``; for a
            ``DURATION`` only ``low_open`` matters (durations are never negative); for a
            ``STRING``, ``low`` is the shortest length allowed.
        low_open: ``low`` itself is refused (a ratio of 0 would never trip; a zero timeout
            would fail every call).
        example: a good value, shown in fixes (``0.5``, ``10s``).
        choices: the names an ``ENUM`` accepts.
        at_zero: ``(problem, fix)`` said instead of the range message when the value is 0
            and ``low_open`` refuses it, where 0 has a tempting wrong meaning (a rate of 0
            does not mean "no limit").
    """

    kind: Kind
    low: float = 0.0
    high: float = math.inf
    low_open: bool = False
    example: str = ""
    choices: type[enum.StrEnum] | None = None
    at_zero: tuple[str, str] | None = None


def knob(
    default: _T,
    kind: Kind,
    *,
    low: float = 0.0,
    high: float = math.inf,
    low_open: bool = False,
    example: str = "",
    choices: type[enum.StrEnum] | None = None,
    at_zero: tuple[str, str] | None = None,
) -> _T:
    """A dataclass field with ``default`` that the configuration file may set (a :class:`Knob`)."""
    described = Knob(kind, low, high, low_open, example or _shown(default), choices, at_zero)
    field: Any = dataclasses.field(default=default, metadata={_KNOB: described})
    return field  # type: ignore[no-any-return]


def knobs(cls: type[Any]) -> dict[str, Knob]:
    """The knobs of dataclass ``cls`` by name, in declaration order (the YAML keys)."""
    found: dict[str, Knob] = {}
    for field in dataclasses.fields(cls):
        described = field.metadata.get(_KNOB)
        if isinstance(described, Knob):
            found[field.name] = described
    return found


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return "" if value is None else str(value)

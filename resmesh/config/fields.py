"""One parser for every section the knobs describe (:mod:`resmesh.knobs`).

A section is a frozen dataclass whose YAML keys are its knob fields: ``breaker:`` is
:class:`~resmesh.policies.breaker.BreakerConfig`, ``clusters.X.backend:`` is
:class:`~resmesh.config.cluster.BackendConfig`. :func:`parse_section` reads any of them with
the same checks and messages (file, line, key path, what is wrong, the fix, "did you mean"),
so a new knob is one annotated field, not another hand-written parser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..knobs import Kind, Knob, knobs
from . import values
from .errors import Errors, KeyPath, describe

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["example", "knob_value", "parse_section"]

_S = TypeVar("_S", bound="DataclassInstance")
_W = TypeVar("_W", bound=Errors)


def example(cls: type[DataclassInstance]) -> str:
    """A short example of the section, for fixes: its first two knobs with good values."""
    shown = [f"{key}: {knob.example}" for key, knob in list(knobs(cls).items())[:2]]
    return "{" + ", ".join(shown) + "}"


def knob_value(where: Errors, value: object, path: KeyPath, knob: Knob) -> object:
    """``value`` checked against ``knob``, as the field's type."""
    kind = knob.kind
    if kind is Kind.BOOL:
        return values.boolean(where, value, path)
    if kind is Kind.INT:
        return values.whole(where, value, path, int(knob.low), int(knob.high))
    if kind is Kind.NUMBER or kind is Kind.RATIO:
        if knob.at_zero is not None and value == 0 and not isinstance(value, bool):
            raise where.error(path, *knob.at_zero)
        return values.number(
            where,
            value,
            path,
            knob.low,
            knob.high,
            example=knob.example,
            low_open=knob.low_open,
            ratio=kind is Kind.RATIO,
        )
    if kind is Kind.DURATION:
        return values.duration(where, value, path, positive=knob.low_open, example=knob.example)
    if kind is Kind.SIZE:
        return values.size(where, value, path, example=knob.example)
    if kind is Kind.ENUM:
        assert knob.choices is not None, "an ENUM knob names its choices"
        return values.choice(where, value, path, knob.choices)
    return values.string(where, value, path, example=knob.example, allow_empty=knob.low < 1)


def parse_section(
    where: _W,
    value: object,
    path: KeyPath,
    cls: type[_S],
    *,
    defaults: _S | None = None,
    check: Callable[[_W, KeyPath, Mapping[str, Any]], None] | None = None,
) -> _S:
    """The section at ``path`` as a ``cls``.

    A key left out, or written as null, keeps its value in ``defaults`` (``cls()`` unless
    given: an operation's ``hedge:`` starts from its cluster's). A null or missing section is
    all defaults. ``check`` sees every knob's final value, by name, and raises for values that
    do not fit together (it is given ``where`` to blame the right file).

    Raises:
        ConfigError: an unknown key, a value of the wrong kind or out of range, or ``check``'s.
    """
    described = knobs(cls)
    if isinstance(value, bool) and "enabled" in described:
        raise where.error(
            path,
            f"expected a mapping, got {describe(value)}",
            f"write {{enabled: {'true' if value else 'false'}}}",
        )
    section = values.mapping(
        where, value, path, tuple(described), example=example(cls), allow_null=True
    )
    given = {
        key: knob_value(where, section[key], (*path, key), knob)
        for key, knob in described.items()
        if section.get(key) is not None
    }
    base = cls() if defaults is None else defaults
    if check is not None:
        check(where, path, {key: given.get(key, getattr(base, key)) for key in described})
    try:
        return dataclasses.replace(base, **given)
    except ValueError as exc:
        # The section's own rules, should a check above miss one: still an error that says where.
        raise where.error(
            path, f"these values do not fit together ({exc})", "change one of them"
        ) from None

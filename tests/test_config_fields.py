"""The declarative parser: one knob of each kind, and what a wrong value of it is told.

Every error names the file, the line, the dotted key path, what is wrong and the fix; these
tests parse a toy section written for the purpose, so each kind is checked once, here, rather
than through whichever real knob happens to use it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from resmesh.config import ConfigError
from resmesh.config.errors import Context, KeyPath
from resmesh.config.fields import example, parse_section
from resmesh.config.loader import read_yaml
from resmesh.knobs import Kind, knob, knobs

SOURCE = Path("toy.yaml")


class Colour(enum.StrEnum):
    OFF = "off"
    RED = "red"
    GREEN = "green"


@dataclass(frozen=True, slots=True)
class Toy:
    enabled: bool = knob(True, Kind.BOOL)
    count: int = knob(3, Kind.INT, low=1, high=10)
    share: float = knob(0.5, Kind.RATIO, high=1.0, low_open=True)
    speed: float | None = knob(
        None, Kind.NUMBER, high=100.0, low_open=True, example="20", at_zero=("stops", "null")
    )
    wait: float = knob(1.0, Kind.DURATION, low_open=True, example="1s")
    grace: float = knob(0.0, Kind.DURATION, example="250ms")
    room: int = knob(1024, Kind.SIZE, example="1KiB")
    colour: Colour = knob(Colour.OFF, Kind.ENUM, choices=Colour, example="red")
    label: str | None = knob(None, Kind.STRING, low=1, example="hello")
    hidden: int = 7  # no knob: not a key of the section


def parse(text: str, defaults: Toy | None = None) -> Toy:
    data, lines = read_yaml(text, SOURCE)
    assert isinstance(data, dict)
    return parse_section(Context(SOURCE, lines), data.get("toy"), ("toy",), Toy, defaults=defaults)


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


def test_the_knobs_are_the_keys_in_declaration_order() -> None:
    assert list(knobs(Toy)) == [
        "enabled",
        "count",
        "share",
        "speed",
        "wait",
        "grace",
        "room",
        "colour",
        "label",
    ]
    assert example(Toy) == "{enabled: true, count: 3}"


def test_values_of_every_kind() -> None:
    toy = parse(
        "toy:\n  enabled: false\n  count: 10\n  share: 1\n  speed: 12.5\n  wait: 250ms\n"
        "  grace: 0\n  room: 2KiB\n  colour: green\n  label: hi\n"
    )
    assert toy == Toy(False, 10, 1.0, 12.5, 0.25, 0.0, 2048, Colour.GREEN, "hi")
    assert isinstance(toy.share, float)


def test_missing_or_null_keys_keep_the_defaults() -> None:
    assert parse("toy: {count: null}\n") == Toy()
    assert parse("toy:\n") == Toy()
    assert parse("other: 1\n") == Toy()
    base = Toy(count=5, label="base")
    assert parse("toy: {share: 0.25}\n", base) == Toy(count=5, share=0.25, label="base")


def test_a_bare_off_is_the_off_choice() -> None:
    """YAML 1.1 reads ``off`` as false; an enum with an ``off`` member takes it back."""
    assert parse("toy: {colour: off}\n").colour is Colour.OFF


# (yaml, key, line, problem contains, fix contains)
CASES: list[tuple[str, str, int, str, str]] = [
    ("toy:\n  enabled: 'yes'\n", "toy.enabled", 2, "expected true or false", "without quotes"),
    ("toy:\n  count: 11\n", "toy.count", 2, "11 (a number) is out of range 1..10", "from 1 to 10"),
    ("toy:\n  count: '4'\n", "toy.count", 2, "expected a whole number", "remove the quotes: 4"),
    ("toy:\n  count: 2.0\n", "toy.count", 2, "got 2.0", "write a whole number: 2"),
    ("toy:\n  share: 0\n", "toy.share", 2, "out of range above 0 to 1", "above 0 to 1"),
    ("toy:\n  share: 50%\n", "toy.share", 2, "expected a number", "50% is 0.5"),
    ("toy:\n  share: .nan\n", "toy.share", 2, "expected a finite number", "e.g. 0.5"),
    ("toy:\n  speed: 0\n", "toy.speed", 2, "stops", "null"),
    ("toy:\n  speed: 101\n", "toy.speed", 2, "out of range above 0 to 100", "e.g. 20"),
    ("toy:\n  speed: 5%\n", "toy.speed", 2, "expected a number", "without '%'"),
    ("toy:\n  wait: 0\n", "toy.wait", 2, "must be more than zero", "e.g. 1s"),
    ("toy:\n  wait: '5'\n", "toy.wait", 2, "expected a duration", "ms, s, m, h"),
    ("toy:\n  grace: -1\n", "toy.grace", 2, "cannot be negative", "e.g. 250ms"),
    ("toy:\n  grace: 9d\n", "toy.grace", 2, "expected a duration, got '9d'", "unit"),
    ("toy:\n  room: 1kb\n", "toy.room", 2, "expected a size", "KiB"),
    ("toy:\n  room: 0\n", "toy.room", 2, "at least 1 byte", "1KiB"),
    ("toy:\n  colour: gren\n", "toy.colour", 2, "expected one of off, red, green", "'green'"),
    ("toy:\n  colour: 3\n", "toy.colour", 2, "got 3 (a number)", "use one of"),
    ("toy:\n  label: ''\n", "toy.label", 2, "empty string", "e.g. hello"),
    ("toy:\n  label: 12\n", "toy.label", 2, "expected a string", "quote it: '12'"),
    ("toy:\n  labl: x\n", "toy.labl", 2, "unknown key 'labl'", "did you mean 'label'?"),
    ("toy:\n  hidden: 1\n", "toy.hidden", 2, "unknown key 'hidden'", "known keys here: enabled"),
    ("toy: [1]\n", "toy", 1, "expected a mapping", "{enabled: true, count: 3}"),
    ("toy: false\n", "toy", 1, "expected a mapping", "write {enabled: false}"),
]


@pytest.mark.parametrize(("text", "key", "line", "problem", "fix"), CASES)
def test_errors_name_file_line_key_problem_and_fix(
    text: str, key: str, line: int, problem: str, fix: str
) -> None:
    found = error(text)
    assert (found.file, found.line, found.key) == (str(SOURCE), line, key)
    assert problem in found.problem
    assert fix in found.fix
    assert str(found).startswith(f"{SOURCE}:{line}: {key}: ")


def test_a_check_sees_every_final_value_and_blames_a_key() -> None:
    seen: list[Mapping[str, Any]] = []

    def check(where: Context, path: KeyPath, values: Mapping[str, Any]) -> None:
        seen.append(values)
        if values["count"] > 5 and values["label"] is None:
            raise where.error((*path, "label"), "a count above 5 needs a label", "add label")

    data, lines = read_yaml("toy:\n  share: 0.75\n  count: 6\n", SOURCE)
    assert isinstance(data, dict)
    with pytest.raises(ConfigError) as info:
        parse_section(Context(SOURCE, lines), data["toy"], ("toy",), Toy, check=check)
    assert seen[0]["share"] == 0.75 and seen[0]["wait"] == 1.0
    assert (info.value.key, info.value.line) == ("toy.label", 1)  # no label line: its section's

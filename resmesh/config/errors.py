"""Errors a person can act on: the file, the line, the dotted key path, what is wrong, the fix.

A gateway that half-understands its config fails at 3 a.m. under load, far from the typo that
caused it; so every problem becomes one :class:`ConfigError` saying where and how to fix it,
with a "did you mean" when a name is close to a known one.
"""

from __future__ import annotations

import difflib
import reprlib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "ConfigError",
    "Context",
    "Errors",
    "KeyPath",
    "describe",
    "dotted",
    "suggest",
    "unknown_fix",
]

#: Where a value is: mapping keys and list indexes from the root of a file (or a section).
KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """The configuration cannot be used, and here is where and how to fix it.

    ``str(error)`` is one line, meant to be printed as is::

        examples/bad.yaml:7: clusters.feed-cache.listen: expected host:port, got 'nonsense'
        (missing ':port') — fix: write it as host:port, e.g. 127.0.0.1:6380

    The ``:7`` (line) appears only when the file was read from disk; ``key`` is ``None`` for
    problems with the file as a whole (missing, not YAML, not a mapping).
    """

    file: str
    key: str | None
    problem: str
    fix: str
    line: int | None

    def __init__(
        self,
        file: str | Path,
        key: str | None,
        problem: str,
        fix: str,
        line: int | None = None,
    ) -> None:
        super().__init__(str(file), key, problem, fix, line)
        self.file = str(file)
        self.key = key
        self.problem = problem
        self.fix = fix
        self.line = line

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.key:
            where = f"{where}: {self.key}"
        message = f"{where}: {self.problem} — fix: {self.fix}"
        if message.isprintable():
            return message
        # Keys and YAML messages can carry newlines or control characters; escape them so the
        # message stays the one line the CLI promises.
        return "".join(
            char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
            for char in message
        )


class Errors(typing.Protocol):
    """Anything that turns a key path into a :class:`ConfigError` pointing at the right file.

    :class:`Context` for one file; :class:`resmesh.config.presets.Merged` for governance,
    whose values come from a preset file and the config file layered on it.
    """

    def error(self, path: KeyPath, problem: str, fix: str) -> ConfigError: ...


@dataclass(frozen=True, slots=True)
class Context:
    """Where errors point: the file, and (when read from disk) the line of each key."""

    source: Path
    lines: Mapping[KeyPath, int]

    def error(self, path: KeyPath, problem: str, fix: str) -> ConfigError:
        line = None
        for depth in range(len(path), 0, -1):
            line = self.lines.get(path[:depth])
            if line is not None:
                break
        return ConfigError(self.source, dotted(path) or None, problem, fix, line)


def dotted(path: KeyPath) -> str:
    """``("clusters", "c", "groups", "a", 0)`` as ``clusters.c.groups.a[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


_short_repr: Final = reprlib.Repr()
_short_repr.maxstring = 40
_short_repr.maxother = 40
_short_repr.maxlevel = 2

_KINDS: Final[Mapping[type, str]] = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


def describe(value: object) -> str:
    """Show a value briefly with its YAML kind, e.g. ``6380 (a number)``."""
    if value is None:
        return "nothing (null)"
    kind = _KINDS.get(type(value), f"a {type(value).__name__}")
    try:
        shown = _short_repr.repr(value)
    except ValueError:  # int too large to print (sys.set_int_max_str_digits)
        shown = "<huge>"
    return f"{shown} ({kind})"


def suggest(word: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``word``, if one is close enough to be a typo of it."""
    matches = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_fix(key: str, known: Iterable[str], otherwise: str | None = None) -> str:
    """The fix for an unknown name: the close known one, else ``otherwise`` (by default:
    remove it, and the list of known keys)."""
    known = list(known)
    suggestion = suggest(key, known)
    if suggestion is not None:
        return f"did you mean {suggestion!r}?"
    return otherwise or f"remove it; known keys here: {', '.join(known)}"

"""Governance presets: where they are found, and how a cluster's section is layered on one.

A preset is a YAML file of the same shape as a cluster's ``governance:``; ``policy: NAME``
picks ``policies/NAME.yaml`` next to the config file or, failing that, the one bundled with
resmesh (``default`` when the cluster names none). The cluster's section is deep-merged over
it: mappings merge key by key, anything else replaces, and ``null`` puts a value back to its
built-in default. Errors name the file a value came from: a preset's key path and the cluster
using it, or the cluster's own key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from . import values
from .errors import ConfigError, Context, KeyPath
from .loader import read_text, read_yaml

__all__ = [
    "BUNDLED_PRESETS",
    "CLUSTER_LAYER",
    "DEFAULT_PRESET",
    "PRESET_LAYER",
    "Layer",
    "Merged",
    "Presets",
    "deep_merge",
]

_PRESET_FOLDER: Final = "policies"
BUNDLED_PRESETS: Final = Path(__file__).resolve().parent.parent / "presets"
"""The presets that come with resmesh. Package data, so an installed wheel has them too; the
project's top-level ``policies/`` is a link to this folder, where operators look for them."""
DEFAULT_PRESET: Final = "default"
"""What a cluster that names no ``policy:`` gets; built in, so it works without any file."""

#: The layers of a cluster's governance, bottom first.
PRESET_LAYER: Final = 0
CLUSTER_LAYER: Final = 1


@dataclass(slots=True)
class Presets:
    """Finds and reads preset files, each at most once per config parse.

    Search order: ``policies/`` next to the config file (the operator's own presets, which may
    also replace a bundled one), then the presets bundled with resmesh.
    """

    folders: tuple[Path, ...]
    loaded: dict[str, tuple[Context, object] | None] = field(default_factory=dict)

    @classmethod
    def beside(cls, source: Path) -> Presets:
        local = source.parent / _PRESET_FOLDER
        if _same_folder(local, BUNDLED_PRESETS):
            return cls((local,))
        return cls((local, BUNDLED_PRESETS))

    def names(self) -> list[str]:
        """Every preset name on the search path (``default`` always exists)."""
        names = {DEFAULT_PRESET}
        for folder in self.folders:
            try:
                names.update(
                    candidate.stem
                    for candidate in folder.glob("*.yaml")
                    if values.NAME_RE.match(candidate.stem) and candidate.is_file()
                )
            except OSError:
                continue
        return sorted(names)

    def read(self, name: str) -> tuple[Context, object] | None:
        """The preset's context (file and lines) and YAML data; ``None`` if no file has it.

        Raises:
            ConfigError: the file exists but cannot be read or is not YAML (naming the file).
        """
        if name not in self.loaded:
            self.loaded[name] = None
            for folder in self.folders:
                candidate = folder / f"{name}.yaml"
                if candidate.is_file():
                    text = read_text(
                        candidate, "preset file disappeared while reading", "run again"
                    )
                    data, lines = read_yaml(text, candidate)
                    self.loaded[name] = (Context(candidate, lines), data)
                    break
        return self.loaded[name]


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return False


@dataclass(frozen=True, slots=True)
class Layer:
    """One source of governance settings: a preset file, or a cluster's ``governance:``.

    Paths given to :meth:`error` are relative to the governance root, with operation names
    upper-cased; ``prefix`` puts them where they are in the file, ``spellings`` turns each
    operation name back into what the file wrote (so the line is found), and ``note`` says
    which cluster uses the preset.
    """

    ctx: Context
    prefix: KeyPath
    note: str
    spellings: dict[str, str]

    def error(self, path: KeyPath, problem: str, fix: str) -> ConfigError:
        if len(path) >= 2 and path[0] == "operations" and isinstance(path[1], str):
            path = (path[0], self.spellings.get(path[1], path[1]), *path[2:])
        return self.error_as_written(path, problem, fix)

    def error_as_written(self, path: KeyPath, problem: str, fix: str) -> ConfigError:
        return self.ctx.error((*self.prefix, *path), problem + self.note, fix)


@dataclass(frozen=True, slots=True)
class Merged:
    """The error sink for merged governance data: blames the layer a value came from.

    ``origin`` maps a key path to the layer that set it; a path not in it came, with its
    nearest recorded parent, from that parent's layer.
    """

    layers: tuple[Layer, ...]
    origin: Mapping[KeyPath, int]

    def came_from(self, path: KeyPath) -> int:
        """The layer that set the value at ``path``; a later layer's value is the more recent
        edit, so a conflict between two values blames it."""
        for depth in range(len(path), -1, -1):
            index = self.origin.get(path[:depth])
            if index is not None:
                return index
        return len(self.layers) - 1

    def error(self, path: KeyPath, problem: str, fix: str) -> ConfigError:
        return self.layers[self.came_from(path)].error(path, problem, fix)


def deep_merge(
    base: object,
    top: object,
    path: KeyPath,
    layers: tuple[Layer, ...],
    origin: dict[KeyPath, int],
) -> object:
    """``top`` over ``base``: mappings merge key by key, anything else (null too) replaces.

    ``base`` is all from the preset layer and ``top`` all from the cluster layer, which
    ``origin`` records for every path where they meet, so errors can blame the right file.
    """
    if isinstance(base, dict) and isinstance(top, dict):
        # Non-string keys would be blamed on the merged mapping; blame their own file now.
        values.mapping(layers[PRESET_LAYER], base, path, None, example="{key: value}")
        values.mapping(layers[CLUSTER_LAYER], top, path, None, example="{key: value}")
        merged = dict(base)
        for key in base:
            if key not in top:
                origin[(*path, key)] = PRESET_LAYER
        for key, value in top.items():
            key_path = (*path, key)
            if key in merged:
                merged[key] = deep_merge(merged[key], value, key_path, layers, origin)
            else:
                merged[key] = value
                origin[key_path] = CLUSTER_LAYER
        origin[path] = CLUSTER_LAYER
        return merged
    for stale in [known for known in origin if known[: len(path)] == path and known != path]:
        del origin[stale]
    origin[path] = CLUSTER_LAYER
    return top

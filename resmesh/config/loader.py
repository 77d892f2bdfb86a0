"""Reading a YAML file: bounded in size, nothing read as a date, every key's line recorded.

Why compose-then-construct instead of ``yaml.safe_load``: the node tree still has marks, which
gives line numbers for later validation errors and lets duplicate keys be refused, which PyYAML
otherwise resolves silently by keeping the last one (two clusters with the same name would
quietly become one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import yaml

from .errors import ConfigError, KeyPath, dotted

__all__ = ["MAX_CONFIG_BYTES", "read_text", "read_yaml"]

#: Far above any real config (thousands of clusters fit in a few MB).
MAX_CONFIG_BYTES: Final = 64 << 20


def read_text(source: Path, missing: str, missing_fix: str) -> str:
    """The file's text, or a :class:`ConfigError` naming it (a config or a preset file).

    ``missing`` and ``missing_fix`` are what to say when the file does not exist.
    """
    try:
        with source.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)  # bounded: -c /dev/zero must not hang
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                source,
                None,
                f"larger than {MAX_CONFIG_BYTES >> 20} MiB: not a config file",
                "pass the YAML config file itself",
            )
        # Newlines as text mode reads them (\r\n and \r become \n), for line numbers.
        return raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except FileNotFoundError:
        raise ConfigError(source, None, missing, missing_fix) from None
    except IsADirectoryError:
        raise ConfigError(
            source, None, "is a directory, not a config file", "pass the YAML file itself"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            source, None, f"not UTF-8 text ({exc.reason})", "save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(
            source,
            None,
            f"cannot read the file ({exc.strerror or exc})",
            "check that the file exists and is readable",
        ) from None


class _Loader(yaml.SafeLoader):
    """YAML as SafeLoader reads it, except that nothing is read as a date: no config value
    is one, and SafeLoader would either make ``password: 2024-12-31`` a date (then refused as
    "not a string") or fail on ``password: 2024-13-45`` in its constructor, with no key or
    line to point at."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(text: str, source: Path) -> tuple[object, dict[KeyPath, int]]:
    """Parse YAML into plain data plus a map from key path to line number.

    Raises:
        ConfigError: a syntax error (with its line), a duplicate key, nesting too deep.
    """
    loader: yaml.SafeLoader | None = None
    try:
        loader = _Loader(text)  # checks for unprintable characters already
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[KeyPath, int] = {}
        _index_lines(node, (), lines, set(), source)
        data: object = loader.construct_document(node)
        return data, lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = f" at column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            source,
            None,
            f"YAML syntax error: {problem}{where}",
            _yaml_fix(problem),
            None if mark is None else mark.line + 1,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            source,
            None,
            f"not valid YAML ({' '.join(str(exc).split())})",
            "remove control characters and check the file is YAML text",
        ) from None
    except RecursionError:
        raise ConfigError(source, None, "YAML nested too deeply", "flatten the structure") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML's constructors let these through for values that look like numbers.
        raise ConfigError(
            source,
            None,
            f"a value could not be read ({exc})",
            "quote values that look like dates or numbers but are not",
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_fix(problem: str) -> str:
    if "'\\t'" in problem:
        return "indent with spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "quote values that contain ': ', or fix the indentation on that line"
    return "check indentation and quoting on that line (quote values with ':' or '#')"


def _index_lines(
    node: yaml.Node,
    path: KeyPath,
    lines: dict[KeyPath, int],
    seen: set[int],
    source: Path,
) -> None:
    """Record the line of every key and list item, and refuse duplicate keys.

    ``seen`` guards against alias cycles (``&a [*a]`` is legal YAML) and shared anchors.
    """
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys_here: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in keys_here:
                raise ConfigError(
                    source,
                    dotted((*path, key)),
                    f"key {key!r} appears twice in the same mapping",
                    "keep one of them (YAML would silently use the last)",
                    line,
                )
            keys_here.add(key)
            lines.setdefault((*path, key), line)
            _index_lines(value_node, (*path, key), lines, seen, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.setdefault((*path, index), item.start_mark.line + 1)
            _index_lines(item, (*path, index), lines, seen, source)

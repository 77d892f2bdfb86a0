"""The import arrows of DESIGN §2, enforced: codecs stay sans-IO, governance stays protocol-blind.

Checked on the source (every ``import``/``from`` statement, including those inside functions and
``TYPE_CHECKING`` blocks), so a violation fails here even if nothing imports the module yet.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "resmesh"


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def _modules(folder: str) -> list[Path]:
    paths = sorted((PACKAGE / folder).rglob("*.py"))
    assert paths, f"resmesh/{folder} has no modules"
    return paths


@pytest.mark.parametrize("path", _modules("protocols"), ids=lambda p: p.name)
def test_protocols_never_import_trio_or_io(path: Path) -> None:
    forbidden = {"trio", "socket", "asyncio", "resmesh.net", "resmesh.policies"}
    bad = {
        name
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    }
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}: codecs are sans-IO"


def test_policies_never_import_protocols() -> None:
    for path in _modules("policies"):
        bad = {name for name in _imports(path) if name.startswith("resmesh.protocols")}
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}"


def test_the_checker_sees_relative_imports() -> None:
    """Guard against a checker that passes by seeing nothing."""
    names = _imports(PACKAGE / "net" / "redis" / "session.py")
    assert "resmesh.protocols.resp.requests" in names
    assert "trio" in names

"""Every import of ours follows the arrows of DESIGN.md's import rules (read from the source, nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# folder -> (package it maps to, part); pyproject's package-dir, with sdk/train split out of the core
FOLDERS = {"sdk/train": ("edgesplit.train", "train"), "sdk": ("edgesplit", "core"),
           "plugins": ("edgesplit.plugins", "plugins"), "export": ("edgesplit.export", "export"),
           "runtime": ("edgesplit.runtime", "runtime")}
# what each part may import (DESIGN.md, "Import rules"); apps (apps/, bench/) may import anything and are not read
ALLOWED = {"core": {"core"}, "runtime": {"core", "runtime"}, "plugins": {"core", "plugins"},
           "train": {"core", "train"}, "export": {"core", "train", "runtime", "export"}}
# core modules whose commands import train, export and runtime inside the command
COMMAND_MODULES = {"edgesplit.cli", "edgesplit._commands"}


def _part(module: str) -> str | None:
    """The part an ``edgesplit`` module belongs to (None: not ours)."""
    if module != "edgesplit" and not module.startswith("edgesplit."):
        return None
    for prefix, part in (("edgesplit.train", "train"), ("edgesplit.plugins", "plugins"),
                         ("edgesplit.export", "export"), ("edgesplit.runtime", "runtime")):
        if module == prefix or module.startswith(prefix + "."):
            return part
    return "core"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for folder, (package, _) in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            if folder == "sdk" and rel.parts[0] == "train":
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([package, *parts]), path))
    return out


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` for every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = {id(n) for n in tree.body} | {id(c) for n in tree.body if isinstance(n, ast.If) for c in n.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, node.lineno, id(node) in top))
    return found


def _violations() -> list[str]:
    bad = []
    for module, path in _modules():
        part = _part(module)
        if part is None:
            continue
        for name, line, top_level in _imports(module, path):
            target = _part(name)
            if target is None:
                continue
            if part == "core" and not top_level and module in COMMAND_MODULES:
                continue
            if target not in ALLOWED[part]:
                where = "at module level" if top_level else "inside a function"
                bad.append(f"{path.relative_to(REPO)}:{line}: {part} imports {name} ({target}) {where}")
    return bad


def test_imports_follow_the_design_arrows() -> None:
    bad = _violations()
    assert not bad, "imports against DESIGN.md's arrows:\n" + "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is live: a plugin importing the exporter, even inside a function, is reported."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "bad.py").write_text("def f():\n    from edgesplit.export.qdq import fake_quant\n")
    for folder in ("sdk", "sdk/train", "export", "runtime"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert _violations() == ["plugins/bad.py:2: plugins imports edgesplit.export.qdq (export) inside a function"]


@pytest.mark.parametrize("module", ["edgesplit.binary_net", "edgesplit.checkpoint", "edgesplit.interfaces"])
def test_shared_pieces_live_in_the_core(module: str) -> None:
    """What two parts need lives once, in the core: the numpy binary network, checkpoint reading, interfaces."""
    assert _part(module) == "core"
    assert any(m == module for m, _ in _modules())


MAX_FUNCTION_LINES = 80  # export/ and runtime/: one function per stage or step, none that interleaves them all


@pytest.mark.parametrize("folder", ["export", "runtime"])
def test_no_function_is_longer_than_a_screen(folder: str) -> None:
    long = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into stages or helpers:\n" + "\n".join(long)

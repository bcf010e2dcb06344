"""The Space's modules import one way (app.py → api → worker → planning → dsct; words, controls and
results are leaves), share no private names, and ``import dsct`` pulls in neither gradio nor spaces."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What each module may import from the package: a rank order, so no cycle can form.
ALLOWED = {
    "words": set(),
    "results": {"words"},
    "controls": {"words"},
    "planning": {"words"},
    "worker": {"planning", "words"},
    "api": {"planning", "results", "words", "worker"},
}


def _space_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(space module, names taken from it) for each import of the package in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:  # from .words import X / from . import planning
                module = f"space.{module}" if module else "space"
            if module == "space":
                found += [(f"space.{a.name}", []) for a in node.names]
            elif module.startswith("space."):
                found.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("space.")]
    return found


def test_every_module_is_in_the_rank_order():
    modules = {p.stem for p in (REPO / "space").glob("*.py")} - {"__init__"}
    assert modules == set(ALLOWED)


def test_imports_flow_one_way_and_take_no_private_names():
    for name, allowed in ALLOWED.items():
        imports = _space_imports(REPO / "space" / f"{name}.py")
        assert {m.removeprefix("space.") for m, _ in imports} <= allowed, (name, imports)
        assert not [n for _, names in imports for n in names if n.startswith("_")], (name, imports)
    app_imports = _space_imports(REPO / "app.py")
    assert app_imports and not [n for _, names in app_imports for n in names if n.startswith("_")]


def test_the_library_imports_neither_gradio_nor_spaces():
    code = "import sys, dsct, dsct.cli, dsct.batch; print(sorted({'gradio', 'spaces', 'space'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"

"""The layering is enforced, not just described.

- imports: ``interfaces > pipeline > teachers, students, data > store > core`` and a pure core (the contracts are in
  pyproject.toml, checked by import-linter);
- SQL lives only in ``llm_flywheel/store``;
- no module over 400 lines and no function over 80 lines unless its docstring says why ("Long because ...").
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "llm_flywheel"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
REASON = "Long because"

# An SQL statement inside a string literal (keywords in capitals, so prose like "select a model" does not count): a keyword followed by the shape of a statement.
SQL = re.compile(
    r"\b(SELECT\s+[\w*(]|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b|CREATE\s+(TABLE|INDEX|TRIGGER)\b"
    r"|ALTER\s+TABLE\b|PRAGMA\s+\w+)",  # upper case, as every statement in this project is written
)


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _lint_imports() -> tuple[int, str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("import-linter is not installed: `pip install -e .[test]`")
    proc = subprocess.run([exe, str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def test_import_layers_hold():
    rc, out = _lint_imports()
    assert rc == 0, out[-4000:]


def test_import_linter_sees_a_violation(tmp_path):
    """The contract test can fail: a core module that imports the store breaks it."""
    bad = SRC / "core" / "_architecture_probe.py"
    bad.write_text("from llm_flywheel.store import Store  # deliberately wrong\n")
    try:
        rc, out = _lint_imports()
    finally:
        bad.unlink()
    assert rc != 0 and "_architecture_probe" in out


def _string_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            out.append((node.lineno, node.value))
    return out


def sql_outside_store() -> list[str]:
    hits = []
    for path in _modules():
        if (SRC / "store") in path.parents:
            continue
        for line, text in _string_literals(path):
            if SQL.search(text):
                hits.append(f"{path.relative_to(ROOT)}:{line}: {text.strip()[:70]!r}")
    return hits


def test_no_sql_outside_the_store():
    hits = sql_outside_store()
    assert not hits, "SQL outside llm_flywheel/store (add a named Store method instead):\n" + "\n".join(hits)


def test_sql_detector_finds_sql():
    found = [s for s in ("SELECT id FROM items", "INSERT OR IGNORE INTO x", "UPDATE items SET split=?",
                         "DELETE FROM cascade_log", "PRAGMA user_version") if SQL.search(s)]
    missed = [s for s in ("select a model", "update the report", "Selected 3 items") if SQL.search(s)]
    assert len(found) == 5 and not missed


def _has_reason(node: ast.AST) -> bool:
    doc = ast.get_docstring(node) or ""
    return REASON.lower() in doc.lower()


def oversized() -> list[str]:
    out = []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES and not _has_reason(tree):
            out.append(f"{path.relative_to(ROOT)}: {n} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and not _has_reason(node):
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}() {length} lines")
    return out


def test_modules_and_functions_stay_small():
    found = oversized()
    assert not found, (f"over {MAX_MODULE_LINES} lines per module / {MAX_FUNCTION_LINES} per function without a "
                       f"'{REASON} ...' docstring:\n" + "\n".join(found))


def import_cycles() -> list[list[str]]:
    """Strongly connected groups of modules in the import graph (type-only imports included): a cycle means two
    modules cannot be understood -- or imported -- one without the other."""
    import grimp  # import-linter's graph builder

    graph = grimp.build_graph("llm_flywheel")
    mods = sorted(m for m in graph.modules if m.startswith("llm_flywheel."))
    adj = {m: sorted(x for x in graph.find_modules_directly_imported_by(m) if x.startswith("llm_flywheel.")) for m in mods}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in adj.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for m in mods:
        if m not in index:
            visit(m)
    return cycles


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "import cycles (move the shared part into a module both import):\n" + "\n".join(map(str, cycles))


def test_size_and_cycle_checks_see_planted_violations():
    """The size and cycle checks can fail: a 401-line module with a 90-line function, and two modules that import
    each other, are reported (and removed again)."""
    big = SRC / "core" / "_probe_big.py"
    a, b = SRC / "core" / "_probe_a.py", SRC / "core" / "_probe_b.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(88))
    big.write_text('"""probe"""\n\n\ndef long_function():\n' + body + "\n" + "\n" * (401 - 92) + "Y = 1\n")
    a.write_text("from llm_flywheel.core import _probe_b  # noqa\n")
    b.write_text("from llm_flywheel.core import _probe_a  # noqa\n")
    try:
        found = oversized()
        cycles = import_cycles()
    finally:
        for f in (big, a, b):
            f.unlink()
    assert any(f.startswith("src/llm_flywheel/core/_probe_big.py:4: long_function()") for f in found), found
    assert any(f.startswith("src/llm_flywheel/core/_probe_big.py: ") for f in found), found
    assert ["llm_flywheel.core._probe_a", "llm_flywheel.core._probe_b"] in cycles

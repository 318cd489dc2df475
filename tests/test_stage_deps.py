"""Each DVC stage depends on exactly the code it runs, and the package has no import circle.

The import closure of a stage is computed from the source with ``ast``: its entry point
(``pipeline/<stage>.py``, or ``dnlrepro.cli`` and the command module its ``-m dnlrepro.cli CMD``
runs), then every ``dnlrepro`` module those import, transitively, including imports inside
functions (they run too) and the packages' ``__init__`` files; ``if TYPE_CHECKING:`` blocks never
run and are skipped. ``dvc.yaml``'s ``src/dnlrepro`` deps (files, or folders meaning every module
in them) must equal that set: a missing module means an edit there would not re-run the stage;
an extra one means an edit would re-run it for nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from dnlrepro.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "dnlrepro"


def module_file(name: str) -> Path | None:
    """``dnlrepro.core.config`` -> its file (a module or a package's ``__init__.py``)."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _nodes(tree: ast.AST):
    """Every node, except what sits under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(tree):
        if _is_type_checking(child):
            yield from (n for n in child.orelse for n in _nodes_and_self(n))
            continue
        yield child
        yield from _nodes(child)


def _nodes_and_self(node: ast.AST):
    yield node
    yield from _nodes(node)


def imports_of(path: Path, parents: bool = True) -> set[str]:
    """The ``dnlrepro`` modules ``path`` imports (``parents``: and their packages' ``__init__``,
    which Python runs first)."""
    out: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "dnlrepro")
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import; the closure walker expects none"
            if node.module and node.module.split(".")[0] == "dnlrepro":
                out.add(node.module)
                out.update(
                    f"{node.module}.{a.name}"
                    for a in node.names
                    if module_file(f"{node.module}.{a.name}") is not None
                )
    if parents:
        out = {".".join(m.split(".")[: i + 1]) for m in out for i in range(m.count(".") + 1)}
    return {m for m in out if module_file(m) is not None}


def graph(parents: bool = True) -> dict[str, set[str]]:
    """module -> the modules it imports, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        name = ".".join(parts)
        out[name] = imports_of(path, parents) - {name}
    return out


def closure(roots: set[str], g: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo.extend(g[mod])
    return seen


def stage_code(stage: dict) -> tuple[set[str], set[str]]:
    """(pipeline files, dnlrepro modules) a stage's command runs."""
    cmd = stage["cmd"]
    g = graph()
    m = re.search(r"pipeline/(\w+)\.py", cmd)
    if m:
        entry = ROOT / "pipeline" / f"{m.group(1)}.py"
        files = {entry, ROOT / "pipeline" / "common.py"}
        roots = set().union(*(imports_of(f) for f in files))
    else:
        command = re.search(r"-m dnlrepro\.cli ([\w-]+)", cmd).group(1)
        files, roots = set(), {"dnlrepro.cli", COMMANDS[command][0]}
        roots |= {p for r in list(roots) for p in imports_of(module_file(r))}
    return {str(f.relative_to(ROOT)) for f in files}, closure(roots, g)


def listed_code(deps: list[str]) -> tuple[set[str], set[str]]:
    """(pipeline files, dnlrepro modules) a stage's deps name."""
    files, modules = set(), set()
    for dep in deps:
        path = ROOT / dep
        if dep.startswith("pipeline/") and dep.endswith(".py"):
            files.add(dep)
        elif dep.startswith("src/dnlrepro"):
            found = [path] if path.is_file() else sorted(path.rglob("*.py"))
            assert found, f"dvc.yaml dep {dep} names no Python file"
            for f in found:
                rel = f.relative_to(SRC).with_suffix("")
                parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
                modules.add(".".join(parts))
    return files, modules


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_deps_are_exactly_the_code_it_imports(name: str) -> None:
    stage = STAGES[name].get("do", STAGES[name])
    deps = [d for d in stage.get("deps", []) if "${" not in d]
    want_files, want_modules = stage_code(stage)
    have_files, have_modules = listed_code(deps)
    assert have_files == want_files, f"{name}: pipeline files listed {have_files}, run {want_files}"
    missing = sorted(want_modules - have_modules)
    extra = sorted(have_modules - want_modules)
    assert not missing and not extra, (
        f"dvc.yaml stage {name!r}: imported but not a dep: {missing}; "
        f"a dep but not imported: {extra}"
    )
    if "pipeline/" in stage["cmd"]:
        assert "pipeline/run.sh" in deps, f"{name}: pipeline/run.sh chooses the interpreter"


def test_training_imports_nothing_of_predict_benchmark_download_reports_or_launchers() -> None:
    trained = stage_code(STAGES["train"]["do"])[1]
    for folder in ("dnlrepro.tools", "dnlrepro.bench", "dnlrepro.acquire", "dnlrepro.reports",
                   "dnlrepro.launch", "dnlrepro.rehearse"):  # fmt: skip
        assert not {m for m in trained if m.startswith(folder)}, f"train@ imports {folder}"


def test_no_import_circles() -> None:
    """Tarjan's strongly connected components over the package's import graph (a module's
    edge to its own package's ``__init__`` is not followed: Python runs that first anyway)."""
    g = graph(parents=False)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"

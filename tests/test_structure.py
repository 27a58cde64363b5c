"""The package's layering: no import cycles, between modules or between sub-packages.

Every import counts, also those inside functions (a lazy import hides a cycle, it does not remove
it): the graph is read from the source with ``ast``, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "uaseg"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """uaseg module -> the uaseg modules it imports (``from a import b`` names ``a.b`` when that is
    a module, else ``a``)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            graph[mod] |= {t for t in targets if t in files and t != mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def subpackage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Collapse ``uaseg.a.b`` to ``uaseg.a``: the layering of the sub-packages."""
    top = lambda m: ".".join(m.split(".")[:2])  # noqa: E731
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        out.setdefault(top(m), set()).update(top(d) for d in deps if top(d) != top(m))
    return out


def test_the_graph_sees_lazy_and_relative_imports():
    g = import_graph()
    assert "uaseg.selective.result" in g["uaseg.selective.accumulator"]  # relative
    assert "uaseg.models" in g["uaseg.inference.model"]  # inside a function


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_subpackages():
    cycle = find_cycle(subpackage_graph(import_graph()))
    assert cycle is None, "sub-packages import each other: " + " -> ".join(cycle)


def test_only_the_runner_and_the_cli_import_the_stages():
    """The stages after training sit on top: they use inference, models, selective and data, and
    nothing but ``uaseg.train`` and ``uaseg.cli`` uses them."""
    users = {m for m, deps in import_graph().items() if not m.startswith("uaseg.stages")
             and any(d.startswith("uaseg.stages") for d in deps)}
    assert users <= {"uaseg.train", "uaseg.cli"}, f"modules importing uaseg.stages: {sorted(users)}"


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_short_subprocess_timeouts_in_tests():
    """A test asserts behaviour, not speed: on a loaded laptop an end-to-end run may take many
    minutes, so no test gives a subprocess a wall-clock limit below CI's own (900 s here)."""
    import re

    short = []
    for path in sorted((PKG.parent / "tests").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in re.finditer(r"timeout(?:\s*:\s*int)?\s*=\s*(\d+(?:\.\d+)?)", line):
                if float(m.group(1)) < 900:
                    short.append(f"{path.name}:{n}: {line.strip()}")
    assert not short, "subprocess timeouts below 900 s:\n" + "\n".join(short)


#: the modules that may sit at the top of uaseg/: the entry points and the errors every package raises
TOP_LEVEL = {"__init__", "train", "predict", "cli", "errors"}
MAX_LINES = 350


def test_only_the_entry_points_and_errors_sit_at_the_top_of_the_package():
    loose = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in TOP_LEVEL)
    assert not loose, f"modules at the top of uaseg/ (put each in the package of its concept): {loose}"


def test_every_module_fits_on_a_screen():
    long = sorted(f"{p.relative_to(PKG.parent)}: {n}" for p in PKG.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert not long, f"modules over {MAX_LINES} lines (split by what they do): {long}"

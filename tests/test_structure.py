"""The import structure of src/deit: no circle, and the boundaries the design sets (read from the source, imports
inside functions included)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph() -> dict[str, set[str]]:
    """module -> the deit modules it imports (a package's `from . import x` counts as importing x)."""
    files = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p for p in SRC.rglob("*.py")}
    edges = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(parts + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in files]
                edges[name] |= {t for t in subs or [target] if t in files and t != name}
            elif isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names if a.name in files and a.name != name}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on.discard(group[-1])
            if len(group) > 1:
                found.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_back():
    assert circles(import_graph()) == []


@pytest.mark.parametrize("banned", ["deit.config", "deit.data", "deit.distill", "deit.train"])
def test_models_are_plain_modules(banned):
    """models/ holds nn.Modules and their weights: nothing of the config, the data or distillation."""
    edges = import_graph()
    offenders = {m: sorted(t for t in ts if t == banned or t.startswith(banned + ".")) for m, ts in edges.items()}
    assert not {m: ts for m, ts in offenders.items() if m.startswith("deit.models") and ts}


def test_only_the_run_and_the_commands_read_the_training_config():
    readers = {m for m, ts in import_graph().items() if "deit.config" in ts}
    run = {"deit.train", "deit.pieces", "deit.caching"}  # a run: what it is built from, its teacher cache
    assert {r for r in readers if not r.startswith(("deit.demo.", "deit.cli"))} <= run, readers


FOUNDATION = {"deit.messages", "deit.stopping", "deit.files", "deit.progress", "deit.distributed"}
PARTS = ("deit.models", "deit.data", "deit.distill")
COMMANDS = {"deit.cli", "deit.benchmark", "deit.serve", "deit.__main__"}


def test_the_layers_read_from_the_bottom_up():
    """Files, messages and devices at the bottom; models, data and distillation on them alone; the engine below the
    run (train) and the run below the commands: no arrow runs back up."""
    edges = import_graph()

    def part(module: str) -> bool:
        return module.startswith(PARTS)

    upward = {
        m: sorted(t for t in ts if not (t in FOUNDATION or (part(m) and part(t))))
        for m, ts in edges.items()
        if m in FOUNDATION or part(m)
    }
    assert not {m: ts for m, ts in upward.items() if ts}
    commands = COMMANDS | {m for m in edges if m.startswith(("deit.demo", "deit.benchmark", "deit.serve", "deit.cli"))}
    assert not edges["deit.engine"] & ({"deit.train", "deit.config"} | commands)
    assert not edges["deit.train"] & commands


def imports_of(path: Path) -> list[ast.ImportFrom]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.module]


def test_tests_take_their_helpers_from_one_place():
    """Shared helpers live in conftest.py and short_runs.py, imported by those names: never through `tests.` nor
    from another test module."""
    tests = Path(__file__).parent
    for path in tests.rglob("*.py"):
        for node in imports_of(path):
            assert not node.module.startswith(("tests", "test_")), f"{path.name} imports {node.module}"


def test_benchmarks_use_only_public_names():
    for path in (SRC.parent / "benchmarks").glob("*.py"):
        for node in imports_of(path):
            if node.module.startswith("deit"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                private += [p for p in node.module.split(".") if p.startswith("_")]
                assert not private, f"{path.name} imports {node.module}: {private}"

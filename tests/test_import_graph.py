"""The layering the README promises, checked on the source: no upward edge, no cycle.

    core  <-  ingestion, serving  <-  train  <-  cluster  <-  benchmarks

Every import counts, also one inside a function (a lazy import is still a dependency).
``ingestion`` and ``serving`` are side by side: a Serve replica needs no feed code and the
poller no model code; what both need lives in ``core``. Nothing in the product imports
``tests``, and benchmarks import product code only. One module is let through: the feed
administration routes (``serving/http/routes/feed_admin.py``) serve ingestion's feed operations
over the API, so they import ingestion (never the reverse); no other serving module may.
Inside ``serving/`` each room keeps its walls (docs/architecture.md): the contract imports no
torch or Ray, the CPU runtime is the engine's alone, the HTTP app names no Ray, the summary
service no product.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "core": {"core"},
    "ingestion": {"core", "ingestion"},
    "serving": {"core", "serving"},
    "train": {"core", "ingestion", "serving", "train"},
    "cluster": {"core", "ingestion", "serving", "train", "cluster"},
    "benchmarks": {"core", "ingestion", "serving", "train", "cluster", "benchmarks"},
}
# modules allowed one more layer than their own: ingestion's feed administration, served
EXCEPTIONS = {"serving/http/routes/feed_admin.py": {"ingestion"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module scope) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    package = _module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # `from a import b` depends on a.b when b is a module, else on a: the cycle check
            # resolves each name to the longest module it names
            names = [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            found.append((name, node.lineno, id(node) in top_level))
    return found


def _sources() -> list[Path]:
    return sorted(p for layer in ALLOWED for p in (ROOT / layer).rglob("*.py"))


def test_no_layer_imports_a_layer_above_or_beside_it() -> None:
    wrong: dict[tuple[str, int], str] = {}
    for path in _sources():
        layer = path.relative_to(ROOT).parts[0]
        allowed = ALLOWED[layer] | EXCEPTIONS.get(path.relative_to(ROOT).as_posix(), set())
        for name, line, _ in _imports(path):
            target = name.split(".")[0]
            if target in ALLOWED or target == "tests":
                if target not in allowed:
                    where = (str(path.relative_to(ROOT)), line)
                    wrong.setdefault(where, f"{where[0]}:{line} imports {name}")
    assert not wrong, "\n".join(wrong.values())


def test_modules_import_each_other_without_a_cycle() -> None:
    modules = {_module_name(p): p for p in _sources()}
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for name, _, _ in _imports(path):
            # `from a.b import c` names a.b.c, which is a module or a name in a.b
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                graph[module].add(name)
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], node, nxt]))
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(cycles)


# The rooms of serving/ (docs/architecture.md): what each room may not import. A prefix names a
# module and everything under it. Checked on every import, lazy ones too.
PRODUCTS = (
    "serving.stories",
    "serving.digest",
    "serving.webhooks",
    "serving.search",
    "serving.web",
)
ROOM_NEVER = {
    # the contract runs anywhere: in training, in the CLI, in a process without a model
    "serving.model": (
        "torch",
        "ray",
        "transformers",
        "serving.engine",
        "serving.summaries",
        "serving.deployments",
        "serving.http",
        *PRODUCTS,
    ),
    # the HTTP app is plain Starlette: it names no Ray API and no deployment (the Ingress and
    # serving.deployments.local both run it; Ray's metrics reach it through summaries.metrics)
    "serving.http": ("ray", "serving.deployments"),
    # the summary service knows no product and no HTTP
    "serving.summaries": ("serving.http", "serving.deployments", *PRODUCTS),
}
# Arrows the layout still has, each to be removed by the change named beside it.
ROOM_LET_THROUGH = {
    # the Result store fires webhook events in its own transaction; the builder is to hand
    # the hook in instead (the rooms issue's behavioural part)
    ("serving/summaries/result_store.py", "serving.webhooks.matcher"),
}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_each_room_of_serving_keeps_its_walls() -> None:
    wrong = []
    for path in sorted((ROOT / "serving").rglob("*.py")):
        module = _module_name(path)
        rel = path.relative_to(ROOT).as_posix()
        for room, never in ROOM_NEVER.items():
            if not _under(module, room):
                continue
            for name, line, _ in _imports(path):
                for banned in never:
                    let = any(rel == r and _under(name, n) for r, n in ROOM_LET_THROUGH)
                    if _under(name, banned) and not let:
                        wrong.append(f"{rel}:{line} imports {name} ({room} may not)")
    assert not wrong, "\n".join(wrong)


def test_the_cpu_runtime_is_the_engines_alone() -> None:
    """serving.engine.cpu is imported only from serving.engine (tests and benchmarks aside)."""
    wrong = []
    for path in _sources():
        module = _module_name(path)
        if _under(module, "serving.engine") or path.relative_to(ROOT).parts[0] == "benchmarks":
            continue
        for name, line, _ in _imports(path):
            if _under(name, "serving.engine.cpu"):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_what_is_let_through_is_still_there() -> None:
    """A let-through arrow that the code no longer has is taken off the list, not kept."""
    for rel, name in ROOM_LET_THROUGH:
        names = {n for n, _, _ in _imports(ROOT / rel)}
        assert any(_under(n, name) for n in names), f"{rel} no longer imports {name}: drop it"

"""The import contract: layers point one way and no import cycle exists.

Lowest first: helpers (errors, graphutils, validate, io) < pure IR passes (``passes/``) <
runtime, stats, calibration, parity < pipeline < api, compress < cli. grimp reads the imports
statically (module level and inside functions alike), so a lazy import does not hide a cycle.
"""

from __future__ import annotations

import grimp
import pytest

PASSES = "onnxprune.passes"
# What a pass must not reach, directly or through another module.
UPPER = ["onnxprune.api", "onnxprune.pipeline", "onnxprune.parity", "onnxprune.calibration",
         "onnxprune.cli", "onnxprune.compress", "onnxprune.io", "onnxprune.stats"]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("onnxprune", include_external_packages=True, cache_dir=None)


def _internal(graph: grimp.ImportGraph) -> list[str]:
    return sorted(m for m in graph.modules if m == "onnxprune" or m.startswith("onnxprune."))


def _reach(graph: grimp.ImportGraph, starts: list[str], stop: set[str]) -> dict[str, str | None]:
    """Every internal module imported from ``starts``, directly or not, with the module that
    imported it; the ``stop`` modules are reached but not followed."""
    seen: dict[str, str | None] = dict.fromkeys(starts)
    todo = list(starts)
    while todo:
        module = todo.pop()
        if module in stop:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith("onnxprune") and imported not in seen:
                seen[imported] = module
                todo.append(imported)
    return seen


@pytest.mark.parametrize("upper", UPPER)
def test_passes_do_not_import_upper_layers(graph, upper):
    # onnxprune.runtime is followed by the next test instead (it loads models, so it uses io).
    passes = [m for m in _internal(graph) if m == PASSES or m.startswith(PASSES + ".")]
    seen = _reach(graph, passes, stop={"onnxprune.runtime"})
    for module, via in seen.items():
        if module == upper or module.startswith(upper + "."):
            chain = [module]
            while via is not None:
                chain.append(via)
                via = seen[via]
            pytest.fail(f"passes/ reaches {upper}: {' -> '.join(reversed(chain))}")


def test_no_pass_module_runs_onnxruntime(graph):
    """Data-driven pruning runs the model through an injected runner (passes/prune/runner.py):
    no module under passes/ reaches ONNX Runtime or onnxprune.runtime, directly or not."""
    passes = [m for m in _internal(graph) if m.startswith(PASSES + ".") or m == PASSES]
    for module in passes:
        for target in ("onnxprune.runtime", "onnxruntime"):
            chain = graph.find_shortest_chain(importer=module, imported=target)
            assert chain is None, f"passes/ reaches {target}: {' -> '.join(chain)}"


def _cycles(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(["a", "b", "c", "d"], edges) == [["a", "b", "c"]]
    assert _cycles(["a", "b"], {"a": {"b"}}) == []


def test_no_module_import_cycle(graph):
    modules = _internal(graph)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in modules}
    assert _cycles(modules, edges) == []


def test_no_package_import_cycle(graph):
    """At every level: the children of a package (a subpackage counted with all it holds)."""
    modules = _internal(graph)
    for package in (m for m in modules if graph.find_children(m)):
        children = sorted(graph.find_children(package))

        def owner(module: str, children=children) -> str | None:
            return next((c for c in children if module == c or module.startswith(c + ".")), None)

        edges: dict[str, set[str]] = {}
        for module in modules:
            source = owner(module)
            for imported in graph.find_modules_directly_imported_by(module):
                target = owner(imported)
                if source and target and target != source:
                    edges.setdefault(source, set()).add(target)
        assert _cycles(children, edges) == [], f"import cycle between the children of {package}"

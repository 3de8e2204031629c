"""The layers of `tfx_gpt2.layers`, checked on the source: no import runs back up, no import cycle
between modules (deferred imports included), no orchestrator imported outside `orchestration`."""

import ast
import os

import pytest

import tfx_gpt2
from tfx_gpt2.layers import LAYERS, ORCHESTRATION, ORCHESTRATORS, layer_of

PACKAGE_DIR = os.path.dirname(tfx_gpt2.__file__)


def module_files():
    """{module name: file} of every module of tfx_gpt2."""
    out = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(PACKAGE_DIR))[:-3]
                module = rel.replace(os.sep, ".")
                out[module[: -len(".__init__")] if module.endswith(".__init__") else module] = os.path.join(folder, name)
    return out


MODULES = module_files()


def imports_of(module: str):
    """(imported module, line) for every import in `module`, at any level; `from P import m`
    names the submodule P.m when m is one."""
    tree = ast.parse(open(MODULES[module]).read())
    package = module if MODULES[module].endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in MODULES else base), node.lineno


def internal_imports(module: str):
    return [(target, line) for target, line in imports_of(module)
            if target == "tfx_gpt2" or target.startswith("tfx_gpt2.")]


def upward_imports(modules):
    found = []
    for module in modules:
        for target, line in internal_imports(module):
            if layer_of(target) > layer_of(module):
                found.append(f"{MODULES[module]}:{line}: {module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                             f"({LAYERS[layer_of(target)][0]})")
    return found


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_from_a_layer_above():
    assert upward_imports(MODULES) == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule fails on code that breaks it (a model module importing the registry)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tfx_gpt2.registry.client import connect\n")
    monkeypatch.setitem(MODULES, "tfx_gpt2.model.bad", str(bad))
    assert len(upward_imports(["tfx_gpt2.model.bad"])) == 1


def find_cycle(graph):
    """A list of modules forming a cycle in `graph` ({module: set of modules}), or []."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_no_import_cycle_between_modules():
    graph = {m: {t for t, _ in internal_imports(m) if t != m and t in MODULES} for m in MODULES}
    # A package's __init__ imported implicitly with its submodules is not an edge of its own.
    assert find_cycle(graph) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_orchestration_imports_an_orchestrator(module):
    if LAYERS[layer_of(module)][0] == ORCHESTRATION:
        return
    used = sorted({t for t, _ in imports_of(module) if t.split(".")[0] in ORCHESTRATORS})
    assert used == [], f"{module} imports {used}; orchestrator code belongs in tfx_gpt2/orchestration/"

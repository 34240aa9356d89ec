"""kopt.convert's layout (issue 17): one module per format, dependencies one way, LiteRT's private API in one place."""

import ast
import pathlib

import pytest

import kopt.convert

PACKAGE = pathlib.Path(kopt.convert.__file__).parent


def _modules():
    return {path.stem: ast.parse(path.read_text()) for path in PACKAGE.glob("*.py")}


def _imports(tree):
    """The kopt.convert modules a module imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "kopt.convert":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("kopt.convert."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("kopt.convert."))
    return found


def _cycle(graph):
    """A cycle of the graph as a list of nodes, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_cycle_and_the_package_init_only_re_exports():
    modules = _modules()
    graph = {name: _imports(tree) & set(modules) for name, tree in modules.items() if name != "__init__"}
    assert _cycle(graph) is None, _cycle(graph)
    init = modules["__init__"]
    assert all(isinstance(node, (ast.ImportFrom, ast.Assign, ast.Expr)) for node in init.body)


@pytest.mark.parametrize("graph, cycle", [({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]), ({"a": {"b"}, "b": set()}, None)])
def test_the_cycle_check_finds_a_cycle(graph, cycle):
    assert _cycle(graph) == cycle


def test_dependencies_go_one_way():
    """Private helpers -> format-neutral validation -> runtimes -> the converters -> `inspect`."""
    graph = {name: _imports(tree) for name, tree in _modules().items()}
    assert not graph["validation"] & {"_litert", "_onnxruntime", "_onnx_info", "tflite", "onnx"}
    for private in ("_files", "samples", "_qat_state"):
        assert not graph[private] & {"validation", "_litert", "_onnxruntime", "tflite", "onnx", "inspection"}
    assert not graph["tflite"] & {"onnx", "_onnxruntime", "_onnx_info"}
    assert not graph["onnx"] & {"tflite", "_litert"}


def test_no_function_is_named_like_a_module_of_the_package():
    modules = _modules()
    for name, tree in modules.items():
        functions = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        assert not functions & set(modules), (name, functions & set(modules))


def test_litert_private_api_is_used_in_one_module():
    users = [name for name, tree in _modules().items()
             if any(isinstance(node, ast.Attribute) and node.attr.startswith("_get_") for node in ast.walk(tree))]
    assert users == ["_litert"]

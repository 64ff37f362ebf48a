"""Importing the toolkit stays light: torchvision (its resident cost: README) loads only when a
dataset or transform needs it, and ``import bnas`` loads no torch; the public interface resolves
lazily; no module imports itself through others."""
import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

import bnas


def test_library_and_cli_imports_leave_torchvision_out():
    code = ("import sys, bnas, bnas.cli, bnas.train, bnas.search, bnas.tune, bnas.data; "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plain_import_resolves_the_public_submodules_lazily():
    """``import bnas`` loads no torch (the ``bnas`` program restarts with its allocator first);
    the public submodules of the design then resolve on first use."""
    code = ("import sys, bnas; print('torch' in sys.modules); "
            "print('latest_cell' in bnas.genotype.names(), bnas.binarize.get('recu').name, "
            "callable(bnas.build_model), 'search' in dir(bnas))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "recu", "True", "True"]


def _load_time_imports(node: ast.AST):
    """The import statements in ``node`` that run when it runs (not those in function bodies)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        for child in ast.iter_child_nodes(node):
            yield from _load_time_imports(child)


def _module_imports() -> nx.DiGraph:
    """Module -> the bnas modules it imports when it is loaded (module level, outside
    ``if TYPE_CHECKING``; imports inside functions run later and cannot form a cycle)."""
    root = Path(bnas.__file__).parent
    modules = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph = nx.DiGraph()
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph.add_node(name)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for imp in _load_time_imports(node):
                if isinstance(imp, ast.Import):
                    targets = [a.name for a in imp.names]
                else:
                    base = imp.module or ""
                    if imp.level:
                        parts = package.split(".")[:len(package.split(".")) - imp.level + 1]
                        base = ".".join([*parts, *([imp.module] if imp.module else [])])
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                               for a in imp.names]
                graph.add_edges_from((name, t) for t in targets if t in modules and t != name)
    return graph


def test_no_module_imports_itself_through_others():
    graph = _module_imports()
    assert graph.has_edge("bnas.search.loop", "bnas.run.loop")  # the graph sees relative imports
    assert list(nx.simple_cycles(graph)) == []

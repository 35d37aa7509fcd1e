"""Dependencies inside ``unetlab`` point one way (models <- tools <- CLI and notebooks): no import cycles.

Every ``import`` / ``from ... import`` statement of every module is read with ``ast``, wherever it
stands (module level, inside a function, inside ``try``): a function-level import is how a cycle
hides, and it is still a dependency. Only imports under ``if TYPE_CHECKING:`` are left out (they
never run). ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module,
else of ``pkg``. A package's ``__init__`` is the node ``pkg``. The graph's strongly connected
components of more than one module (or a module importing itself) are the cycles.
(``importlib.import_module(name)`` with a computed name is not seen; the package keeps none that
points back down, see the recipe test at the end.)
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "unetlab"


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of the package."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` (file ``path``) imports."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                # relative: a module's package is its name minus the last part; a package is its own
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
        for target in targets:
            # "import unetlab.sd.unet" depends on unetlab.sd.unet; stop at the longest known module
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with a cycle (Tarjan), each sorted; self-imports included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles = []
    counter = [0]

    def visit(v: str) -> None:
        # recursion depth is bounded by the package's size (tens of modules)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def describe(cycle: list[str], graph: dict[str, set[str]]) -> str:
    """The edges inside one cycle, e.g. 'unetlab.a -> unetlab.b; unetlab.b -> unetlab.a'."""
    members = set(cycle)
    return "; ".join(f"{a} -> {b}" for a in cycle for b in sorted(graph[a] & members))


def test_no_import_cycles_inside_unetlab():
    graph = import_graph()
    assert len(graph) > 20, f"found only {len(graph)} modules under {ROOT / PACKAGE}"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles inside unetlab (every edge listed):\n" + "\n".join(
        describe(c, graph) for c in cycles)


# --- the finder itself can fail ---------------------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_finder_sees_a_function_level_relative_cycle(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import thing\n",
        "pkg/b.py": "def f():\n    from . import a\n    return a\n",
        "pkg/c.py": "import pkg.a\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b"]]


def test_finder_sees_a_cycle_through_a_subpackage_and_its_init(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from .x import X\n",
        "pkg/sub/x.py": "from pkg.tools import helper\nX = 1\n",
        "pkg/tools.py": "try:\n    from pkg.sub import X\nexcept ImportError:\n    X = None\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub"] == {"pkg.sub.x"} and graph["pkg.tools"] == {"pkg.sub"}
    assert find_cycles(graph) == [["pkg.sub", "pkg.sub.x", "pkg.tools"]]


def test_finder_ignores_type_checking_imports_and_one_way_chains(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/models.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.tools import T\n",
        "pkg/tools.py": "from .models import M\nimport torch\n",
        "pkg/cli.py": "from pkg import tools, models\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": set(), "pkg.models": set(), "pkg.tools": {"pkg.models"}, "pkg.cli": {"pkg.tools", "pkg.models"}}
    assert find_cycles(graph) == []


@pytest.mark.parametrize("text", ["from . import selfish\n", "import pkg.selfish\n"])
def test_finder_reports_a_module_importing_itself(tmp_path, text):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/selfish.py": text})
    assert find_cycles(import_graph(tmp_path, "pkg")) == [["pkg.selfish"]]


# --- the layering the two former cycles were broken into ----------------------------------------------------


def _run(code: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_recipe_is_known_without_importing_its_model_first():
    # a fresh interpreter: the registry finds text2img's recipe and loads its checkpoint on its own
    out = _run(
        "import sys\n"
        "import unetlab.recipes as r\n"
        "print('text2img imported by the registry:', 'unetlab.text2img' in sys.modules)\n"
        "print(r.list_recipes())\n"
        "from unetlab.checkpoints import load_checkpoint\n"
        "print(type(load_checkpoint('text2img').model).__name__)\n"
    )
    assert "text2img imported by the registry: False" in out
    # every recipe name is listed (chapter 7 adds 'controlnet', lazily too)
    assert all(f"'{name}'" in out for name in ("simple-noskips", "simple-skips", "text2img", "text2img-nogrounding", "controlnet"))
    assert "TextToImage" in out


def test_old_import_paths_still_work():
    from unetlab import checkpoints, recipes, train
    from unetlab.text2img import load_text2img

    assert train.Recipe is recipes.Recipe and train.get_recipe is recipes.get_recipe
    assert train.register_recipe is recipes.register_recipe and train.shapes_batch is recipes.shapes_batch
    for name in checkpoints.__all__:
        assert hasattr(checkpoints, name), name
    assert type(load_text2img()).__name__ == "TextToImage"

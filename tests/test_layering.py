"""The layer order of docs/ARCHITECTURE.md, read from its layer table: no module imports a layer
above its own or another package of its own rank, and no two modules import each other, directly
or around a circle. Every import counts, also one inside a function, under ``TYPE_CHECKING`` or
through ``importlib.import_module("...")`` with a constant name: a lazy import hides a cycle from
Python, not from the architecture."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
ARCHITECTURE = PROJECT / "docs" / "ARCHITECTURE.md"
PACKAGES = ("tracker", "train", "app")
ROW = re.compile(r"^\|\s*(\d+)\s*\|([^|]*)\|")  # | rank | `module` `module` | ...


def layer_table(text: str) -> dict[str, int]:
    """{module or package prefix: rank} from the Markdown table rows ``| rank | `name` `name` | ... |``."""
    ranks = {}
    for line in text.splitlines():
        match = ROW.match(line.strip())
        if match:
            for name in re.findall(r"`([\w.]+)`", match.group(2)):
                ranks[name] = int(match.group(1))
    return ranks


def module_names(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} of every module of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__" and len(parts) > 2:  # a sub-package's face is the package; a root's is root.__init__
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[tuple[int, str]]:
    """(line, imported project module) of every import in the module ``name`` at ``path``: ``import
    a.b``, ``from a.b import c`` (the module a.b.c where c is one, else a.b), relative imports, and
    ``import_module`` / ``__import__`` calls with a constant name."""
    package = name.removesuffix(".__init__") if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def add(line: int, target: str, names=()) -> None:
        hits = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
        found.update((line, hit) for hit in hits)
        if len(hits) < len(names) or not names:
            while target and target not in known:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target:
                found.add((line, target))

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            add(node.lineno, base, [alias.name for alias in node.names])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            function = node.func
            if (function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")) in ("import_module", "__import__"):
                add(node.lineno, node.args[0].value)
    found.discard((0, name))
    return {(line, target) for line, target in found if target != name}


def layer_of(module: str, ranks: dict[str, int]) -> str | None:
    """The longest prefix of ``module`` in ``ranks`` (its layer's name), or None."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in ranks:
            return ".".join(parts[:end])
    return None


def import_graph(root: Path, packages=PACKAGES) -> tuple[dict[str, Path], dict[str, set[tuple[int, str]]]]:
    modules = module_names(root, packages)
    known = set(modules)
    return modules, {name: imports(path, name, known) for name, path in modules.items()}


def layer_offences(graph: dict[str, set[tuple[int, str]]], modules: dict[str, Path], ranks: dict[str, int], root: Path) -> list[str]:
    """Every import of a layer of higher rank, or of another layer of the same rank; every module that
    no layer holds."""
    offences = []
    for name, targets in sorted(graph.items()):
        layer = layer_of(name, ranks)
        if layer is None:
            offences.append(f"{modules[name].relative_to(root)}: in no layer of the table")
            continue
        for line, target in sorted(targets):
            other = layer_of(target, ranks)
            if other is None or other == layer or ranks[other] < ranks[layer]:
                continue
            where = "above" if ranks[other] > ranks[layer] else "beside"
            offences.append(f"{modules[name].relative_to(root)}:{line} imports {target}, a layer {where} its own "
                            f"({layer} {ranks[layer]}, {other} {ranks[other]})")
    return offences


def cycles(graph: dict[str, set[tuple[int, str]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for _, target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def project():
    ranks = layer_table(ARCHITECTURE.read_text())
    modules, graph = import_graph(PROJECT)
    return ranks, modules, graph


def test_the_table_names_the_layers(project) -> None:
    ranks, modules, _ = project
    assert ranks["tracker.errors"] < ranks["tracker.geometry"] < ranks["tracker.head_models"] < ranks["tracker.live"] < ranks["train"] < ranks["app"]
    assert len(modules) > 80, "the walk found the project's modules"
    empty = [layer for layer in ranks if not any(name == layer or name.startswith(f"{layer}.") for name in modules)]
    assert not empty, f"layers without a module: {empty}"


def test_nothing_imports_upwards_or_sideways(project) -> None:
    ranks, modules, graph = project
    offences = layer_offences(graph, modules, ranks, PROJECT)
    assert not offences, "\n".join(offences)


def test_no_import_cycles(project) -> None:
    _, _, graph = project
    found = cycles(graph)
    assert not found, "\n".join(" <-> ".join(component) for component in found)


def test_library_and_training_do_not_import_the_app(project) -> None:
    """The rule the table implies, spelled out: tracker imports neither app nor train, train not app."""
    _, _, graph = project
    forbidden = {"tracker": ("app", "train"), "train": ("app",)}
    offences = [f"{name} imports {target}" for name, targets in graph.items() for _, target in targets
                if target.split(".")[0] in forbidden.get(name.split(".")[0], ())]
    assert not offences, "\n".join(offences)


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    package = tmp_path / "tracker" / "low"
    package.mkdir(parents=True)
    for path in (tmp_path / "tracker" / "__init__.py", package / "__init__.py", package / "sibling.py"):
        path.write_text("")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "live.py").write_text("")
    (tmp_path / "app" / "viewer.py").write_text("")
    module = package / "m.py"
    module.write_text("import app.live\nfrom app import viewer\nimport importlib\nimportlib.import_module('app.live')\n"
                      "from . import sibling\nimport numpy\ndef f():\n    from .sibling import thing\n")
    modules, graph = import_graph(tmp_path, ("tracker", "app"))
    assert graph["tracker.low.m"] == {(1, "app.live"), (2, "app.viewer"), (4, "app.live"), (5, "tracker.low.sibling"), (8, "tracker.low.sibling")}


def test_a_planted_upward_import_and_cycle_are_found(tmp_path: Path) -> None:
    """A copy of the layer rules on a small tree: a low layer that imports a high one, and two modules
    that import each other lazily, are both reported."""
    (tmp_path / "tracker" / "geometry").mkdir(parents=True)
    (tmp_path / "tracker" / "live").mkdir()
    for path in ("tracker/__init__.py", "tracker/geometry/__init__.py", "tracker/live/__init__.py"):
        (tmp_path / path).write_text("")
    (tmp_path / "tracker" / "geometry" / "camera.py").write_text("def f():\n    from tracker.live.tracker import FaceTracker\n")
    (tmp_path / "tracker" / "live" / "tracker.py").write_text("from tracker.geometry.camera import f\nclass FaceTracker: ...\n")
    (tmp_path / "tracker" / "stray.py").write_text("")
    ranks = layer_table("| 1 | `tracker.geometry` `tracker.__init__` | x |\n| 2 | `tracker.live` | y |\n")
    modules, graph = import_graph(tmp_path, ("tracker",))
    offences = layer_offences(graph, modules, ranks, tmp_path)
    assert offences == ["tracker/geometry/camera.py:2 imports tracker.live.tracker, a layer above its own (tracker.geometry 1, tracker.live 2)",
                        "tracker/stray.py: in no layer of the table"]
    assert cycles(graph) == [["tracker.geometry.camera", "tracker.live.tracker"]]

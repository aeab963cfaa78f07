"""The layering of DESIGN.md: the library (tracker/) and the training code (train/) never import the
programs (app/), and the library never imports the training code."""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"tracker": {"app", "train"}, "train": {"app"}}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``path``, ``importlib.import_module("x...")``
    and ``__import__("x...")`` with a constant name included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if name in ("import_module", "__import__"):
                found.add((node.lineno, node.args[0].value.split(".")[0]))
    return found


def test_library_and_training_do_not_import_the_app() -> None:
    offences = []
    checked = 0
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((PROJECT / package).rglob("*.py")):
            checked += 1
            offences += [f"{path.relative_to(PROJECT)}:{line} imports {name}" for line, name in sorted(imported_packages(path)) if name in forbidden]
    assert checked > 30, "the walk found the packages' modules"
    assert not offences, "\n".join(offences)


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import app.live\nfrom app import viewer\nimport importlib\nimportlib.import_module('app.virtualcam')\nfrom . import sibling\nimport numpy\n")
    assert imported_packages(module) == {(1, "app"), (2, "app"), (3, "importlib"), (4, "app"), (6, "numpy")}

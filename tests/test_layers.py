"""The package's layers: every import in rlkd runs downward, there is no cycle, and only the top layer (the
command line and the other entry points) imports argparse or the command line.

The imports are read from the source with ``ast``, function-local ones and ``TYPE_CHECKING`` ones
included, so an import moved into a function to dodge a cycle still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rlkd"

# Bottom-up. A module may import modules of its own layer or of any layer below; a name matches a
# module or a package and everything inside it (the longest declared name wins).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("plain helpers", ("rlkd.errors", "rlkd.files", "rlkd.recipes", "rlkd.templates")),
    ("the method", ("rlkd", "rlkd.structure", "rlkd.answers", "rlkd.judges", "rlkd.testbed", "rlkd.models")),
    ("backends", ("rlkd.backends",)),
    ("gsrm, judges and rewards", ("rlkd.gsrm", "rlkd.llm_judge", "rlkd.rewards", "rlkd.reward_config")),
    ("job dataclasses", ("rlkd.config",)),
    ("the jobs", ("rlkd.data", "rlkd.train", "rlkd.evaluate", "rlkd.grade", "rlkd.inspector", "rlkd.serve",
                  "rlkd.statistics", "rlkd.report")),
    ("the demo", ("rlkd.experiment",)),
    ("entry points", ("rlkd.cli", "rlkd.__main__", "rlkd.integrations")),
]
TOP = LAYERS[-1][0]
ENTRY_ONLY = ("argparse",)  # imported by the entry points only: the library takes dataclasses, not Namespaces


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Every module ``name`` imports, at any depth of the code (functions, ``if TYPE_CHECKING`` included);
    rlkd modules resolved to the most precise known module (``from rlkd.cli import options`` is
    ``rlkd.cli.options``), others given by their top-level name."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .a import b
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {m if m.split(".")[0] == "rlkd" else m.split(".")[0] for m in found if m}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module name -> the modules it imports (rlkd ones by full name, others by top-level name)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    return {name: imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known)
            for name, path in files.items()}


def layer_of(module: str, layers=LAYERS) -> int | None:
    """The index of the layer that declares ``module`` (by the longest matching name), None if none does."""
    best: tuple[int, int] | None = None
    for index, (_, names) in enumerate(layers):
        for declared in names:
            # "rlkd" itself (the package __init__) is only itself; any other name covers its submodules
            if module == declared or (declared != "rlkd" and module.startswith(declared + ".")):
                if best is None or len(declared) > best[0]:
                    best = (len(declared), index)
    return None if best is None else best[1]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among rlkd modules (each as a path that returns to its start), by depth-first search."""
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph or target == node:
                continue
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def violations(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Every breach of the layering in ``graph``, one line each (empty when the package is layered)."""
    top = len(layers) - 1
    found = []
    for module, targets in sorted(graph.items()):
        own = layer_of(module, layers)
        if own is None:
            found.append(f"{module}: in no declared layer (add it to LAYERS)")
            continue
        for target in sorted(targets):
            if target in ENTRY_ONLY and own != top:
                found.append(f"{module} imports {target}, which only the {layers[top][0]} may import")
            if target.split(".")[0] != "rlkd" or target == module:
                continue
            other = layer_of(target, layers)
            if other is None:
                found.append(f"{module} imports {target}, which is in no declared layer")
            elif other == top and own != top:
                found.append(f"{module} ({layers[own][0]}) imports {target}: the library never imports the "
                             f"{layers[top][0]}")
            elif other > own:
                found.append(f"{module} ({layers[own][0]}) imports {target} ({layers[other][0]}), a layer above it")
    for cycle in find_cycles(graph):
        found.append("import cycle: " + " -> ".join(cycle))
    return found


def test_every_import_runs_down_the_layers_without_a_cycle():
    graph = import_graph()
    assert len(graph) > 20, "the package was not found"
    assert violations(graph) == []


def test_structure_imports_nothing_from_rlkd():
    assert {m for m in import_graph()["rlkd.structure"] if m.startswith("rlkd")} == set()


FAKE_LAYERS = [("bottom", ("rlkd.low",)), ("middle", ("rlkd.mid",)), ("top", ("rlkd.cli",))]


@pytest.mark.parametrize("graph, expected", [
    ({"rlkd.low": set(), "rlkd.mid": {"rlkd.low"}, "rlkd.cli": {"rlkd.mid", "argparse"}}, []),
    ({"rlkd.low": {"rlkd.mid"}, "rlkd.mid": set(), "rlkd.cli": set()},
     ["rlkd.low (bottom) imports rlkd.mid (middle), a layer above it"]),
    ({"rlkd.low": set(), "rlkd.mid": {"rlkd.cli"}, "rlkd.cli": set()},
     ["rlkd.mid (middle) imports rlkd.cli: the library never imports the top"]),
    ({"rlkd.low": set(), "rlkd.mid": {"argparse"}, "rlkd.cli": set()},
     ["rlkd.mid imports argparse, which only the top may import"]),
    ({"rlkd.low": set(), "rlkd.mid.a": {"rlkd.mid.b"}, "rlkd.mid.b": {"rlkd.mid.a"}, "rlkd.cli": set()},
     ["import cycle: rlkd.mid.a -> rlkd.mid.b -> rlkd.mid.a"]),
    ({"rlkd.low": set(), "rlkd.extra": set(), "rlkd.cli": set()}, ["rlkd.extra: in no declared layer (add it to LAYERS)"]),
])
def test_the_check_reports_each_kind_of_breach(graph, expected):
    assert violations(graph, FAKE_LAYERS) == expected


def test_imports_are_read_inside_functions_and_resolved_to_modules():
    source = ("import json\nfrom rlkd.cli import options\n"
              "def f():\n    from rlkd.backends import Backend\n    from . import sibling\n")
    known = {"rlkd.cli", "rlkd.cli.options", "rlkd.backends", "rlkd.pkg.sibling"}
    assert imports_of(source, "rlkd.pkg.mod", False, known) == {"json", "rlkd.cli.options", "rlkd.backends",
                                                                "rlkd.pkg.sibling"}


def test_the_command_line_starts_without_the_heavy_packages():
    """Top-level imports of rlkd modules are fine; the heavy third-party ones stay inside functions, so that
    ``rlkd --help`` (which registers every command) loads none of them."""
    import subprocess
    import sys

    heavy = ("torch", "transformers", "trl", "datasets", "numpy", "matplotlib", "openai", "math_verify")
    code = ("import sys; from rlkd.cli import build_parser; build_parser(); "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent, timeout=120)
    assert out.stdout.strip() == "[]"

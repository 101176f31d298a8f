"""The layout's rules, checked on the source: imports point one way down the stages, never in a circle, and
only at the top of a module. The order is the one ``utils/__init__.py`` documents."""

import ast
from pathlib import Path

import pytest
from conftest import ROOT

# Lower numbers are lower layers. A module may import its own package and any lower layer, never a higher one.
LAYERS = {
    "utils.base": 0,
    "utils.demo": 1, "utils.data": 1,
    "utils.features": 2, "utils.text": 2,
    "models": 3,
    "utils.runs": 4,
    "utils.evaluation": 5, "utils.cli": 5, "utils.run_record": 5,
    "utils.training": 6, "utils.search": 6, "utils.pretrained": 6,
    "utils.criterion_utils": 7,  # the kept entry point of the loss (outside checks import it)
}


def layer_of(module: str) -> tuple[str, int]:
    if module == "utils":  # the package docstring: it imports nothing
        return "utils", 0
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    raise AssertionError(f"{module} belongs to no layer of tests/base/test_layout.py: add it to LAYERS")


def project_modules() -> dict[str, Path]:
    out = {}
    for path in sorted([*ROOT.glob("utils/**/*.py"), *ROOT.glob("models/**/*.py")]):
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[mod.removesuffix(".__init__")] = path
    return out


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at the module's top level) for every import of a project module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        for name in names:
            if name.split(".")[0] in ("utils", "models"):
                found.append((name, node.lineno, id(node) in top))
    return found


MODULES = project_modules()


def test_every_module_is_in_a_layer_and_every_package_says_what_it_does():
    for mod, path in MODULES.items():
        layer_of(mod)
        if path.name == "__init__.py" and mod != "models":
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path} needs a docstring: what the stage does"


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_point_down_and_sit_at_the_top(mod):
    own_pkg, own = layer_of(mod)
    for name, line, at_top in imports_of(MODULES[mod], MODULES):
        where = f"{MODULES[mod].relative_to(ROOT)}:{line} imports {name}"
        assert at_top, f"{where} inside a function or block: imports go at the top"
        pkg, layer = layer_of(name)
        assert pkg == own_pkg or layer < own, f"{where}, a layer above or beside its own ({pkg} vs {own_pkg})"


def test_no_import_circle_within_a_package():
    graph = {m: {n for n, _, _ in imports_of(p, MODULES) if n in MODULES and n != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, "import circle: " + " -> ".join([*stack, m, n])
            if n not in state:
                visit(n, [*stack, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_the_rules_catch_a_planted_upward_import(tmp_path):
    """The checker itself: an upward import planted in a copy of a base module is reported."""
    planted = tmp_path / "paths.py"
    planted.write_text("from utils.training.loop import train\n")
    (name, _, _), = imports_of(planted, MODULES)
    assert layer_of(name)[1] > layer_of("utils.base.paths")[1]

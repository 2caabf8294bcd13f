"""Every third-party module the package imports is declared in pyproject.toml, core or an extra."""

import ast
import pathlib
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).parent.parent
PACKAGE = REPO / "ib_attention_jax"


def _imported_top_levels() -> dict[str, set[str]]:
    """Top-level module -> the package files importing it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def _declared() -> dict[str, set[str]]:
    """'core' and each extra -> its distribution names, normalised."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {g: {Requirement(r).name.lower().replace("_", "-") for r in reqs} for g, reqs in groups.items()}


def test_every_third_party_import_of_the_package_is_a_declared_dependency():
    distributions = metadata.packages_distributions()
    declared = set().union(*_declared().values())
    third_party = {m: files for m, files in _imported_top_levels().items()
                   if m not in sys.stdlib_module_names and m not in ("ib_attention_jax", "__future__")}
    assert {"jax", "flax", "optax", "sklearn", "matplotlib", "PIL", "tqdm", "torch"} <= set(third_party)
    undeclared = {}
    for module, files in sorted(third_party.items()):
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported by the package but not in pyproject.toml: {undeclared}"


def test_scikit_learn_and_matplotlib_are_in_the_train_extra_not_the_core():
    declared = _declared()
    assert {"scikit-learn", "matplotlib", "pillow", "tqdm"} <= declared["train"]
    assert not {"scikit-learn", "matplotlib", "torch"} & declared["core"]
    assert declared["torch"] == {"torch"}

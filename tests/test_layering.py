"""The layers of shared/DESIGN.md, checked on every import of every module (including those in functions).

contracts/ at the bottom imports no other part; training, registry and serving import contracts
and themselves, never each other, except the gateway's one lazy way into the registry (its
manifest-source port); nothing imports the command line but the command line; bench/ and the
packages never import tests/; the gateway (serving/ outside local_server/) never imports
TensorFlow, Keras or mlflow; only registry/ imports mlflow. The command line is the ``cli/``
package, the one place that composes the parts.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LIBRARY = ("training", "registry", "serving")
PROJECT = ("contracts", *LIBRARY, "cli", "bench", "tests")
LAZY_PORTS = {("serving.manifest_source", "registry")}
"""(module, package) pairs allowed only inside a function: the gateway's manifest-source port."""
GATEWAY_NEVER = ("tensorflow", "keras", "tf_keras", "mlflow")
SKIP_DIRS = {".venv", ".git", "build", "dist", "node_modules", "__pycache__"}


@dataclass(frozen=True, slots=True)
class Import:
    module: str
    """The module imported, e.g. ``registry.errors`` (``from a import b`` gives ``a.b`` if it is a module)."""
    line: int
    lazy: bool
    """Inside a function: runs only when called."""


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _skipped(folder: str) -> bool:
    return folder in SKIP_DIRS or folder.startswith(".") or folder.endswith(".egg-info")


def modules(root: Path) -> dict[str, Path]:
    """Every Python module of the tree, by dotted name (virtualenvs, builds and hidden folders left out)."""
    found: dict[str, Path] = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(
            d
            for d in subfolders
            if d not in SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info")
        )
        for file in sorted(files):
            if file.endswith(".py"):
                path = Path(folder) / file
                found[module_name(root, path)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every import statement of the module, at any depth, with relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, child.lineno, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    found.append(Import(candidate if candidate in known else base, child.lineno, lazy))
            visit(child, inner)

    visit(tree, lazy=False)
    return found


def is_cli(module: str) -> bool:
    return module.split(".")[0] == "cli"


def violations(module: str, found: list[Import]) -> list[str]:
    """What breaks the layers in ``module``'s imports, one line each."""
    top = module.split(".")[0]
    gateway = top == "serving" and not module.startswith("serving.local_server")
    problems: list[str] = []
    for imp in found:
        target = imp.module.split(".")[0]
        where = f"{module}:{imp.line} imports {imp.module}"
        if top == "tests" or (target == top and not is_cli(imp.module)):
            continue
        if target == "tests":
            problems.append(f"{where}: only tests import tests/")
        elif is_cli(imp.module) and not is_cli(module):
            problems.append(f"{where}: only the command line imports the command line")
        elif target == "mlflow" and top != "registry":
            problems.append(f"{where}: only registry/ imports mlflow")
        elif gateway and target in GATEWAY_NEVER:
            problems.append(f"{where}: the gateway never imports {target}")
        elif is_cli(module) or target not in PROJECT:
            continue
        elif top == "contracts":
            problems.append(f"{where}: contracts/ is the bottom layer and imports no other part")
        elif top in LIBRARY and target != "contracts" and not (imp.lazy and (module, target) in LAZY_PORTS):
            how = " at import time (the port loads it lazily)" if (module, target) in LAZY_PORTS else ""
            problems.append(f"{where}{how}: {top}/ imports only contracts/ and itself")
        elif top == "bench" and target not in ("contracts", *LIBRARY, "bench"):
            problems.append(f"{where}: bench/ uses the library only")
    return problems


def check_tree(root: Path) -> list[str]:
    found = modules(root)
    known = set(found)
    problems: list[str] = []
    for name, path in found.items():
        problems += violations(name, imports(name, path, known))
    return problems


# --- the project itself -------------------------------------------------------------------------


def test_the_project_is_layered() -> None:
    problems = check_tree(ROOT)
    assert not problems, "\n".join(problems)


def test_the_walk_sees_the_whole_project() -> None:
    found = modules(ROOT)
    assert {"contracts.manifest", "serving.ensemble", "registry.sync", "training.assemble"} <= set(found)
    assert not any(name.startswith(".venv") for name in found)
    lazy = [i for i in imports("serving.manifest_source", found["serving.manifest_source"], set(found))]
    assert any(i.module.startswith("registry") and i.lazy for i in lazy), "the port's lazy import is seen"


# --- the checker, on a small tree of its own ------------------------------------------------------

BASE = {
    "contracts/__init__.py": "",
    "contracts/manifest.py": "import json\nimport numpy\n",
    "training/__init__.py": "",
    "training/assemble.py": "from contracts.manifest import x\nfrom . import other\n",
    "training/other.py": "",
    "registry/__init__.py": "",
    "registry/sync.py": "import mlflow\nfrom contracts import manifest\n",
    "serving/__init__.py": "",
    "serving/core.py": "from contracts import combine\n",
    "serving/manifest_source.py": "def port():\n    from registry.errors import NotFound\n",
    "serving/local_server/__init__.py": "",
    "serving/local_server/model.py": "import tensorflow as tf\n",
    "cli/__init__.py": "",
    "cli/training.py": "from registry import sync\nfrom training import assemble\n",
    "cli/main.py": "from cli import training\nimport serving.core\nimport registry.sync\n",
    "bench/__init__.py": "",
    "bench/gateway.py": "from serving.core import x\n",
    "tests/__init__.py": "",
    "tests/helpers.py": "from cli import training\nimport mlflow\n",
}


def _tree(root: Path, extra: dict[str, str]) -> Path:
    for relative, text in {**BASE, **extra}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_layered_tree_passes(tmp_path: Path) -> None:
    assert check_tree(_tree(tmp_path, {})) == []


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"contracts/manifest.py": "from serving import core\n"}, "contracts/ is the bottom layer"),
        ({"training/assemble.py": "from registry.sync import x\n"}, "training/ imports only contracts/"),
        ({"registry/sync.py": "def f():\n    import serving.core\n"}, "registry/ imports only contracts/"),
        ({"serving/core.py": "from training import assemble\n"}, "serving/ imports only contracts/"),
        ({"serving/core.py": "from ..training import assemble\n"}, "serving/ imports only contracts/"),
        ({"serving/manifest_source.py": "from registry.errors import NotFound\n"}, "lazily"),
        ({"serving/core.py": "def f():\n    import registry.errors\n"}, "serving/ imports only contracts/"),
        ({"serving/core.py": "def f():\n    import tensorflow\n"}, "the gateway never imports tensorflow"),
        ({"serving/core.py": "from keras import layers\n"}, "the gateway never imports keras"),
        ({"serving/core.py": "import mlflow.tracking\n"}, "only registry/ imports mlflow"),
        ({"training/assemble.py": "import mlflow\n"}, "only registry/ imports mlflow"),
        ({"training/assemble.py": "from cli import training\n"}, "only the command line imports"),
        ({"serving/core.py": "def f():\n    import cli.main\n"}, "only the command line imports"),
        ({"bench/gateway.py": "from tests.helpers import x\n"}, "only tests import tests/"),
        ({"serving/core.py": "from tests import helpers\n"}, "only tests import tests/"),
        ({"bench/gateway.py": "from cli.demo import x\n"}, "only the command line imports"),
    ],
)
def test_an_upward_import_is_caught(tmp_path: Path, extra: dict[str, str], says: str) -> None:
    problems = check_tree(_tree(tmp_path, extra))
    assert len(problems) == 1, problems
    assert says in problems[0]
    changed = next(iter(extra)).removesuffix(".py").replace("/", ".")
    assert problems[0].startswith(f"{changed}:")

"""The code keeps a shape a newcomer can read: no module over 400 lines, no function body over 60.

Generated protos are left out. A function's body is counted from its first statement (its
docstring, when it has one) to its last line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_BODY_LINES = 60
GENERATED = ("serving/protos/tensorflow/", "serving/protos/tensorflow_serving/", "serving/protos/inference/",
             "serving/protos/google/")  # fmt: skip


def too_long(package: str) -> list[str]:
    """Each module over the line limit and each function whose body is over its limit, in ``package``."""
    found: list[str] = []
    for path in sorted((REPO / package).rglob("*.py")):
        where = path.relative_to(REPO).as_posix()
        if where.startswith(GENERATED) or path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{where}: {lines} lines")
        for node in ast.walk(ast.parse(text, filename=where)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = (node.end_lineno or node.lineno) - node.body[0].lineno + 1
                if body > MAX_BODY_LINES:
                    found.append(f"{where}:{node.lineno} {node.name}: a body of {body} lines")
    return found


@pytest.mark.parametrize(
    "package",
    [
        "serving",
        "contracts",
        "training",
        "registry",
        "cli",
    ],
)
def test_no_module_or_function_is_too_long(package: str) -> None:
    if not (REPO / package).is_dir():
        pytest.skip(f"there is no {package}/ package yet")
    assert too_long(package) == []


def test_the_limits_are_enforced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_BODY_LINES + 1))
    (package / "long.py").write_text(f"def f():\n{body}\n" + "\n" * MAX_MODULE_LINES)
    (package / "fine.py").write_text("def g():\n    return 1\n")
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert too_long("pkg") == [
        f"pkg/long.py: {MAX_BODY_LINES + 2 + MAX_MODULE_LINES} lines",
        f"pkg/long.py:1 f: a body of {MAX_BODY_LINES + 1} lines",
    ]

"""Regenerates the Python code for the project's wire-compatible protos under ``serving/protos``.

Run ``python tools/gen_protos.py`` after editing a ``.proto`` file, and commit the output;
``--check`` only compares (exit status 1 when the committed code is out of date).

The generated modules are post-processed so that

* imports point into ``serving.protos...``, never at the real ``tensorflow`` or
  ``tensorflow_serving`` packages, and
* every file registers into the project's private descriptor pool (``serving.protos._pool``)
  instead of protobuf's default pool: TensorFlow and ``tensorflow-serving-api`` register the same
  full names (``tensorflow.TensorProto`` …) in the default pool, and would collide with ours.

The protobuf and grpc runtime-version guards are relaxed to the ranges in ``pyproject.toml``: the
generated code uses only APIs those ranges have.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "serving" / "protos"
PACKAGE = "serving.protos"
TOP_LEVEL = ("tensorflow", "tensorflow_serving", "inference")
MIN_GRPC_VERSION = "1.66.0"


def _proto_files() -> list[str]:
    return sorted(
        str(path.relative_to(PROTO_ROOT)) for top in TOP_LEVEL for path in (PROTO_ROOT / top).rglob("*.proto")
    )


def _run_protoc(out_dir: Path) -> None:
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    bin_dir = Path(sys.executable).parent
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        *_proto_files(),
    ]
    result = subprocess.run(args, cwd=PROTO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"protoc failed:\n{result.stderr}")


_IMPORT = re.compile(rf"^(from|import) ({'|'.join(TOP_LEVEL)})([. ])", re.MULTILINE)
_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_RUNTIME_CHECK = re.compile(
    r"^_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:.*\n)*?\)\n", re.MULTILINE
)
_GRPC_VERSION = re.compile(r"^GRPC_GENERATED_VERSION = '[^']*'", re.MULTILINE)


def _rewrite(text: str, *, is_pb2: bool) -> str:
    text = _IMPORT.sub(rf"\1 {PACKAGE}.\2\3", text)
    # Stubs and the builder's module name spell dotted module paths outside import lines too.
    text = re.sub(rf"(?<![\w.])({'|'.join(TOP_LEVEL)})\.(core|apis|config)\.", rf"{PACKAGE}.\1.\2.", text)
    # The protocol's package is flat: only module paths (``inference.x_pb2``) move, never the
    # service's wire name (``/inference.GRPCInferenceService/ModelInfer``).
    text = re.sub(r"(?<![\w./])inference\.(?=\w+_pb2\b)", f"{PACKAGE}.inference.", text)
    if is_pb2:
        if _DEFAULT_POOL not in text:
            raise SystemExit("generated code no longer registers through the default pool: update gen_protos")
        text = text.replace(
            "from google.protobuf import descriptor_pool as _descriptor_pool\n",
            f"from {PACKAGE} import _pool\n",
        )
        text = text.replace(_DEFAULT_POOL, "_pool.pool().AddSerializedFile(")
        text = _RUNTIME_CHECK.sub("", text)
    text = _GRPC_VERSION.sub(f"GRPC_GENERATED_VERSION = '{MIN_GRPC_VERSION}'", text)
    return text


def generate() -> dict[Path, str]:
    """The post-processed generated files, by path relative to ``serving/protos``."""
    files: dict[Path, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        _run_protoc(out_dir)
        for generated in sorted(out_dir.rglob("*")):
            if not generated.is_file():
                continue
            text = generated.read_text()
            if "_pb2_grpc" in generated.name and "Stub" not in text:
                continue  # a file without services: grpc writes an empty module for it
            text = _rewrite(text, is_pb2=generated.name.endswith("_pb2.py"))
            if generated.name.endswith("_grpc.pyi"):
                # mypy-protobuf's sync/async overloads overlap by design; stubs are always followed.
                text = '# mypy: disable-error-code="overload-cannot-match"\n' + text
                # At run time every servicer method has a default (UNIMPLEMENTED): a servicer may
                # implement only some of them, so the stubs must not make them abstract.
                text = re.sub(r"^\s*@_abc_1\.abstractmethod\n", "", text, flags=re.MULTILINE)
            relative = generated.relative_to(out_dir)
            files[relative] = text
            for parent in relative.parents:
                if parent != Path("."):
                    files.setdefault(parent / "__init__.py", "")
    return files


def _committed() -> dict[Path, str]:
    return {
        path.relative_to(PROTO_ROOT): path.read_text()
        for top in TOP_LEVEL
        for path in (PROTO_ROOT / top).rglob("*")
        if path.is_file() and path.suffix in {".py", ".pyi"}
    }


def main(argv: list[str]) -> int:
    files = generate()
    if "--check" in argv:
        committed = _committed()
        stale = sorted(str(p) for p in set(files) | set(committed) if files.get(p) != committed.get(p))
        if stale:
            print("generated code is out of date, run tools/gen_protos.py:", *stale, sep="\n  ")
            return 1
        print("generated code is up to date")
        return 0
    for old in _committed():
        (PROTO_ROOT / old).unlink()
    for relative, text in files.items():
        target = PROTO_ROOT / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    shutil.rmtree(PROTO_ROOT / "__pycache__", ignore_errors=True)
    print(f"generated {len(_proto_files())} protos under {PROTO_ROOT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

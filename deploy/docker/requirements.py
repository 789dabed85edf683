"""Print the third-party requirements of the project (core plus the given extras) for an image build.

The Dockerfile installs these in a layer of their own, before the source is copied, so editing the
code does not reinstall every dependency. Reads only ``pyproject.toml`` (standard library only: the
build stage has nothing else yet).

    python deploy/docker/requirements.py pyproject.toml serving registry > requirements.txt
    python deploy/docker/requirements.py pyproject.toml training registry --gpu > requirements.txt

``--gpu`` asks for TensorFlow's ``and-cuda`` extra, which brings the CUDA and cuDNN libraries as
wheels, so the trainer image runs on any host with an NVIDIA driver and the container toolkit.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?(.*)$")


def requirements(pyproject: Path, extras: list[str], gpu: bool = False) -> list[str]:
    """The dependency specifiers of the core package and ``extras``, deduplicated, in file order."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise ValueError(f"unknown extra(s) {', '.join(unknown)}; known: {', '.join(sorted(optional))}")
    specs: list[str] = list(project.get("dependencies", []))
    for extra in extras:
        specs.extend(optional[extra])
    seen: set[str] = set()
    result: list[str] = []
    for spec in specs:
        if spec in seen:
            continue
        seen.add(spec)
        result.append(_with_cuda(spec) if gpu else spec)
    return result


def _with_cuda(spec: str) -> str:
    match = _NAME.match(spec)
    if match is None or match.group(1).lower() != "tensorflow" or match.group(2):
        return spec
    return f"tensorflow[and-cuda]{match.group(3)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("extras", nargs="*")
    parser.add_argument("--gpu", action="store_true", help="TensorFlow with its CUDA wheels")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.extras, gpu=args.gpu)
    except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

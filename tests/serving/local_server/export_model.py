"""Export the tiny Keras member of :mod:`serving.local_server.tiny_model` (run as a script or imported)."""

from __future__ import annotations

import sys
from pathlib import Path

from serving.local_server.tiny_model import COLORS, export

__all__ = ["COLORS", "export"]

if __name__ == "__main__":
    # export_model.py DIR:SCALE ... (one TensorFlow start for several versions)
    for spec in sys.argv[1:]:
        target, _, scale = spec.rpartition(":")
        export(Path(target), float(scale))

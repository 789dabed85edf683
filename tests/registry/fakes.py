"""A fake training output directory, shaped like the one ``ensemble train`` writes, without TensorFlow."""

from __future__ import annotations

from bench.stack import write_training_output

__all__ = ["write_training_output"]

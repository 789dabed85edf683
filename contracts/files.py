"""Atomic file writes: a reader (a poller, another worker, a pod) sees the old file or the new, never half.

The text goes to a temporary file beside the target, is flushed to disk, and is renamed over the
target, so a crash leaves the old file, not an empty one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name per writer: parallel workers may write the same file at once.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)  # mkstemp's 0600 would hide the file from a server run as another user
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably, creating its folder."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)

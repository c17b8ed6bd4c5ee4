"""Hashing what task keys and manifests name by content: files (checkpoints, LoRAs,
pictures, rendered videos) and model folders. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_DIGESTS: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (a checkpoint or LoRA is hashed once per process, by size and mtime)."""
    st = Path(path).stat()
    memo = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


def folder_digest(path: Path) -> str:
    """Digest of a model folder: every file's name and size, small files' bytes, and the
    first and last MiB of large ones (weights run to many GB; hashing them all at every
    render would cost minutes)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= 2 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()

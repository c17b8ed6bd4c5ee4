"""Hashing what task keys and manifests name by content: files (checkpoints, LoRAs,
pictures, rendered videos) and model folders. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from . import files, home

_DIGESTS: dict[tuple, str] = {}
# Files this large (single-file checkpoints: 2-25 GB, hashed at about 1 GB/s) are hashed once
# per machine, not once per process: every `farm render` of a spec validates its models, and
# each `farm work` process checks what it loads. Their digests are kept in $FARM_HOME/digests,
# one small file each, named by the file's path, size, mtime, ctime, inode and device: any
# write to the file (ctime cannot be set back) names another memo, and so rehashes.
MEMO_BYTES = 16 << 20


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, hashed once per process (by path, size and times), and for a
    large file once per machine."""
    path = Path(path).resolve()
    st = files.regular_stat(path)  # a FIFO or device would be read forever
    memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    if memo not in _DIGESTS:
        kept = home.home() / "digests" / hashlib.sha256(repr(memo).encode()).hexdigest()
        digest = _read_memo(kept) if st.st_size >= MEMO_BYTES else None
        if digest is None:
            h = hashlib.sha256()
            with files.open_regular(path) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = h.hexdigest()
            if st.st_size >= MEMO_BYTES:
                _write_memo(kept, digest)
        _DIGESTS[memo] = digest
    return _DIGESTS[memo]


def _read_memo(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None  # a torn or foreign file: hash again


def _write_memo(path: Path, digest: str):
    """Best effort (a memo that is not kept is only hashed again): temporary name, then rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(digest)
        os.replace(tmp, path)
    except OSError:
        pass


def folder_digest(path: Path) -> str:
    """Digest of a model folder: every file's name and size, small files' bytes, and the
    first and last MiB of large ones (weights run to many GB; hashing them all at every
    render would cost minutes)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}\0{size}\0".encode())
        with files.open_regular(f) as fh:  # is_file() above, but it may be a FIFO by now
            if size <= 2 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()

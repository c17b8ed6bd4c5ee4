"""Hashing what task keys, cache records and manifests name by content: files (checkpoints,
LoRAs, pictures, cached outputs, rendered videos) and model folders. `file_digest` is the one
file hasher, with one memo. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path

from .. import files, home

# The one memo of file digests, by what makes a file's content the same (its path, size,
# modification and change times, inode and device): any write to a file changes its ctime,
# which cannot be set back, and so names another entry. Bounded, the least recently used
# forgotten first: a `farm work` process hashes every file it caches (a segment: 19 frames),
# and an entry is about 400 bytes.
_DIGESTS: dict[tuple, tuple[str, bool]] = {}  # -> (digest, whether this process read the bytes)
_LOCK = threading.Lock()
MEMO_ENTRIES = 1 << 16
# Files this large (single-file checkpoints: 2-25 GB, hashed at about 1 GB/s) are hashed once
# per machine, not once per process: every `farm render` of a spec validates its models, and
# each `farm work` process checks what it loads. Their digests are kept in $FARM_HOME/digests,
# one small file each, named by the same memo key.
MEMO_BYTES = 16 << 20


def file_digest(path: Path, *, per_machine: bool = True) -> str:
    """sha256 of a file's bytes: the one file hasher (task keys, cache records and their
    checks, manifests). Hashed once per process while the file is unchanged, and a large file
    once per machine, unless `per_machine` is False: the cache checks its entries for damage no
    stat field shows (bit rot), so each process reads them once itself. FarmError (exit 2) for
    a path that is not a regular file (a FIFO or device would be read forever); OSError passes
    through."""
    path = Path(path).resolve()
    st = files.regular_stat(path)
    memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    with _LOCK:  # the Ray driver checks cache entries from several threads
        known = _DIGESTS.pop(memo, None)
        if known is not None:
            _DIGESTS[memo] = known  # last: the most recently used
            if per_machine or known[1]:
                return known[0]
    kept = None
    if per_machine and st.st_size >= MEMO_BYTES:
        kept = home.home() / "digests" / hashlib.sha256(repr(memo).encode()).hexdigest()
    digest = _read_memo(kept) if kept else None
    read = digest is None
    if read:
        digest = _hash(path)
        if kept:
            _write_memo(kept, digest)
    with _LOCK:
        while len(_DIGESTS) >= MEMO_ENTRIES:
            del _DIGESTS[next(iter(_DIGESTS))]  # the least recently used
        _DIGESTS[memo] = (digest, read)
    return digest


def _hash(path: Path) -> str:
    """sha256 of a file's bytes, read again (737 MB/s on our 2-core dev VM, hashlib over OpenSSL)."""
    h = hashlib.sha256()
    with files.open_regular(path) as f:
        for chunk in iter(lambda: f.read(files.CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


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

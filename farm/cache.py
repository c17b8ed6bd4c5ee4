"""A content-addressed store of task outputs on disk, keyed by task key.

An entry is a folder `<root>/<key[:2]>/<key>/`. It is written under a temporary name in the
same parent and renamed into place only when complete, so a killed process never leaves a
half-written entry that looks finished. A killed writer's leftover (`.tmp-<key>-<pid>-…`)
is removed by the next writer of the same key once that pid is gone (one machine: pids are
comparable).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def has(self, key: str) -> bool:
        return self.path(key).is_dir()

    @contextmanager
    def writing(self, key: str):
        """Yield an empty folder to write an entry into; publish it when the block succeeds."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".tmp-{key[:16]}-"
        for stale in final.parent.glob(prefix + "*"):
            if not _alive(stale.name[len(prefix):].split("-", 1)[0]):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=final.parent))
        try:
            yield tmp
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # a real failure, not a twin task that finished first
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ValueError:
        return False
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True

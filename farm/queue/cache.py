"""A content-addressed store of task outputs on disk, keyed by task key.

An entry is a folder `<root>/<key[:2]>/<key>/`. It is written under a temporary name in the
same parent, fsynced, and renamed into place only when complete, so neither a killed process
nor a power cut leaves a half-written entry that looks finished. A killed writer's leftover
(`.tmp-<key>-<pid>-…`) is removed by the next writer of the same key once that pid is gone
(one machine: pids are comparable).

Every entry carries a record (`.entry.json`) of the size and sha256 of each of its files,
written when it is published. `check()` verifies both before an entry is reused, so a file
cut short, damaged or deleted since (a full disk, a stray `rm`, bit rot) is found, the
entry discarded and the task run again, instead of a broken frame reaching a video. (Within
one process, a file whose size, times and inode are as they were when it was last hashed is
not hashed again: digest.file_digest's memo. A render checks an assembly when its task is
answered and again when it publishes, and a multi-GB video need not be hashed twice a second
apart.) The record's modification time is the entry's last use, which `farm gc` reads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import files
from ..errors import FarmError
from . import digest

RECORD = ".entry.json"


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    size: int  # bytes of its files
    used: float  # last use (publish or reuse), seconds since the epoch


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def exists(self, key: str) -> bool:
        return self.path(key).is_dir()

    def files(self, key: str) -> list[Path]:
        """An entry's files, sorted by name (its record left out)."""
        return sorted(p for p in self.path(key).iterdir() if p.name != RECORD)

    def check(self, key: str) -> str | None:
        """None if the entry is there and every file has its recorded size and digest; else
        why not ("missing" when there is no entry at all)."""
        folder = self.path(key)
        if not folder.is_dir():
            return "missing"
        try:
            record = json.loads((folder / RECORD).read_text())
            recorded = record["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return "its record of sizes and digests is missing or unreadable"
        present = set(_files(folder))
        if present != set(recorded):
            lost, extra = sorted(set(recorded) - present), sorted(present - set(recorded))
            return "files " + ("missing: " + ", ".join(lost[:3]) if lost
                               else "not in its record: " + ", ".join(extra[:3]))
        for name in sorted(recorded):
            try:
                size = (folder / name).stat().st_size
            except OSError as e:
                return f"{name} cannot be read ({e.strerror or e})"
            if size != recorded[name]["size"]:
                return f"{name} is {size} bytes, {recorded[name]['size']} when it was written"
        for name in sorted(recorded):
            try:
                if _digest(folder / name) != recorded[name]["sha256"]:
                    return f"{name} does not match the digest recorded when it was written"
            except OSError as e:
                return f"{name} cannot be read ({e.strerror or e})"
            except FarmError as e:  # no longer a regular file
                return e.message
        return None

    def digest(self, key: str, name: str) -> str | None:
        """The sha256 recorded for one file of an entry when it was written (what `check`
        compares it with), or None: the manifest names a cached video by it without reading
        the video a third time."""
        try:
            return json.loads((self.path(key) / RECORD).read_text())["files"][name]["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def has(self, key: str) -> bool:
        """Is there a valid entry (checked, see `check`)?"""
        return self.check(key) is None

    def touch(self, key: str):
        """Record a use of the entry now (what `farm gc` orders by)."""
        try:
            os.utime(self.path(key) / RECORD)
        except OSError:
            pass

    def discard(self, key: str):
        """Remove an entry: renamed away first (one atomic step), then deleted."""
        folder = self.path(key)
        trash = folder.parent / f".trash-{key[:16]}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def sweep(self):
        """Remove what killed processes left: half-written entries and half-removed ones."""
        if not self.root.is_dir():
            return
        for shard in self.root.iterdir():
            if shard.is_dir():
                _remove_dead(shard, ".tmp-*")
                _remove_dead(shard, ".trash-*")

    def entries(self) -> list[Entry]:
        """Every published entry, with its size and last use."""
        out = []
        if not self.root.is_dir():
            return out
        for shard in self.root.iterdir():
            if not shard.is_dir():
                continue
            for folder in shard.iterdir():
                if folder.name.startswith(".") or not folder.is_dir():
                    continue
                size = sum((folder / name).stat().st_size for name in _files(folder))
                record = folder / RECORD
                used = record.stat().st_mtime if record.exists() else folder.stat().st_mtime
                out.append(Entry(folder.name, folder, size, used))
        return out

    @contextmanager
    def writing(self, key: str):
        """Yield an empty folder to write an entry into; publish it when the block succeeds."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".tmp-{key[:16]}-"
        _remove_dead(final.parent, prefix + "*")
        tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=final.parent))
        try:
            yield tmp
            record = {"key": key, "files": {name: {"size": (tmp / name).stat().st_size,
                                                   "sha256": _digest(tmp / name)} for name in _files(tmp)}}
            (tmp / RECORD).write_text(json.dumps(record, indent=0))
            files.sync_tree(tmp)
            if final.is_dir() and self.check(key) is not None:
                self.discard(key)  # a broken entry that a reader found: replace it
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # a real failure, not a twin task that finished first
                    raise
            files.fsync_path(final.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _digest(path: Path) -> str:
    """An entry file's sha256 (digest.file_digest, kept in this process's memo only: damage that
    no stat field shows, bit rot, is found by each process that reads the entry)."""
    return digest.file_digest(path, per_machine=False)


def _files(folder: Path) -> list[str]:
    """The files of an entry (an assembled PNG sequence is a folder inside it), as relative
    paths, its record left out."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != RECORD)


def _remove_dead(folder: Path, pattern: str):
    """Remove leftovers named `.<kind>-<key[:16]>-<pid>-…` whose process is gone."""
    for p in folder.glob(pattern):
        parts = p.name.split("-")
        if len(parts) >= 3 and not _alive(parts[2]):
            shutil.rmtree(p, ignore_errors=True)


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

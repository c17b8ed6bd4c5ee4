"""Writing files so that nothing half-written ever looks finished, even after a power cut.

`atomic_write` is the one way farm writes a file it publishes (an output video, a manifest,
a contact sheet, a review page): write under a temporary name in the same folder, fsync it,
rename it into place, fsync the folder. `sync_tree` does the same for a folder about to be
renamed into place (a cache entry, a PNG sequence). (The one file hasher is digest.file_digest.)

`open_regular` is the one way farm opens a file a user named (a spec, a picture, a LoRA, a
preset, a model folder's configs): regular files only, each read with a size bound.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path

from .errors import FarmError
from .units import human

CHUNK = 1 << 20  # bytes a read: what digest.file_digest hashes at a time

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(path, mode: int) -> FarmError:
    what = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return FarmError(f"{path} is {what}, not a file: farm reads only regular files (a read from a pipe, "
                     f"device or socket can wait forever or never end).", code=2)


def regular_stat(path) -> os.stat_result:
    """os.stat of a file a user named (symlinks followed); FarmError (exit 2) unless it is a
    regular file. OSError (missing, unreadable) passes through for the caller to word."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st


@contextmanager
def open_regular(path, limit: int | None = None, what: str = "the file"):
    """Open a file a user named for reading, in binary; FarmError (exit 2) if it is not a
    regular file or is larger than `limit` bytes.

    Checked twice: os.stat before opening (opening some devices acts: /dev/watchdog arms a
    reboot, a tape rewinds), and fstat of the open descriptor, for a path swapped for a FIFO in
    between; O_NONBLOCK makes that open return at once where a plain one waits for a writer.
    A regular file always ends; `read_regular` also bounds a file that grows after the check."""
    regular_stat(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        if limit is not None and st.st_size > limit:
            raise FarmError(f"{path} is {human(st.st_size)}; {what} may be at most {human(limit)}.", code=2)
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_regular(path, limit: int, what: str = "the file") -> bytes:
    """The bytes of a file a user named, refused (FarmError, exit 2) if it is not a regular
    file or holds more than `limit` bytes (also when it grew past it after the check)."""
    with open_regular(path, limit, what) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FarmError(f"{path} grew past {human(limit)} while farm read it; {what} may be at most "
                        f"{human(limit)}.", code=2)
    return data


# A model folder's JSON configs (model_index.json, config.json) are a few KB (SDXL's UNet
# config: 1.8 KB); 1 MiB bounds what a stray or hostile file makes farm parse.
MAX_CONFIG_BYTES = 1 << 20


def read_json(path, limit: int = MAX_CONFIG_BYTES):
    """A user's JSON config file (a regular file of at most `limit` bytes), parsed.
    FarmError if it is not a regular file or too large; OSError and ValueError pass through."""
    import json

    return json.loads(read_regular(path, limit, "a JSON config file"))


@functools.cache
def pictures():
    """PIL's Image module, with its decompression-bomb limit set once for this process to the
    largest keyframe picture farm accepts (farm/checks.py MAX_PICTURE_SIDE, checked from the
    header at validation); never changed again, so no thread sees it toggled."""
    import warnings

    from PIL import Image

    from .checks import MAX_PICTURE_SIDE

    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, MAX_PICTURE_SIDE ** 2)
    # Between that and twice it PIL only warns; farm refuses those pictures by their size itself.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image


def link_or_copy(src: Path, dst: Path):
    """Put `src`'s bytes at `dst`: a hard link where the filesystem allows one (frames and videos
    can be large, and farm never edits a file in place), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def fsync_path(path: Path):
    """fsync a file or a folder (a folder's entry table: what makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and /dev/shm on old kernels) refuse fsync on folders
        pass
    finally:
        os.close(fd)


def sync_tree(folder: Path):
    """fsync every file under `folder`, then the folders themselves, deepest first.

    The files are fsynced concurrently: ext4 commits concurrent fsyncs in one journal
    transaction, so a segment's 19 files took 6.6 ms where one after the other took 75 ms
    (20 rounds of 19 files of 20 KB, medians, /work on this 2-core VM, 2026-12-01). One by one,
    a 21-task render spent 0.86 s of its 21 s in fsync (bench_overhead.py's shot, cProfile)."""
    folders, paths = [], []
    for root, _dirs, names in os.walk(folder):
        folders.append(Path(root))
        paths.extend(Path(root) / name for name in names)
    if len(paths) > 1:
        list(_syncer().map(fsync_path, paths))
    else:
        for path in paths:
            fsync_path(path)
    for f in reversed(folders):
        fsync_path(f)


@functools.cache
def _syncer():
    """Threads that fsync side by side (they wait on the disk, not on the CPU or the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="fsync")


def replace(src: Path, dst: Path):
    """Rename `src` over `dst` and make the rename durable."""
    os.replace(src, dst)
    fsync_path(Path(dst).parent)


@contextmanager
def atomic_write(path: Path, mode: str = "wb"):
    """Yield a file object open on a temporary name beside `path`; on success, fsync it and
    rename it to `path`. On any failure the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.part"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: Path):
    """Like `atomic_write`, for writers that want a path (PIL, ffmpeg, shutil): yield the
    temporary path; rename it to `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{os.getpid()}.part{path.suffix}"
    try:
        yield tmp
        fsync_path(tmp)
        replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

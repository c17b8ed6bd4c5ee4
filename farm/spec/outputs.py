"""What farm may overwrite: the rules that keep a render from destroying a studio's files.

farm replaces only what farm wrote. A video file is farm's when its manifest sits beside it
and names it; a PNG-sequence folder is farm's when it holds farm's marker (or its manifest
sits beside it). Anything else that already exists needs `--force` (or `overwrite = true` in
[shot]), and a folder farm did not write, the spec's own folder, any folder above it and
$HOME are never replaced, whatever the flags. These rules run at validation, before
anything runs, and again just before a PNG folder is swapped in.

`estimate_bytes` is the disk a render will write, for the free-space check at validation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import files
from ..errors import FarmError

MARKER = ".farm-output"  # inside a PNG-sequence folder farm wrote


def sidecar(output: str | Path, suffix: str) -> Path:
    """`renders/lighthouse.mp4` -> `renders/lighthouse<suffix>` (a PNG folder keeps its name)."""
    output = Path(output)
    return output.with_name(output.stem + suffix)


def manifest_path(output: str | Path) -> Path:
    return sidecar(output, ".manifest.json")


def _manifest_names(manifest: Path, output: Path) -> bool:
    try:
        # Beside the output, where anyone may have put a FIFO: open_regular refuses it (FarmError)
        # rather than wait on it; farm's manifests are a few KB.
        data = files.read_json(manifest)
        return Path(data["video"]["path"]).resolve() == output.resolve()
    except (OSError, ValueError, KeyError, TypeError, FarmError):
        return False


def farm_wrote(path: Path) -> bool:
    """Did farm write this output (a video file, or a PNG-sequence folder)?"""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        return (path / MARKER).is_file() or _manifest_names(manifest_path(path), path)
    return path.is_file() and not path.is_symlink() and _manifest_names(manifest_path(path), path)


def problems(out: Path, codec: str, spec_dir: Path, force: bool) -> list[str]:
    """Why writing `out` (and its sidecars) would replace something farm may not; [] if fine."""
    out = Path(out)
    found = []
    target = out.resolve()
    if codec == "png":
        guarded = {Path.home().resolve(): "your home folder"}
        if target == spec_dir.resolve() or spec_dir.resolve().is_relative_to(target):
            found.append(f"{out} is the spec's own folder or a folder above it; farm will not replace it with frames")
        elif target in guarded:
            found.append(f"{out} is {guarded[target]}; farm will not replace it with frames")
        elif out.is_symlink() or (out.exists() and not out.is_dir()):
            found.append(f"{out} exists and is not a folder farm wrote; give a new folder name")
        elif out.is_dir() and any(out.iterdir()) and not farm_wrote(out):
            found.append(f"{out} is a folder with files farm did not write; farm replaces only PNG folders it made "
                         f"(they hold {MARKER}): give a new or empty folder")
    elif (out.exists() or out.is_symlink()) and not farm_wrote(out) and not force:
        found.append(f"{out} exists and farm did not write it (no farm manifest names it); pass --force or set "
                     f"`overwrite = true` in [shot] to replace it")
    if not force:
        for side in (manifest_path(out), sidecar(out, ".contact.png")):
            if (side.exists() or side.is_symlink()) and not _manifest_names(manifest_path(out), out):
                found.append(f"{side} exists and farm did not write it (it would be replaced by the render's "
                             f"{'manifest' if side.suffix == '.json' else 'contact sheet'}); pass --force, or move it")
    return found


# Bytes per pixel of each output: PNG frames of generated video keep ~60% of raw RGB (noise
# compresses badly); ProRes 422 HQ is ~220 Mb/s at 1080p30 = 0.44 B/px; H.264/H.265/AV1 at
# farm's default CRFs stay under 0.05 B/px. Upper-ish bounds: the check refuses only what
# clearly cannot fit.
PNG_BYTES_PER_PIXEL = 3 * 0.6
VIDEO_BYTES_PER_PIXEL = {"h264": 0.05, "h265": 0.05, "av1": 0.05, "prores": 0.5, "png": PNG_BYTES_PER_PIXEL}


def estimate_bytes(frames: int, keyframes: int, width: int, height: int, codec: str) -> tuple[int, int]:
    """Disk a render writes: (into the cache: keyframes and segment frames as PNG, and the
    assembled video; at the output path: its copy)."""
    px = width * height
    video = frames * px * VIDEO_BYTES_PER_PIXEL[codec]
    return int((keyframes + frames) * px * PNG_BYTES_PER_PIXEL + video), int(video)


def free_bytes(path: Path) -> tuple[Path, int]:
    """Free space on the filesystem that holds `path` (its nearest existing folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path, shutil.disk_usage(path).free

"""Assembly with ffmpeg: animatic frames (hold / crossfade), encoding, and probing.

Commands are built with ffmpeg-python. The binary is `FARM_FFMPEG` if set, else `ffmpeg`
on PATH, else the static build that the imageio-ffmpeg wheel ships. Every output is written
under a temporary name and renamed when ffmpeg succeeds; a failure raises FarmError with
the tail of ffmpeg's stderr.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import ffmpeg

from .. import files
from ..errors import FarmError
from ..spec import outputs
from ..spec.codecs import CODECS


def executable() -> str:
    explicit = os.environ.get("FARM_FFMPEG")
    if explicit:
        return explicit
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        raise FarmError("ffmpeg was not found: install it (apt install ffmpeg) or "
                        "`pip install imageio-ffmpeg`.") from None


# Every ffmpeg call has a time limit scaled to its work: BASE_TIMEOUT seconds, plus one second
# per PIXELS_PER_SECOND pixels it reads or writes. 1 MP/s is 1080p at half a frame a second,
# far slower than any of farm's encoders on one core (x264 medium does 1080p at ~30 fps on
# 2 cores here), so a limit is only ever reached by a stuck ffmpeg (a damaged PNG once made
# one loop at 99% CPU for ten minutes, growing to 790 MB).
BASE_TIMEOUT = 60.0
PIXELS_PER_SECOND = 1e6


def time_limit(frames: int, width: int, height: int) -> float:
    return BASE_TIMEOUT + frames * width * height / PIXELS_PER_SECOND


def run(stream, what: str, timeout: float) -> str:
    """Run an ffmpeg-python stream; return stderr. Raise FarmError with its tail on failure,
    or when it runs past `timeout` seconds (it is killed)."""
    cmd = stream.global_args("-hide_banner", "-nostdin").compile(cmd=executable(), overwrite_output=True)
    return _run(cmd, what, timeout)


def _run(cmd: list[str], what: str, timeout: float) -> str:
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FarmError(f"ffmpeg ran past its time limit of {timeout:.0f} s while {what}, and was stopped; "
                        f"its input may be damaged.") from None
    except OSError as e:
        raise FarmError(f"ffmpeg could not be started for {what} ({cmd[0]}: {e.strerror or e}).") from None
    if proc.returncode != 0:
        if "No space left on device" in proc.stderr:  # the disk is full, not the input broken: not worth a retry
            raise OSError(errno.ENOSPC, f"No space left on device (ffmpeg, while {what})")
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise FarmError(f"ffmpeg failed while {what} (exit code {proc.returncode}). Its last words:\n{tail}")
    return proc.stderr


def _size(image: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(image) as im:
            return im.size
    except OSError:  # unreadable: ffmpeg will say why; the base limit applies
        return 0, 0


def hold(image: Path, frames: int, out_dir: Path):
    """Write `frames` copies of a still as out_dir/000000.png ... (the animatic's hold)."""
    stream = ffmpeg.input(str(image), loop=1, framerate=1).output(
        str(out_dir / "%06d.png"), vframes=frames, start_number=0, vcodec="png")
    run(stream, f"holding {image} for {frames} frames", time_limit(frames, *_size(image)))


def crossfade(first: Path, last: Path, frames: int, fps: float, out_dir: Path):
    """Dissolve from `first` towards `last` over `frames` frames; frame 0 is `first` and the
    dissolve would reach `last` on the frame after this segment (the next segment's first)."""
    seconds = (frames + 1) / fps
    a = ffmpeg.input(str(first), loop=1, framerate=fps, t=seconds)
    b = ffmpeg.input(str(last), loop=1, framerate=fps, t=seconds)
    mixed = ffmpeg.filter([a, b], "xfade", transition="fade", duration=frames / fps, offset=0)
    stream = mixed.output(str(out_dir / "%06d.png"), vframes=frames, start_number=0, vcodec="png", pix_fmt="rgb24")
    run(stream, f"cross-fading {first} into {last}", time_limit(2 * frames, *_size(first)))


# retime mode -> the ffmpeg filter that makes frames between a model's (farm/models/timing.py).
# minterpolate's default mode is motion-compensated (mi_mode=mci, bidirectional motion
# estimation on 16-px blocks); framerate blends the two nearest frames by their distance.
RETIME_FILTERS = {"interpolate": "minterpolate", "blend": "framerate"}


def retime(frames: list[Path], rate: str, fps: str, count: int, mode: str, out_dir: Path):
    """Retime frames that sit at `rate` (a rational like "16" or "33/2") to `count` frames at
    `fps` (also a rational), written as out_dir/000000.png ...: frame k is the picture at
    time k / fps.

    The last frame is held (tpad) so that shot frames after the last native one, as in a
    first-frame-only family's segment, still have a picture to come from."""
    with tempfile.TemporaryDirectory(prefix=".farm-retime-", dir=out_dir) as tmp:
        seq = Path(tmp)
        for i, src in enumerate(frames):
            files.link_or_copy(src, seq / f"{i:06d}.png")
        target = fps
        stream = ffmpeg.input(str(seq / "%06d.png"), framerate=rate, start_number=0)
        stream = stream.filter("tpad", stop_mode="clone", stop=4)
        stream = stream.filter(RETIME_FILTERS[mode], fps=target)
        # minterpolate's motion search costs several times an encode per pixel (720p: a few
        # frames a second on 2 cores), so its limit is 10x the encoders'.
        limit = time_limit(len(frames) + count, *_size(frames[0])) * (10 if mode == "interpolate" else 1)
        run(stream.output(str(out_dir / "%06d.png"), vframes=count, start_number=0, vcodec="png", pix_fmt="rgb24"),
            f"retiming {len(frames)} frames at {rate} fps to {count} at {target} ({mode})", limit)
    made = sorted(out_dir.glob("*.png"))
    if len(made) != count:
        raise FarmError(f"ffmpeg's {RETIME_FILTERS[mode]} made {len(made)} frames where {count} were asked "
                        f"(from {len(frames)} frames at {rate} fps to {target} fps)")


# The soundtrack's encoder by container: AAC where it is at home (MP4, MKV), Opus in WebM (the
# only audio WebM takes besides Vorbis), 16-bit PCM in QuickTime (beside ProRes, as editors expect).
AUDIO_CODECS = {".webm": ("libopus", {"b:a": "128k", "ar": 48000}), ".mov": ("pcm_s16le", {}),
                "": ("aac", {"b:a": "192k"})}


def audio_codec(container: str) -> tuple[str, dict]:
    return AUDIO_CODECS.get(container.lower(), AUDIO_CODECS[""])


def encode(frames: list[Path], fps: float, codec: str, quality: int | None, out: Path, audio: Path | None = None):
    """Encode a list of PNG frames into `out` (a video file, or a folder for codec "png"),
    with `audio` (a WAV file as long as the frames last) as its soundtrack when given (a
    folder of PNGs has none: it is ignored there).

    A PNG folder replaces an existing `out` only if farm wrote that one (it holds farm's
    marker): checked again here, just before the swap, not only at validation."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".farm-encode-", dir=out.parent) as tmp:
        seq = Path(tmp) / "seq"
        seq.mkdir()
        for i, src in enumerate(frames):  # a numbered sequence for image2, as links: no copies
            files.link_or_copy(src, seq / f"{i:06d}.png")
        if codec == "png":
            staged = Path(tmp) / "out"
            seq.rename(staged)
            (staged / outputs.MARKER).write_text("A PNG sequence written by farm; farm may replace this folder.\n")
        else:
            encoder, opts = CODECS[codec].encoder, dict(CODECS[codec].options)
            if quality is not None and "crf" in opts:
                opts["crf"] = quality
            staged = Path(tmp) / f"out{out.suffix}"
            inputs = [ffmpeg.input(str(seq / "%06d.png"), framerate=fps, start_number=0)]
            if audio is not None:
                acodec, aopts = audio_codec(out.suffix)
                inputs.append(ffmpeg.input(str(audio)))
                opts.update({"acodec": acodec, **aopts})
            stream = ffmpeg.output(*inputs, str(staged), vcodec=encoder, r=fps, **opts,
                                   **{"fflags": "+bitexact", "flags:v": "+bitexact"})
            run(stream, f"encoding {len(frames)} frames from {frames[0].parent if frames else '?'} into {out.name} "
                        f"with {encoder}", time_limit(len(frames), *_size(frames[0])) if frames else BASE_TIMEOUT)
        files.sync_tree(staged) if staged.is_dir() else files.fsync_path(staged)
        if out.is_dir() and codec == "png":
            if any(out.iterdir()) and not outputs.farm_wrote(out):
                raise FarmError(f"{out} is a folder with files farm did not write; farm replaces only PNG folders "
                                f"it made. Move it, or give the shot another `out`.", code=2)
            old = Path(tmp) / "old"
            out.rename(old)  # swap the old sequence out, then the new one in
        files.replace(staged, out)


def audio_stream(path: Path) -> dict | None:
    """The first audio stream of a video: its codec, sample rate, channels and duration in
    seconds (decoded, not read from a header); None when it has none."""
    head = subprocess.run([executable(), "-hide_banner", "-nostdin", "-i", str(path)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, errors="replace", timeout=BASE_TIMEOUT).stderr
    if not re.search(r"Stream #\S+: Audio:", head):
        return None
    err = _run([executable(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:a:0", "-f", "null", "-"],
               f"reading {path}", BASE_TIMEOUT + path.stat().st_size / 1e6)
    stream = re.search(r"Stream #\S+: Audio: (\w+).*?, (\d+) Hz, ([\w.]+)", err)
    if not stream:
        return None
    times = re.findall(r"time=\s*(\d+):(\d+):([\d.]+)", err)
    seconds = (int(times[-1][0]) * 3600 + int(times[-1][1]) * 60 + float(times[-1][2])) if times else None
    return {"codec": stream.group(1), "rate": int(stream.group(2)), "channels": stream.group(3), "seconds": seconds}


def probe(path: Path) -> dict:
    """Frames, fps, width and height of a video, decoded with ffmpeg itself (the wheel's
    build has no ffprobe). Frames are counted by decoding, not read from a header."""
    err = _run([executable(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0", "-f", "null", "-"],
               f"reading {path}", BASE_TIMEOUT + path.stat().st_size / 1e6)  # decoding: ~1 s a MB at worst
    stream = re.search(r"Stream #\S+: Video: (\w+).*?, (\d{2,5})x(\d{2,5})", err)
    fps = re.search(r"([\d.]+) fps", err)
    counted = re.findall(r"frame=\s*(\d+)", err)
    if not stream or not counted:
        raise FarmError(f"Could not read the video stream of {path}.")
    return {"codec": stream.group(1), "width": int(stream.group(2)), "height": int(stream.group(3)),
            "fps": float(fps.group(1)) if fps else None, "frames": int(counted[-1])}


@lru_cache(maxsize=4)
def _version(exe: str) -> str:
    try:
        proc = subprocess.run([exe, "-version"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = proc.stdout.strip().splitlines()
    return lines[0] if lines else "unknown"


def version() -> str:
    """The first line of `ffmpeg -version` (cached per binary: it costs a process start)."""
    return _version(executable())


# Browsers play H.264 in MP4 (Debian's chromium 156 included: checked, readyState 4) but not
# H.265, ProRes or a folder of PNGs; those get a VP9 WebM preview, which every current browser
# plays and the imageio-ffmpeg build can write (libvpx-vp9). CRF 32 with -b:v 0 is VP9's
# constant-quality mode: the 48-frame 128x128 example comes out at 48 KiB in 0.2 s.
PLAYABLE = {("h264", ".mp4")}


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.png")) if path.is_dir() else path.stat().st_size


def playable(path: Path, codec: str) -> bool:
    return (codec, Path(path).suffix.lower()) in PLAYABLE


def preview(src: Path, fps: float, out: Path):
    """Write a browser-playable VP9 WebM of a video file or a folder of PNG frames."""
    src = Path(src)
    stream = (ffmpeg.input(str(src / "%06d.png"), framerate=fps, start_number=0) if src.is_dir()
              else ffmpeg.input(str(src)))
    with files.atomic_path(out) as tmp:
        run(stream.output(str(tmp), vcodec="libvpx-vp9", crf=32, **{"b:v": 0}, pix_fmt="yuv420p",
                          deadline="good", **{"cpu-used": 4, "row-mt": 1}, r=fps, f="webm"),
            f"making a browser preview of {src}", BASE_TIMEOUT + 4 * _bytes(src) / 1e6)

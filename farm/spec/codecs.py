"""The one table of codecs: what a spec may ask for (`shot.codec` and the extension of `out`),
and how ffmpeg writes each. Standard library only: the spec reads it to validate, the encoder
to encode, and validating a spec imports neither ffmpeg-python nor the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Codec:
    containers: tuple[str, ...]  # what it may be written to ("" is a folder of PNGs); spec.py checks `out`
    encoder: str | None = None  # ffmpeg's encoder; None: the frames are copied, not encoded
    options: dict = field(default_factory=dict)  # output options; CRF defaults are visually lossless


CODECS = {
    "h264": Codec((".mp4", ".mkv", ".mov"), "libx264",
                  {"pix_fmt": "yuv420p", "crf": 18, "preset": "medium", "movflags": "+faststart"}),
    "h265": Codec((".mp4", ".mkv", ".mov"), "libx265",
                  {"pix_fmt": "yuv420p", "crf": 20, "preset": "medium", "tag:v": "hvc1",
                   "x265-params": "log-level=error", "movflags": "+faststart"}),
    "av1": Codec((".mp4", ".mkv", ".webm"), "libsvtav1", {"pix_fmt": "yuv420p10le", "crf": 30, "preset": 8}),
    "prores": Codec((".mov", ".mkv"), "prores_ks", {"pix_fmt": "yuv422p10le", "profile:v": 3}),  # 3: 422 HQ
    "png": Codec(("",)),
}

"""Sound: the soundtracks that families with sound make with their frames (farm/models/families/,
`Family.sound`), kept beside the frames in the cache and joined for the assembly.

A segment's sound is `audio.wav` in its cache entry (16-bit PCM, written with the standard
library's `wave`), exactly as long as the segment's frames last at the shot's rate: retiming
changes the frame count, never the seconds, so the sound is trimmed or padded with silence to
them. A clip of a chain keeps its own, as long as its frames at the model's rate; its segment
joins them as it joins their frames. The assembly joins every segment's sound, with silence for
a segment that has none (an animatic, a silent family), and muxes it into the video; a shot
with no sound at all gets no audio stream.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

AUDIO = "audio.wav"  # a cache entry's soundtrack


def write(path: Path, samples, rate: int) -> None:
    """Write (channels, samples) floats in [-1, 1] as 16-bit PCM."""
    samples = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    pcm = (np.clip(np.nan_to_num(samples), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[0])
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(pcm.T.tobytes())  # interleaved


def read(path: Path) -> tuple[np.ndarray, int]:
    """(channels, samples) floats and the sample rate of a 16-bit PCM WAV file."""
    with wave.open(str(path), "rb") as w:
        channels, rate, n = w.getnchannels(), w.getframerate(), w.getnframes()
        data = np.frombuffer(w.readframes(n), dtype="<i2")
    return data.reshape(-1, channels).T.astype(np.float32) / 32767.0, rate


def samples(seconds: float, rate: int) -> int:
    return int(round(seconds * rate))


def fit(audio: np.ndarray, count: int) -> np.ndarray:
    """Trim to `count` samples, or pad the end with silence."""
    audio = audio[:, :count]
    if audio.shape[1] < count:
        audio = np.pad(audio, ((0, 0), (0, count - audio.shape[1])))
    return audio


def resample(audio: np.ndarray, rate: int, to: int) -> np.ndarray:
    """Linear resampling (only where segments of families with different rates are joined)."""
    if rate == to or audio.shape[1] == 0:
        return audio
    n = samples(audio.shape[1] / rate, to)
    t = np.arange(n) / to * rate
    return np.stack([np.interp(t, np.arange(audio.shape[1]), ch) for ch in audio]).astype(np.float32)


def keep(folder: Path, sound, seconds: float) -> None:
    """Write a call's sound ((samples, rate), or None: nothing is written) into a cache entry,
    fitted to `seconds`."""
    if sound is None:
        return
    audio, rate = sound
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    write(folder / AUDIO, fit(audio, samples(seconds, rate)), rate)


def of(folder: Path) -> tuple[np.ndarray, int] | None:
    """A cache entry's sound, or None when it has none."""
    path = Path(folder) / AUDIO
    return read(path) if path.is_file() else None


def join(parts: list[tuple[tuple[np.ndarray, int] | None, float]]) -> tuple[np.ndarray, int] | None:
    """Join sounds, each (sound or None, its seconds), one after the other: each takes exactly
    its share of the whole (cut at the rounded boundary of the running time, so no rounding
    accumulates), a part with no sound is silence. None when no part has sound."""
    present = [s for s, _ in parts if s is not None]
    if not present:
        return None
    rate = max(r for _, r in present)
    channels = max(a.shape[0] for a, _ in present)
    out, start = [], 0.0
    for sound, seconds in parts:
        count = samples(start + seconds, rate) - samples(start, rate)
        start += seconds
        if sound is None:
            out.append(np.zeros((channels, count), dtype=np.float32))
            continue
        audio = resample(*sound, rate)
        if audio.shape[0] < channels:  # mono among stereo: the same on every channel
            audio = np.repeat(audio[:1], channels, axis=0)
        out.append(fit(audio, count))
    return np.concatenate(out, axis=1), rate

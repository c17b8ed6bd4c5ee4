"""The checks a job spec's values go through, shared with the presets' [defaults] (a preset
is validated by the same rules as the spec that would override it). Torch-free."""

from __future__ import annotations

import difflib

MAX_SIDE = 8192  # pixels; a video model at 8K is already far beyond any GPU today
DTYPES = ("float32", "float16", "bfloat16")
# Schedulers are trained on 1,000 timesteps; DDIM with 1,000 inference steps indexes past them
# (IndexError mid-render), and no model needs more than a few hundred.
MAX_STEPS = 500
MAX_PICTURE_SIDE = 16384  # a keyframe picture; larger ones are refused (a "decompression bomb" decodes to GBs)


def kind(v) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(v), type(v).__name__)


class Checker:
    """Collects problems instead of stopping at the first one."""

    def __init__(self, path, lines: dict[str, int] | None = None):
        self.path = path
        self.lines = lines or {}
        self.problems: list[str] = []
        self._failed: set[str] = set()

    def fail(self, key: str, msg: str):
        self._failed.add(key)
        probe = key
        while probe and probe not in self.lines:
            probe = probe.rpartition(".")[0] if "." in probe else ""
        where = f"line {self.lines[probe]}: " if probe else ""
        self.problems.append(f"{where}{key}: {msg}")

    def failed(self, key: str) -> bool:
        """Whether a problem was recorded for this key (a value that failed is not checked again)."""
        return key in self._failed

    def keys(self, table: dict, allowed: tuple[str, ...], prefix: str):
        for k in table:
            if k not in allowed:
                hint = difflib.get_close_matches(k, allowed, n=1)
                tip = f" (did you mean `{hint[0]}`?)" if hint else f" (allowed: {', '.join(allowed)})"
                self.fail(f"{prefix}{k}", f"unknown key{tip}")

    def table(self, data: dict, key: str, prefix: str = "") -> dict:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.fail(prefix + key, f"expected a table, got {kind(value)}")
            return {}
        return value

    def number(self, table, key, prefix, lo, hi, default=None, integer=False, lo_open=False):
        if key not in table:
            return default
        v = table[key]
        ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
        what = "an integer" if integer else "a number"
        if isinstance(v, bool) or not ok_type:
            self.fail(prefix + key, f"expected {what}, got {kind(v)}")
            return default
        if (v <= lo if lo_open else v < lo) or v > hi or v != v:
            low = f"> {lo}" if lo_open else f">= {lo}"
            self.fail(prefix + key, f"expected {what} {low} and <= {hi}, got {v}")
            return default
        return v

    def string(self, table, key, prefix, default=None, nonempty=True):
        if key not in table:
            return default
        v = table[key]
        if not isinstance(v, str):
            self.fail(prefix + key, f"expected a string, got {kind(v)}")
            return default
        if nonempty and not v.strip():
            self.fail(prefix + key, "must not be empty")
            return default
        return v

    def size(self, table, key, prefix):
        """[width, height], each 16..MAX_SIDE; None if absent or invalid (the problem is recorded)."""
        if key not in table:
            return None
        size = table[key]
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)):
            self.fail(prefix + key, f"expected [width, height] as two integers, got {size!r}")
        elif not all(16 <= s <= MAX_SIDE for s in size):
            self.fail(prefix + key, f"each side must be between 16 and {MAX_SIDE} pixels, got {size}")
        else:
            return tuple(size)
        return None


# A preset's [defaults]: farm's own settings, and the few pipeline call arguments the shipped
# presets set there. Any other pipeline argument goes in [options], where it is passed as is.
DEFAULT_KEYS = ("steps", "guidance", "size", "dtype", "scheduler")
DEFAULT_CALL_OPTIONS = ("max_sequence_length", "decode_timestep", "decode_noise_scale")


def preset_defaults(c: Checker, defaults, prefix: str):
    """Check a preset's [defaults] with the spec's rules for the same settings."""
    if not isinstance(defaults, dict):
        c.fail(prefix.rstrip("."), f"expected a table, got {kind(defaults)}")
        return
    allowed = DEFAULT_KEYS + DEFAULT_CALL_OPTIONS
    for k in defaults:
        if k not in allowed:
            hint = difflib.get_close_matches(k, allowed, n=1)
            c.fail(prefix + k, "unknown key" + (f" (did you mean `{hint[0]}`?)" if hint else "")
                   + "; pipeline arguments of your own go in the preset's [options] table")
    c.number(defaults, "steps", prefix, 1, MAX_STEPS, integer=True)
    c.number(defaults, "guidance", prefix, 0, 100)
    c.size(defaults, "size", prefix)
    dtype = c.string(defaults, "dtype", prefix)
    if dtype is not None and dtype not in DTYPES:
        c.fail(prefix + "dtype", f"expected one of {', '.join(DTYPES)}, got {dtype!r}")
    c.string(defaults, "scheduler", prefix)
    c.number(defaults, "max_sequence_length", prefix, 1, 4096, integer=True)
    for k in ("decode_timestep", "decode_noise_scale"):
        c.number(defaults, k, prefix, 0, 1)

"""The checks a job spec's values go through, shared with the presets' [defaults] (a preset
is validated by the same rules as the spec that would override it). Torch-free."""

from __future__ import annotations

import difflib
import os
import reprlib

MAX_SIDE = 8192  # pixels; a video model at 8K is already far beyond any GPU today
DTYPES = ("float32", "float16", "bfloat16")
# Schedulers are trained on 1,000 timesteps; DDIM with 1,000 inference steps indexes past them
# (IndexError mid-render), and no model needs more than a few hundred.
MAX_STEPS = 500
MAX_PICTURE_SIDE = 16384  # a keyframe picture; larger ones are refused (a "decompression bomb" decodes to GBs)
# A keyframe picture's file: the raw RGBA pixels of the largest picture accepted (16,384² x 4 B
# = 1 GiB, an uncompressed TIFF) plus 16 MiB of metadata. Real pictures are far smaller.
MAX_PICTURE_BYTES = MAX_PICTURE_SIDE ** 2 * 4 + (16 << 20)


# A job spec's deepest value is 6 levels down (sweep."frames[0].motion.loras" = [[{ path = ... }]]);
# tomli allows 400, and a value nested that deep makes deepcopy (each sweep variant), repr and
# json.dumps (task params) pass Python's recursion limit (1,000 frames). 32 leaves room.
MAX_DEPTH = 32

# A Hugging Face repo id, `org/name` (farm/models/hub.py adds an optional `@revision`; a preset
# LoRA's `repo` takes none: its revision has a key of its own).
HUB_REPO = r"[\w.-]+/[\w.-]+"
# What farm writes beside an output, under names longer than its own: the longest is the
# manifest's temporary name `.STEM.manifest.json.PID.part` (the stem plus 28 bytes with a
# 7-digit pid); an output's name leaves that room under the filesystem's limit (NAME_MAX).
OUT_NAME_HEADROOM = 32

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80  # a value echoed in a message: a 16 MB string stays one line
_SHOWN.maxlist = _SHOWN.maxdict = 6
_SHOWN.maxlevel = 3


def shown(value) -> str:
    """repr() of a user's value, shortened for a message (`'xxxxx...xxxx'`)."""
    return _SHOWN.repr(value)


def depth(value) -> int:
    """How deeply tables and lists nest in a parsed TOML value (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
        else:
            continue
        deepest = max(deepest, d + 1)
    return deepest


def _limits(path: str) -> tuple[int, int]:
    """NAME_MAX and PATH_MAX of the filesystem that would hold `path` (its nearest existing
    folder's); 255 and 4096, Linux's usual values, where they cannot be read."""
    probe = path
    while probe and not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        return os.pathconf(probe, "PC_NAME_MAX"), os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def path_problem(value: str, base, headroom: int = 0) -> str | None:
    """Why a path from a spec (relative to `base`) cannot name a file here: a NUL byte, a part
    longer than the filesystem allows (`headroom`: bytes the last part must leave for names
    farm derives from it), a path longer than PATH_MAX; None if it can. Checked before any
    filesystem call, each of which would raise on such a path (ValueError, ENAMETOOLONG)."""
    if "\0" in value:
        return "the path holds a NUL byte (\\0), which no file name can"
    full = os.path.join(os.fspath(base), os.path.expanduser(value))  # os.path's never raises on ~nosuchuser
    name_max, path_max = _limits(full)
    raw = os.fsencode(full)
    parts = [p for p in raw.split(b"/") if p]
    for i, part in enumerate(parts):
        room = headroom if i == len(parts) - 1 else 0
        if len(part) + room > name_max:
            why = (f"; farm writes beside it under names up to {headroom} bytes longer" if room else "")
            return (f"a file or folder name in it is {len(part)} bytes long ({shown(os.fsdecode(part))}); this "
                    f"filesystem allows {name_max} bytes a name{why}")
    if len(raw) + headroom > path_max:
        return f"the path is {len(raw)} bytes long; this filesystem allows {path_max - headroom}"
    return None


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
            self.fail(prefix + key, f"expected [width, height] as two integers, got {shown(size)}")
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
        c.fail(prefix + "dtype", f"expected one of {', '.join(DTYPES)}, got {shown(dtype)}")
    c.string(defaults, "scheduler", prefix)
    c.number(defaults, "max_sequence_length", prefix, 1, 4096, integer=True)
    for k in ("decode_timestep", "decode_noise_scale"):
        c.number(defaults, k, prefix, 0, 1)


# A preset's [fit] table (farm/models/fit.py reads it): parameter counts in billions per component, the
# activation figures that override the family's rule, and the published figures it was checked
# against (tests/test_fit.py compares each estimate with its `gb`).
FIT_KEYS = ("params", "token_bytes", "decode_bytes", "patch", "checks")
FIT_CHECK_KEYS = ("what", "placement", "size", "frames", "batch", "patch", "quantize", "vae_dtype", "exclude",
                  "tiling", "gb", "gb_max", "source")
PLACEMENTS = ("all", "vae_tiling", "model_offload", "sequential_offload")


def fit_table(c: Checker, fit, prefix: str):
    """Check a preset's [fit] table, so that a wrong one is an error when the preset is read,
    never a task run without a memory estimate."""
    if not isinstance(fit, dict):
        c.fail(prefix.rstrip("."), f"expected a table, got {kind(fit)}")
        return
    c.keys(fit, FIT_KEYS, prefix)
    params = c.table(fit, "params", prefix)
    for part in params:
        c.number(params, part, f"{prefix}params.", 0, 10_000, lo_open=True)  # billions
    for key in ("token_bytes", "decode_bytes"):
        c.number(fit, key, prefix, 0, 1e12, lo_open=True)
    _patch(c, fit, "patch", prefix)
    checks = fit.get("checks", [])
    if not isinstance(checks, list) or not all(isinstance(x, dict) for x in checks):
        c.fail(prefix + "checks", f"expected a list of tables, got {shown(checks)}")
        return
    for i, check in enumerate(checks):
        at = f"{prefix}checks[{i}]."
        c.keys(check, FIT_CHECK_KEYS, at)
        if check.get("what", "peak") not in ("peak", "weights"):
            c.fail(at + "what", f"expected \"peak\" or \"weights\", got {shown(check['what'])}")
        if check.get("what") != "weights" and check.get("placement") not in PLACEMENTS:
            c.fail(at + "placement", f"expected one of {', '.join(PLACEMENTS)}, got {shown(check.get('placement'))}")
        c.size(check, "size", at)
        c.number(check, "frames", at, 1, 100_000, integer=True)
        c.number(check, "batch", at, 1, 64, integer=True)
        _patch(c, check, "patch", at)
        for key in ("gb", "gb_max"):
            c.number(check, key, at, 0, 100_000, lo_open=True)
        if "gb" not in check and "gb_max" not in check:
            c.fail(at + "gb", "a check needs the published figure, `gb` (or `gb_max` for an upper bound)")
        c.string(check, "source", at)


def _patch(c: Checker, table: dict, key: str, prefix: str):
    v = table.get(key)
    if key in table and (not isinstance(v, list) or len(v) != 3
                         or not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 64 for x in v)):
        c.fail(prefix + key, f"expected [time, height, width] as three integers from 1 to 64, got {shown(v)}")

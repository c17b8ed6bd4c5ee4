"""What a spec or preset may ask of acceleration, and its validation: no torch, no diffusers.

spec.py, plan.py and models/presets.py import this (features go into task keys), so validating a
spec never loads the render path.
"""

from __future__ import annotations

from ..errors import FarmError

FEATURES = ("kernels", "compile", "attention", "cache", "taylorseer")
STEP_CACHES = {"cache": "first_block", "taylorseer": "taylorseer"}  # feature -> report's kind; at most one
TAYLORSEER_INTERVAL = 5  # diffusers' defaults (its docs show them on FLUX)
TAYLORSEER_WARMUP = 3
DEFAULT_CACHE_THRESHOLD = 0.05  # diffusers' default; ParaAttention uses 0.05-0.1 for Wan


def check_features(features, where: str = "accelerate") -> list[str]:
    """Validate a spec's or preset's `accelerate = [...]` list; return it sorted, deduplicated."""
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise FarmError(f"{where}: expected a list of strings from {', '.join(FEATURES)}, got {features!r}", code=2)
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise FarmError(f"{where}: unknown {', '.join(map(repr, unknown))} (allowed: {', '.join(FEATURES)})", code=2)
    caches = [f for f in STEP_CACHES if f in features]
    if len(caches) > 1:
        raise FarmError(f"{where}: {' and '.join(map(repr, caches))} are two step caches; choose one", code=2)
    return sorted(set(features), key=FEATURES.index)


def check_threshold(value, where: str = "cache_threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
        raise FarmError(f"{where}: expected a number >= 0 and <= 10 (relative change of the first block's "
                        f"residual), got {value!r}", code=2)
    return float(value)

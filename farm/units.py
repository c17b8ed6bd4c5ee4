"""Sizes and ages as people write and read them: `parse_size("200G")`, `parse_age("30d")`,
`human(1.5e9)` -> "1.5 GB". One parser and one formatter for every command and message."""

from __future__ import annotations

import re

from .errors import FarmError

# What people type: K, M, G, T are powers of 1024 (as `du`, `df -h` and Docker read them);
# "200G", "200GB" and "200GiB" are the same size.
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
AGES = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(value: str | int, what: str = "--max-size") -> int:
    """'200G' / '512M' / '0' / bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(value), re.IGNORECASE)
    if not m:
        raise FarmError(f"{what} expects a size like 200G, 512M or 0, got {value!r}.", code=2)
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def parse_age(value: str) -> float:
    """'30d' / '12h' / '90m' / '45s' / '2w' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(value), re.IGNORECASE)
    if not m:
        raise FarmError(f"--older-than expects an age like 30d, 12h or 90m, got {value!r}.", code=2)
    return float(m.group(1)) * AGES[m.group(2).lower()]


def human(n: float) -> str:
    """Bytes in decimal units, as disks and GPU memory are sold: 1.5 GB, 820.0 MB, 12 B."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"

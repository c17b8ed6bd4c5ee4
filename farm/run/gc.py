"""`farm gc`: keep the cache within a size, least recently used entries first.

An entry's last use is the modification time of its record (`Cache.touch`, on every reuse).
Entries that a queued or running job needs (any task of such a job: later tasks read the
outputs of finished ones) are never removed. Removing is renaming away, then deleting, so a
reader never sees half an entry; a removed entry is simply recomputed by the next render that
needs it. Leftovers of killed writers (`.tmp-*`, `.trash-*`) go too.

The default limit for `farm work`, which prunes between jobs, is `cache_max_size` in
`$FARM_HOME/config.toml` (or the FARM_CACHE_MAX_SIZE environment variable), e.g. "200G".
"""

from __future__ import annotations

import os
import time

from .. import home
from ..queue.cache import Cache
from ..queue.queue import Queue
from ..units import parse_size


def configured_max_size() -> int | None:
    """The cache limit `farm work` keeps between jobs: FARM_CACHE_MAX_SIZE, else
    `cache_max_size` in $FARM_HOME/config.toml, else None (no pruning)."""
    env = os.environ.get("FARM_CACHE_MAX_SIZE")
    if env:
        return parse_size(env, "FARM_CACHE_MAX_SIZE")
    value = home.config().get("cache_max_size")
    return None if value is None else parse_size(value, f"{home.config_path()}: cache_max_size")


def collect(queue: Queue, cache: Cache, *, max_size: int | None = None, older_than: float | None = None,
            dry_run: bool = False) -> dict:
    """Remove entries older than `older_than` seconds, then least recently used ones until the
    cache holds at most `max_size` bytes; never what a live job needs. Returns a summary:
    removed, freed_bytes, kept_bytes, protected (entries kept for live jobs), dry_run, keys."""
    live = queue.live_keys()
    entries = sorted(cache.entries(), key=lambda e: e.used)
    total = sum(e.size for e in entries)
    now, removed, freed = time.time(), [], 0
    for e in entries:
        if e.key in live:
            continue
        too_old = older_than is not None and now - e.used > older_than
        too_big = max_size is not None and total - freed > max_size
        if not (too_old or too_big):
            continue
        if not dry_run:
            cache.discard(e.key)
        removed.append(e.key)
        freed += e.size
    if not dry_run:
        cache.sweep()
    return {"removed": len(removed), "freed_bytes": freed, "kept_bytes": total - freed,
            "protected": sum(e.key in live for e in entries), "dry_run": dry_run, "keys": removed}

"""Where farm keeps its state: one folder per user holding the queue database, the task
cache and the built-in models. `FARM_HOME` overrides it (tests use temporary folders)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("FARM_HOME")
    path = Path(env).expanduser() if env else Path.home() / ".farm"
    return path.resolve()


def db_path() -> Path:
    return home() / "queue.db"


def cache_dir() -> Path:
    return home() / "cache"


def models_dir() -> Path:
    return home() / "models"

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


def config_path() -> Path:
    return home() / "config.toml"


def config() -> dict:
    """$FARM_HOME/config.toml as a dict ({} when there is none): `cache_max_size` (farm/run/gc.py),
    `[serve] token` (farm serve)."""
    import tomli

    from . import files
    from .errors import FarmError

    path = config_path()
    if not path.is_file():
        return {}
    try:
        return tomli.loads(files.read_regular(path, 1 << 20, "config.toml").decode())
    except (OSError, UnicodeDecodeError, RecursionError, tomli.TOMLDecodeError) as e:
        raise FarmError(f"{path} is not readable TOML: {e}", code=2) from None

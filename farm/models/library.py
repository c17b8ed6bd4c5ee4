"""The preset library, `farm models`: every preset as `farm models [show]` describes it
(`describe`, `catalog`), and fetching a preset's weights (`pull`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from ..errors import FarmError
from . import timing
from .hub import cached_file, download, download_file, is_hub_id
from .identity import local_path, resolve
from .presets import load_preset, preset_family, preset_names, presets_dir


def describe(name: str) -> dict:
    """One preset as `farm models show --json` prints it; `local` says whether it can load here."""
    preset = load_preset(_known_preset(name))
    source = preset["source"] + (f"@{preset['revision']}" if preset.get("revision") else "")
    local, where, error, rule = True, None, None, None
    try:
        ref = resolve(name)
        where = ref.source if not ref.source.startswith("builtin:") else "built in code"
        rule = timing.shape(ref)  # from its config: the version it is (CogVideoX 1.0 4k+1, 1.5 8k+1)
    except FarmError as e:
        local, error = False, e.message
    family = preset_family(preset)
    rule = rule or (family.shape({}) if family else None)  # weights not here: the family's own
    info = {"name": name, "role": preset["role"], "pipeline": preset["pipeline"], "source": source,
            "local": local, "twin": preset.get("twin"), "description": preset.get("description", ""),
            "defaults": preset.get("defaults", {}), "memory": preset.get("memory", {}),
            "trust_remote_code": preset.get("trust_remote_code", False),
            "frames": [rule.step, rule.offset] if rule and preset["role"] == "motion" else None,
            "fps": preset.get("fps"), "max_frames": preset.get("max_frames"),
            "multiple_of": rule.multiple if rule else 8}
    if preset.get("loras"):  # each with whether it is in the Hugging Face cache
        info["loras"] = [{**lo, "present": cached_file(lo["repo"], lo["file"], lo.get("revision")) is not None}
                         for lo in preset["loras"]]
    for key in ("accelerate", "cache_threshold"):  # farm/acceleration/settings.py; only when the preset sets them
        if key in preset:
            info[key] = preset[key]
    if where:
        info["path"] = where
    if error:
        info["missing"] = error
    return info


def catalog() -> list[dict]:
    """Every preset as `describe` gives it; a preset file that cannot be read is listed with
    its error (`error`) rather than hiding the others."""
    rows = []
    for n in preset_names():
        try:
            rows.append(describe(n))
        except FarmError as e:
            rows.append({"name": n, "role": "?", "pipeline": "?", "source": "?", "local": False, "error": e.message})
    return rows


def _known_preset(name: str) -> str:
    if name not in preset_names():
        hint = difflib.get_close_matches(name, preset_names(), n=1)
        raise FarmError(f"unknown preset {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        + f"; presets: {', '.join(preset_names())}.", code=2)
    return name


def pull(name: str, timeout: float = 10.0) -> Path:
    """Download a preset's (or hub id's) weights into the Hugging Face cache; return the snapshot
    (a built-in model's folder, built). A preset's LoRAs (`loras = [{ repo, file, revision }]`)
    come with it, each file alone at its revision (`pull_loras`). `hub.download` says how it
    waits on the network."""
    if name in preset_names():
        preset = load_preset(name)
        source = preset["source"]
        if source.startswith("builtin:"):
            pull_loras(name, preset, timeout)
            return local_path(resolve(name))  # built in code: "pulling" builds it
        if not is_hub_id(source):
            if preset.get("loras"):
                pull_loras(name, preset, timeout)  # the weights are a local folder or file already
                path = Path(os.path.expanduser(source))
                return path if path.is_absolute() else presets_dir() / path
            raise FarmError(f"Preset {name!r} points at {source}, a local path: nothing to download.", code=2)
        repo, revision = source.partition("@")[0], source.partition("@")[2] or preset.get("revision")
        snapshot = download(name, repo, revision, timeout)
        pull_loras(name, preset, timeout)
        return snapshot
    if is_hub_id(name):
        repo, _, revision = name.partition("@")
        return download(name, repo, revision, timeout)
    _known_preset(name)


def pull_loras(name: str, preset: dict, timeout: float = 10.0) -> list[Path]:
    """Download the LoRA files preset `name` applies (just those files, at their revisions)
    into the Hugging Face cache, where a render finds them (identity.preset_loras)."""
    return [download_file(name, lo["repo"], lo["file"], lo.get("revision"), timeout) for lo in preset.get("loras", ())]

"""The Hugging Face hub: what a hub id looks like, where the local Hugging Face cache is, finding
a model there (a render never downloads), and downloading one (`farm models pull`, the one place
farm touches the network).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..checks import HUB_REPO, shown
from ..errors import FarmError


def is_hub_id(name: str) -> bool:
    return re.fullmatch(HUB_REPO + r"(@[\w./-]+)?", name) is not None


def hub_cache() -> str:
    """The Hugging Face cache folder, read now (huggingface_hub reads its variables once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_CACHE") or (os.environ.get("HF_HOME") and os.path.join(os.environ["HF_HOME"], "hub"))
    return env or constants.HF_HUB_CACHE


def cached(name: str) -> Path | None:
    """The `model_index.json` of hub id `name` (`org/name`, optionally `@revision`) in the local
    Hugging Face cache, in the snapshot of the commit it names; None if it is not there.
    FarmError for an id the hub's own rules refuse."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    repo, _, revision = name.partition("@")
    try:
        found = try_to_load_from_cache(repo, "model_index.json", revision=revision or None, cache_dir=hub_cache())
    except HFValidationError as e:  # the hub's own rules for a repo id (at most 96 characters, ...)
        raise FarmError(f"model {shown(name)} is not a valid hub id: {e}", code=2) from None
    return Path(found) if isinstance(found, str) else None


def cached_file(repo: str, file: str, revision: str | None) -> Path | None:
    """One file of hub repo `repo` at `revision` (a preset's LoRA) in the local Hugging Face
    cache, as `download_file` put it there; None if it is not there."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(repo, file, revision=revision or None, cache_dir=hub_cache())
    except HFValidationError as e:
        raise FarmError(f"LoRA repo {shown(repo)} is not a valid hub id: {e}", code=2) from None
    return Path(found) if isinstance(found, str) else None


def download_file(name: str, repo: str, file: str, revision: str | None, timeout: float = 10.0) -> Path:
    """Download one file of `repo` at `revision` (a LoRA that preset `name` applies) into the
    Hugging Face cache, as `download` does a whole repo; return its path there."""
    endpoint = _endpoint(name, timeout)
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo, file, revision=revision or None, etag_timeout=timeout, cache_dir=hub_cache(),
                               endpoint=endpoint)
    except Exception as e:  # noqa: BLE001 - hub errors come from requests/httpx and huggingface_hub alike
        raise FarmError(f"Could not download {file} of {repo}{'@' + revision if revision else ''} (a LoRA of "
                        f"{name!r}) from {endpoint}: {type(e).__name__}: {e}", code=1) from None
    return Path(path)


def download(name: str, repo: str, revision: str | None, timeout: float = 10.0) -> Path:
    """Download `repo` at `revision` (what `name`, a preset or hub id, points at) into the
    Hugging Face cache; return the snapshot.

    Checks that the hub answers first and gives every HTTP request `timeout` seconds, so an
    offline machine gets a FarmError in seconds rather than a hang."""
    endpoint = _endpoint(name, timeout)
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo, revision=revision or None, etag_timeout=timeout, cache_dir=hub_cache(),
                                 endpoint=endpoint)
    except Exception as e:  # noqa: BLE001 - hub errors come from requests/httpx and huggingface_hub alike
        raise FarmError(f"Could not download {name!r} ({repo}{'@' + revision if revision else ''}) from {endpoint}: "
                        f"{type(e).__name__}: {e}", code=1) from None
    return Path(path)


def _endpoint(name: str, timeout: float) -> str:
    """The hub endpoint, checked to answer, with every HTTP request of huggingface_hub bounded
    by `timeout` seconds (set before it is imported: it reads them then)."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout)))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(timeout)))
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    _reachable(endpoint, timeout, name)
    return endpoint


def _reachable(endpoint: str, timeout: float, name: str):
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=min(timeout, 5.0)).close()
    except OSError as e:
        raise FarmError(f"Cannot download {name!r}: the model hub {endpoint} is unreachable ({e.strerror or e}). "
                        f"Run `farm models pull {name}` on a machine with a network (the Hugging Face cache "
                        f"can be copied), or set HF_ENDPOINT to a mirror.", code=1) from None

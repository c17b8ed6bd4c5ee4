"""`farm serve`: a live web page of the farm (jobs, a job's storyboard filling in, workers,
actions) and a JSON API beside it, over the same queue database. Optional extra `farm[serve]`
(Starlette and uvicorn); see docs/serve.md."""

from __future__ import annotations

import socket
from pathlib import Path

from ...errors import FarmError


def token_for(host: str, token: str | None) -> str | None:
    """The token a server on `host` requires: the one given, else `[serve] token` in
    $FARM_HOME/config.toml; off the loopback one is required (FarmError without)."""
    from ... import home
    from .guard import is_loopback

    if token is None:
        table = home.config().get("serve", {})
        token = table.get("token") if isinstance(table, dict) else None
        if token is not None and (not isinstance(token, str) or not token):
            raise FarmError(f"{home.config_path()}: [serve] token must be a non-empty string.", code=2)
    if token is not None and len(token) < 16:
        raise FarmError("A farm serve token must be at least 16 characters (for example: "
                        "`python -c 'import secrets; print(secrets.token_urlsafe())'`).", code=2)
    if token is None and not is_loopback(host):
        raise FarmError(f"farm serve on {host} would let anyone who can reach it see and change the farm: give it "
                        f"a token (--token, or `[serve] token = \"...\"` in {home.config_path()}), or serve on "
                        f"127.0.0.1 and reach it through an SSH tunnel.", code=2)
    return token


def serve(db: Path, cache: Path, *, host: str = "127.0.0.1", port: int = 8188, token: str | None = None,
          read_only: bool = False, ready=None):
    """Serve until interrupted. `ready(url)` is called once the socket listens."""
    try:
        import uvicorn

        from .app import app
    except ImportError as e:
        raise FarmError(f"farm serve needs its extra: pip install 'farm[serve]' ({e.name} is missing).",
                        code=2) from None
    token = token_for(host, token)
    config = uvicorn.Config(app(db, cache, bind=host, token=token, read_only=read_only), host=host, port=port,
                            log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Answers go out as soon as written: without this a response's body waits for the
        # client's delayed ACK of its headers (Nagle's algorithm), 40 ms on every request here.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.listen(config.backlog)  # connections wait in the backlog from now on, not refused until uvicorn starts
    except OSError as e:
        sock.close()
        raise FarmError(f"farm serve cannot listen on {host}:{port} ({e.strerror or e}).", code=2) from None
    if ready is not None:
        name = f"[{host}]" if ":" in host else host
        ready(f"http://{name}:{sock.getsockname()[1]}/")
    server.run(sockets=[sock])

"""Who may use `farm serve`: the Host a request names, its token, and where an action comes from.

- **Host.** A server bound to the loopback answers only requests naming a loopback host
  (`127.0.0.1`, `localhost`, `[::1]`), so a web page cannot reach it through a DNS name of its
  own that resolves to 127.0.0.1 (DNS rebinding). Bound to one address, it answers that address
  and the loopback names; bound to every address (`0.0.0.0`, `::`), any Host, the token
  deciding.
- **Token.** Off the loopback a token is required (`--token`, or `[serve] token` in
  `$FARM_HOME/config.toml`), and then every request carries it: `Authorization: Bearer TOKEN`
  (scripts), or the cookie that opening `/?token=TOKEN` once sets (the browser; it is
  HttpOnly and SameSite=Strict, and the address bar is cleared of the token at once).
- **Actions** are POSTs of JSON. A browser sends a cross-site JSON POST only after a CORS
  preflight, which this server never grants, and every action also checks that its `Origin`,
  when there is one, is this server's own. So no other site can cancel a job.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse

COOKIE = "farm_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host of a Host header, without its port (`[::1]:8080` -> `::1`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed_hosts(bind: str) -> set[str] | None:
    """The host names a server bound to `bind` answers to; None: any."""
    if bind in ("0.0.0.0", "::", ""):
        return None
    names = set(LOOPBACK_NAMES)
    if not is_loopback(bind):
        names.add(bind.strip("[]").lower())
    return names


class Guard(BaseHTTPMiddleware):
    def __init__(self, app, *, bind: str, token: str | None):
        super().__init__(app)
        self.hosts = allowed_hosts(bind)
        self.token = token

    def _token_ok(self, request: Request) -> bool:
        if self.token is None:
            return True
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def dispatch(self, request: Request, call_next):
        host = host_name(request.headers.get("host", ""))
        if self.hosts is not None and host not in self.hosts:
            return PlainTextResponse("farm serve: this server does not answer to that Host.", status_code=421)
        if self.token is not None and request.url.path == "/" and "token" in request.query_params:
            given = request.query_params["token"]
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return PlainTextResponse("farm serve: wrong token.", status_code=401)
            response = RedirectResponse("/", status_code=303)  # the token leaves the address bar
            response.set_cookie(COOKIE, given, httponly=True, samesite="strict", path="/")
            return response
        if not self._token_ok(request):
            return PlainTextResponse("farm serve: a token is required: open /?token=TOKEN once, or send "
                                     "`Authorization: Bearer TOKEN`.", status_code=401)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin is not None and origin.lower() not in (f"http://{request.headers.get('host', '').lower()}",
                                                             f"https://{request.headers.get('host', '').lower()}"):
                return JSONResponse({"error": "an action from another site's page is refused"}, status_code=403)
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return JSONResponse({"error": "actions are POSTs of JSON (Content-Type: application/json)"},
                                    status_code=415)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

"""The served dashboard's front door: an ASGI middleware in front of every Streamlit endpoint (serve.py).

Streamlit's own endpoints know nothing of $LLPF_ACCESS_TOKEN: a client that never gave it could PUT
files into server memory (/_stcore/upload_file), read /_stcore/metrics, and send developer messages
such as "clear cache" over the websocket. The gate
- gives every browser a random HttpOnly ``llpf_client`` cookie (access.py binds the token to it);
- lets a browser whose cookie has not given the token reach only the page itself, its static assets,
  /_stcore/health, /_stcore/host-config and the websocket (where the page shows only the token prompt);
- answers 404 to /_stcore/metrics, the agent API and the script health check for everyone;
- drops the websocket's developer messages (clear cache, debug disconnect/shutdown) from every client.
See docs/threat-model.md.
"""
from __future__ import annotations

from http.cookies import SimpleCookie

from access import ACCESS, COOKIE, new_client_id
from streamlit import config
from streamlit.proto.BackMsg_pb2 import BackMsg

OPEN = ("_stcore/health", "_stcore/host-config", "_stcore/stream")
NEVER = ("_stcore/metrics", "_stcore/agent/", "_stcore/script-health-check")
GUARDED = ("_stcore/", "media/", "component/", "app/static/")
DROPPED_MESSAGES = frozenset({"clear_cache", "debug_disconnect_websocket", "debug_shutdown_runtime"})


def _cookie(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            try:
                jar = SimpleCookie(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is no cookie
                return None
            return jar[COOKIE].value if COOKIE in jar else None
    return None


def _relative(path: str) -> str:
    base = (config.get_option("server.baseUrlPath") or "").strip("/")
    path = path.lstrip("/")
    return path[len(base):].lstrip("/") if base and path.startswith(base) else path


def refusal(path: str, client: str | None) -> int | None:
    """The HTTP status that refuses a request for ``path`` (relative to the base URL), or None to pass it."""
    if path.startswith(NEVER):
        return 404
    if path.startswith(GUARDED) and not path.startswith(OPEN) and not ACCESS.granted(client):
        return 403
    return None


class Gate:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        client = _cookie(scope)
        status = refusal(_relative(scope["path"]), client)
        if status is not None:
            return await self._refuse(scope, send, status)
        if scope["type"] == "websocket":
            return await self.app(scope, _without_developer_messages(receive), send)
        if client is None:
            send = _setting_cookie(send, secure=scope.get("scheme") == "https")
        return await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope, send, status: int) -> None:
        if scope["type"] == "websocket":  # a close before the accept is an HTTP 403 to the client
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b"Not found\n" if status == 404 else b"Give the access token on the page first\n"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _setting_cookie(send, secure: bool):
    # Lax: sent when a link from elsewhere opens the page (Strict would replace the cookie and its grant), never
    # with another site's requests or websockets. Secure behind TLS (uvicorn takes the scheme from a proxy on
    # loopback: X-Forwarded-Proto).
    value = f"{COOKIE}={new_client_id()}; Path=/; HttpOnly; SameSite=Lax{'; Secure' if secure else ''}".encode()

    async def wrapped(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", value)]}
        await send(message)
    return wrapped


def _without_developer_messages(receive):
    async def wrapped():
        while True:
            message = await receive()
            data = message.get("bytes") if message["type"] == "websocket.receive" else None
            if not data:
                return message
            back = BackMsg()
            try:
                back.ParseFromString(data)
            except Exception:  # Streamlit itself refuses a malformed frame
                return message
            if back.WhichOneof("type") not in DROPPED_MESSAGES:
                return message
    return wrapped

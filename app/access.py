"""Who gave the access token ($LLPF_ACCESS_TOKEN), and how fast wrong tokens may come. No Streamlit here.

One ``Access`` per server process, a module global rather than ``st.cache_resource``: a visitor's
"Clear cache" must not forget who authenticated nor reset the guessing limit. A browser is known by the
``llpf_client`` cookie that the served frame (serve.py's gate) gives it: a random, HttpOnly value that
never appears in a URL, so a session id leaked through an upload URL or a proxy's log does not carry the
authentication with it. See docs/threat-model.md.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict, deque

COOKIE = "llpf_client"
# Wrong tokens allowed per client address and server-wide within WINDOW_S; beyond that, no token is even
# compared until the window has room again. A 32-hex-digit token stays unguessable either way; the limits
# protect a short one an operator typed for a class.
PER_ADDRESS, GLOBAL, WINDOW_S = 5, 30, 60.0
MAX_CLIENTS = 10_000  # authenticated browsers remembered (oldest forgotten first)

log = logging.getLogger("llpf.access")


def token() -> str:
    return os.environ.get("LLPF_ACCESS_TOKEN", "")


def new_client_id() -> str:
    return secrets.token_urlsafe(32)


class Access:
    """Authenticated browser cookies and a sliding window of wrong guesses, behind one lock."""

    def __init__(self, per_address: int = PER_ADDRESS, global_limit: int = GLOBAL, window_s: float = WINDOW_S):
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, None] = OrderedDict()
        self._failures: deque[tuple[float, str]] = deque()
        self.per_address, self.global_limit, self.window_s = per_address, global_limit, window_s
        self.cookie_required = False  # the served frame (serve.py) sets it: only a cookie can hold the grant
        self._warned = False

    def warn_unserved(self) -> None:
        """Say once in the log that a token without the gate protects the pages only (app/Home.py served)."""
        if not self.cookie_required and not self._warned:
            self._warned = True
            log.warning("LLPF_ACCESS_TOKEN is set but the server runs app/Home.py: uploads and session ids are not "
                        "gated; serve with `streamlit run app/serve.py` (docs/threat-model.md)")

    def granted(self, client: str | None) -> bool:
        """No token is set, or this browser cookie gave it."""
        if not token():
            return True
        with self._lock:
            return bool(client) and client in self._clients

    def wait_s(self, address: str) -> float:
        """Seconds until ``address`` may try a token again (0: now)."""
        with self._lock:
            return self._wait_s(address, time.monotonic())

    def _wait_s(self, address: str, now: float) -> float:
        while self._failures and self._failures[0][0] <= now - self.window_s:
            self._failures.popleft()
        mine = [t for t, a in self._failures if a == address]
        waits = [0.0]
        if len(mine) >= self.per_address:
            waits.append(mine[-self.per_address] + self.window_s - now)
        if len(self._failures) >= self.global_limit:
            waits.append(self._failures[-self.global_limit][0] + self.window_s - now)
        return max(waits)

    def attempt(self, given: str, address: str, client: str | None) -> bool:
        """Compare ``given`` with the token (constant time) unless ``address`` is over a limit; a right one
        remembers ``client``, a wrong one is counted and logged (the address, never what was typed)."""
        with self._lock:
            now = time.monotonic()
            if self._wait_s(address, now) > 0:
                log.warning("access token attempt from %s refused: too many wrong tokens", address)
                return False
            if hmac.compare_digest(given.encode(), token().encode()):
                if client:
                    self._clients[client] = None
                    self._clients.move_to_end(client)
                    while len(self._clients) > MAX_CLIENTS:
                        self._clients.popitem(last=False)
                return True
            self._failures.append((now, address))
            count = sum(1 for _, a in self._failures if a == address)
            log.warning("wrong access token from %s (%d from there, %d in all in the last %.0f s)",
                        address, count, len(self._failures), self.window_s)
            return False


ACCESS = Access()

"""The gate every HTTP request passes before a route: who may ask, what they may send, and the drain.

:class:`Gate` is an ASGI middleware. In order, it refuses:

1. a ``Host`` (or ``Origin``) outside the allow-list, when there is one (a server
   bound to a loopback address has one: DNS rebinding cannot reach it) — 400 / 403;
2. a request without a valid ``Authorization: Bearer KEY`` when the server has API
   keys (``/health`` is open; ``/metrics`` too with ``metrics_public``) — 401, keys
   compared in constant time and never written anywhere;
3. while the server drains, every ``/v1/`` request — 503 with ``Retry-After``;
4. a ``POST`` whose ``Content-Type`` is not JSON (a browser sends ``text/plain``
   across origins without asking first) — 415;
5. a body over ``max_body_bytes``: by its ``Content-Length`` before a byte is read,
   and a chunked one as soon as it passes the limit — 413; a body that stops
   arriving for ``read_timeout`` seconds — 408.

Every refusal is OpenAI's error body. The gate also counts the ``/v1/`` requests
in flight (:class:`Drain`), which a graceful shutdown waits for.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from graphrt.frontends.serving.protocol import RequestError

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = ("/health",)  # answered without an API key


def is_loopback(host: str) -> bool:
    """Whether a bind address (``127.0.0.1``, ``::1``, ``localhost``) only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class GateConfig:
    """What the gate lets through.

    Parameters
    ----------
    api_keys:
        Keys a client may present as ``Authorization: Bearer KEY`` (none: no key needed).
    metrics_public:
        Serve ``/metrics`` without a key.
    max_body_bytes:
        The largest request body.
    read_timeout:
        Seconds a request body may pause before the request is refused (408).
    allowed_hosts:
        Host names (without port) a ``Host`` or ``Origin`` header may name; ``None``: any.
    """

    api_keys: tuple[str, ...] = ()
    metrics_public: bool = False
    max_body_bytes: int = 2 * 2**20
    read_timeout: float = 15.0
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if any(not isinstance(k, str) or not k.strip() for k in self.api_keys):
            raise ValueError("api_keys: expected non-empty strings, found an empty key")
        if not isinstance(self.max_body_bytes, int) or self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes: expected an int >= 1, found {self.max_body_bytes!r}")
        if not self.read_timeout > 0:
            raise ValueError(f"read_timeout: expected seconds > 0, found {self.read_timeout!r}")

    def __repr__(self) -> str:  # never show the keys
        return (f"GateConfig(api_keys=<{len(self.api_keys)} keys>, metrics_public={self.metrics_public}, "
                f"max_body_bytes={self.max_body_bytes}, read_timeout={self.read_timeout}, "
                f"allowed_hosts={self.allowed_hosts})")


class Drain:
    """The server's drain state: whether it still admits requests, and the ``/v1/`` requests in flight."""

    def __init__(self, retry_after_s: int = 5) -> None:
        self.draining = False
        self.in_flight = 0
        self.retry_after_s = retry_after_s


class Gate:
    """ASGI middleware applying a :class:`GateConfig` (see the module's docstring).

    Parameters
    ----------
    app:
        The application behind the gate.
    config:
        What to let through.
    drain:
        The drain state it reads (refusing while draining) and counts requests in.
    on_refusal:
        Called with the status of every refusal (to count it).
    """

    def __init__(self, app: ASGIApp, config: GateConfig, drain: Drain,
                 on_refusal: Callable[[int], None] | None = None) -> None:
        self.app, self.config, self.drain, self.on_refusal = app, config, drain, on_refusal
        self._keys = [k.encode() for k in config.api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", ()):
            headers.setdefault(name.lower(), value)
        try:
            receive = self._admit(scope, headers, receive)
        except RequestError as error:
            await self._refuse(send, error)
            return
        if not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1

    def _admit(self, scope: Scope, headers: dict[bytes, bytes], receive: Receive) -> Receive:
        """Check the request's head; returns the ``receive`` its route reads the body through."""
        path, method = scope["path"], scope["method"]
        self._check_host(headers)
        if self._keys and path not in OPEN_PATHS and not (path == "/metrics" and self.config.metrics_public):
            self._check_key(headers)
        if self.drain.draining and path.startswith("/v1/"):
            raise RequestError(503, "the server is draining before it shuts down and admits no new request; "
                                    "retry on another server or later", kind="server_error", code="draining")
        if method != "POST":
            return receive
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            raise RequestError(415, f"Content-Type: expected application/json, found {_short(ctype) or 'none'}",
                               code="unsupported_media_type")
        limit = self.config.max_body_bytes
        if b"content-length" in headers:
            raw = headers[b"content-length"].decode("latin-1")
            if not raw.strip().isdigit():
                raise RequestError(400, f"Content-Length: expected a byte count, found {_short(raw)}")
            if int(raw) > limit:
                raise RequestError(413, f"request body: expected at most {limit} bytes (this server's "
                                        f"--max-body-bytes), found Content-Length {int(raw)}",
                                   code="request_too_large")
        return _bounded_receive(receive, limit, self.config.read_timeout)

    def _check_host(self, headers: dict[bytes, bytes]) -> None:
        allowed = self.config.allowed_hosts
        if allowed is None:
            return
        host = _host_name(headers.get(b"host", b"").decode("latin-1"))
        if host not in allowed:
            raise RequestError(400, f"Host: expected one of {', '.join(allowed)} (this server's allowed hosts), "
                                    f"found {_short(host) or 'none'}", code="invalid_host")
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1")
            if (urlsplit(text).hostname or "") not in allowed:
                raise RequestError(403, f"Origin: expected a page served from one of {', '.join(allowed)}, found "
                                        f"{_short(text)}", code="invalid_origin")

    def _check_key(self, headers: dict[bytes, bytes]) -> None:
        auth = headers.get(b"authorization", b"")
        scheme, _, given = auth.partition(b" ")
        given = given.strip() if scheme.lower() == b"bearer" else b""
        match = False
        for key in self._keys:  # every key compared, in constant time: no timing says which one nearly matched
            match |= hmac.compare_digest(given, key)
        if not match:
            found = "no Authorization header" if not auth else "a key this server does not accept" if given \
                else "an Authorization header that is not 'Bearer KEY'"
            raise RequestError(401, f"Authorization: expected 'Bearer KEY' with one of this server's API keys, "
                                    f"found {found}", kind="invalid_request_error", code="invalid_api_key")

    async def _refuse(self, send: Send, error: RequestError) -> None:
        if self.on_refusal is not None:
            self.on_refusal(error.status)
        body = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if error.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        if error.status == 503:
            headers.append((b"retry-after", str(self.drain.retry_after_s).encode()))
        if error.status in (408, 413):
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _bounded_receive(receive: Receive, limit: int, timeout: float) -> Receive:
    """``receive`` that raises ``RequestError`` 413 once the body passes ``limit`` bytes, and 408 when a
    piece of it does not come within ``timeout`` seconds (the route's error handler answers it)."""
    state = {"read": 0, "done": False}

    async def bounded() -> Message:
        if state["done"]:
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), timeout)
        except asyncio.TimeoutError:
            raise RequestError(408, f"request body: expected the rest of the body within {timeout:g} s (this "
                                    f"server's --read-timeout), found none", code="request_timeout") from None
        if message["type"] == "http.request":
            state["read"] += len(message.get("body", b""))
            if state["read"] > limit:
                raise RequestError(413, f"request body: expected at most {limit} bytes (this server's "
                                        f"--max-body-bytes), found more", code="request_too_large")
            state["done"] = not message.get("more_body", False)
        else:
            state["done"] = True
        return message

    return bounded


def _host_name(host: str) -> str:
    """``Host`` without its port (``[::1]:8000`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."

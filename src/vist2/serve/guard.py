"""What every request passes before a route sees it, so that no web page the user visits can
drive the local server: an `x-request-id` on every answer; a `Host` outside the allowed hosts
refused (DNS rebinding); CORS only for the origins named; POST bodies only as
application/json (a page's form or text/plain POST is refused); a Bearer API key on /v1.
Also `TimedH11Protocol`: a connection that does not finish its request headers in time is closed."""

from __future__ import annotations

import hmac
import json
import re
import uuid

from vist2.serve.protocol import ApiError

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def default_hosts(bound: str) -> list[str]:
    return sorted({bound, "localhost", "127.0.0.1", "[::1]", "::1"})


def _host_name(value: str) -> str:
    """The host of a Host header without its port ("[::1]:8000" -> "[::1]", "a:80" -> "a")."""
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """Pure ASGI middleware (it wraps the FastAPI app, CORS included when asked)."""

    def __init__(self, app, allowed_hosts: list[str], api_key: str | None, on_refused):
        self.app, self.api_key, self.on_refused = app, api_key, on_refused
        self.hosts = None if "*" in allowed_hosts else {h.lower() for h in allowed_hosts}
        if self.hosts is not None:
            self.hosts |= {f"[{h}]" for h in self.hosts if ":" in h and not h.startswith("[")}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        error = self.refusal(scope, headers)
        if error is not None:
            self.on_refused(scope, error.status)
            body = json.dumps(error.body()).encode()
            await send_with_id({"type": "http.response.start", "status": error.status,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()),
                                            *[(k.lower().encode(), v.encode()) for k, v in error.headers.items()]]})
            await send_with_id({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_with_id)

    def refusal(self, scope, headers: dict) -> ApiError | None:
        host = _host_name(headers.get("host", "").strip().lower())
        if self.hosts is not None and host not in self.hosts:
            return ApiError(f"the Host header {headers.get('host', '')!r} is not one this server answers to "
                            "(vist2 serve --allowed-hosts)", status=421, code="host_not_allowed")
        path, method = scope["path"], scope["method"]
        if self.api_key is not None and (path == "/v1" or path.startswith("/v1/")) and method != "OPTIONS":
            scheme, _, key = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
                return ApiError("a valid API key is needed: send it as 'Authorization: Bearer KEY'", status=401,
                                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if method == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return ApiError(f"the body must be sent as Content-Type: application/json, got {kind or 'none'!r}",
                                status=415, code="unsupported_media_type")
        return None


def timed_h11_protocol(seconds: float):
    """uvicorn's h11 protocol, closing a connection whose request headers do not arrive
    within `seconds` of its first byte (or of its opening); bodies are timed in the app."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_headers():
                self._arm()
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

    return TimedH11Protocol

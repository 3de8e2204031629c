"""ASGI middleware in front of the POST routes: a body's size and time limits, checked while it
arrives, and the count of requests in flight (what a drain after SIGTERM waits for).

A body whose `Content-Length` is over the limit is refused (413) before a byte of it is read; a
chunked body is cut off (413) once what arrived is over the limit; a body that has not arrived in
full within `timeout` seconds is dropped (408). Memory per request is therefore bounded by the
limit, whatever the client sends. Refusals use the route's own error format (`error_body`).
Handlers then read the body from memory, as if from the connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Callable, Optional, Tuple

# (status, message) -> the route's error body
ErrorBody = Callable[[int, str], dict]


class BodyGuard:
    """Args:
        app: the ASGI app.
        max_bytes: the largest body accepted.
        timeout: seconds a body may take to arrive in full.
        error_body: `error_body(path)` gives the route's `(status, message) -> body`.
        counter: an object whose `in_flight` attribute counts the requests between their first
            byte and their response's last (the server's `Api`).
    """

    def __init__(self, app, max_bytes: int, timeout: float, error_body: Callable[[str], ErrorBody], counter):
        self.app, self.max_bytes, self.timeout, self.error_body = app, max_bytes, timeout, error_body
        self.counter = counter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        self.counter.in_flight += 1
        try:
            refusal, body = await self._read(scope, receive)
            if refusal is None:
                await self.app(scope, _replay(body, receive), send)
            elif refusal[0]:  # 0: the client went away; nobody to answer
                await self._refuse(scope, send, *refusal)
        finally:
            self.counter.in_flight -= 1

    async def _read(self, scope, receive) -> Tuple[Optional[Tuple[int, str]], bytes]:
        """(None, body), or ((status, message), b"") when the body is refused."""
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return (400, f"Content-Length {length[:40].decode('latin-1')!r} is not a number of bytes"), b""
            if int(length) > self.max_bytes:
                return (413, f"the body has {int(length)} bytes; the limit is {self.max_bytes}"), b""
        parts, size, deadline = [], 0, time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return (408, f"the body did not arrive in full within {self.timeout:g} s "
                             f"({size} bytes arrived); send it at once"), b""
            if message["type"] == "http.disconnect":
                return (0, "the client went away"), b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return (413, f"the body is over the limit of {self.max_bytes} bytes; send a smaller one"), b""
            parts.append(chunk)
            if not message.get("more_body", False):
                return None, b"".join(parts)

    async def _refuse(self, scope, send, status: int, message: str) -> None:
        body = json.dumps(self.error_body(scope["path"])(status, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive):
    """A `receive` that gives `body` first, then what the connection sends (its disconnect)."""
    given = False

    async def again():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again

"""Who may POST: API keys (`Authorization: Bearer <key>`), the body types each route takes, and
a rate limit on feedback.

Keys come from a file (`--api-keys-file`) or an environment variable (`--api-keys-env`), one key
per line (a file) or per comma (a variable), each `ID:KEY` or just `KEY`:

    alice:sk-3f9c...        # the key's id is `alice`
    sk-77ab...              # the key's id is `key-<first 8 hex digits of its SHA-256>`

The id, never the key, goes on the request log line and on every stored completion and feedback.
A presented key is hashed and compared with every known key's hash in constant time, whatever
matches. With no keys, every request is anonymous (`tfx-gpt2 serve` then listens on a loopback
address only, unless told `--allow-anonymous`).

JSON routes take only `application/json` bodies (415 otherwise): a web page on another site can
POST `text/plain`, a form or `multipart/form-data` to a server on the user's machine without
the browser asking first, but not `application/json`, nor an `Authorization` header.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
import math
import os
import threading
import time
from collections import OrderedDict
from typing import Callable, FrozenSet, Optional, Tuple

# Where the request's key id is kept in the ASGI scope for the handlers.
KEY_ID = "tfx_gpt2.key_id"
ANONYMOUS = "anonymous"


class ApiKeyError(ValueError):
    """A key file or variable that cannot be read (the message names it and the fix)."""


def key_id(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclasses.dataclass(frozen=True)
class ApiKeys:
    """Known keys, as (SHA-256 of the key, id) pairs; the keys themselves are not kept."""

    entries: Tuple[Tuple[bytes, str], ...] = ()

    @classmethod
    def parse(cls, text: str, where: str, separator: str = "\n") -> "ApiKeys":
        entries, ids = [], set()
        for n, raw in enumerate(text.split(separator), 1):
            line = raw.split("#", 1)[0].strip() if separator == "\n" else raw.strip()
            if not line:
                continue
            kid, _, key = line.rpartition(":") if ":" in line else ("", "", line)
            kid, key = kid.strip() or key_id(key.strip()), key.strip()
            if len(key) < 16:
                raise ApiKeyError(f"{where}, entry {n}: a key of {len(key)} characters; use keys of at least 16 "
                                "random characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
            if kid == ANONYMOUS:
                raise ApiKeyError(f"{where}, entry {n}: the id {ANONYMOUS!r} means no key; give the key another id")
            if kid in ids:
                raise ApiKeyError(f"{where}, entry {n}: the id {kid!r} is given twice; give each key its own id")
            ids.add(kid)
            entries.append((_digest(key), kid))
        if not entries:
            raise ApiKeyError(f"{where} holds no key; write one key per line (`ID:KEY` or `KEY`)")
        return cls(tuple(entries))

    @classmethod
    def load(cls, path: str = "", env: str = "", environ=None) -> "ApiKeys":
        """The keys of the file `path` and of the variable named `env` (either may be empty)."""
        environ = os.environ if environ is None else environ
        found = ()
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    found += cls.parse(f.read(), f"--api-keys-file {path}").entries
            except OSError as e:
                raise ApiKeyError(f"--api-keys-file {path}: {e.strerror}; give a readable file of keys") from None
        if env:
            if not environ.get(env):
                raise ApiKeyError(f"--api-keys-env {env}: the variable is not set or empty; export it with the keys "
                                "(`ID:KEY,ID:KEY`)")
            found += cls.parse(environ[env], f"${env}", separator=",").entries
        return cls(found)

    @property
    def required(self) -> bool:
        return bool(self.entries)

    def identify(self, presented: str) -> Optional[str]:
        """The id of `presented`, or None; every known key is compared, in constant time."""
        digest, found = _digest(presented), None
        for known, kid in self.entries:
            if hmac.compare_digest(digest, known):
                found = kid
        return found


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The body types each POST route takes; anything else is refused with 415. The Open Inference
# Protocol's clients (tritonclient) send binary tensors with no Content-Type at all.
JSON = frozenset({"application/json"})


def accepted_types(path: str) -> Tuple[FrozenSet[str], bool]:
    """(media types accepted, whether a body without Content-Type is)."""
    if path == "/invocations":
        return frozenset({"application/json", "text/csv"}), False
    if path.startswith("/v2/"):
        return frozenset({"application/json", "application/octet-stream"}), True
    return JSON, False


class AccessGuard:
    """ASGI middleware in front of the POST routes: the key (401), then the body's type (415),
    before a byte of the body is read. Refusals use the route's error format (`error_body`)."""

    def __init__(self, app, keys: ApiKeys, error_body: Callable[[str], Callable[[int, str], dict]]):
        self.app, self.keys, self.error_body = app, keys, error_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        kid = ANONYMOUS
        if self.keys.required:
            scheme, _, presented = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            kid = self.keys.identify(presented.strip()) if scheme.lower() == "bearer" else None
            if kid is None:
                what = "a key this server does not know" if scheme.lower() == "bearer" else "no Bearer key"
                return await self._refuse(scope, send, 401, f"the request has {what}; send the header "
                                          "`Authorization: Bearer <your key>`", [(b"www-authenticate", b"Bearer")])
        kind = headers.get(b"content-type", b"").decode("latin-1").split(";", 1)[0].strip().lower()
        types, untyped = accepted_types(scope["path"])
        if (kind or not untyped) and kind not in types:
            return await self._refuse(scope, send, 415, f"Content-Type {kind or '(none)'!r} is not accepted here; "
                                      f"send the body as {' or '.join(sorted(types))} (curl: -H 'Content-Type: "
                                      "application/json')")
        scope[KEY_ID] = kid
        return await self.app(scope, receive, send)

    async def _refuse(self, scope, send, status: int, message: str, extra=()) -> None:
        body = json.dumps(self.error_body(scope["path"])(status, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *extra]})
        await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """A token bucket per client (key id, or address when anonymous): `per_minute` requests a
    minute on average, `burst` at once. `take(who)` is 0 when allowed, else the seconds to wait."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 10_000, clock=time.monotonic):
        if per_minute <= 0 or burst < 1:
            raise ValueError(f"the feedback rate limit: per_minute = {per_minute} and burst = {burst}; give a "
                             "positive rate and a burst of at least 1")
        self.rate, self.burst, self.clock, self.max_clients = per_minute / 60.0, burst, clock, max_clients
        self._buckets: "OrderedDict[str, Tuple[float, float]]" = OrderedDict()
        self._lock = threading.Lock()

    def take(self, who: str) -> float:
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.pop(who, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[who] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._buckets) > self.max_clients:  # the clients idle longest go first
                self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))


def client_of(scope) -> str:
    """Who a request counts against: its key id, else (anonymous) its address."""
    kid = scope.get(KEY_ID)
    if kid and kid != ANONYMOUS:
        return kid
    client = scope.get("client")
    return f"address {client[0]}" if client else ANONYMOUS

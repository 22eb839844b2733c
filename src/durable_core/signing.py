"""Request and response signatures (`X-Inngest-Signature: t=<unix s>&s=<hex>`).

`s = HMAC-SHA256(key, jcs(body) + str(t))`, where `key` is the signing key without its
`signkey-<env>-` prefix, used as ASCII. Verification accepts a fallback key (for rotation),
compares in constant time and rejects timestamps more than 5 minutes away from now.

Nothing is parsed before a signature matches: the signature is checked over the raw bytes
first (they are the canonical form whenever the sender sent canonical JSON, as our
orchestrator does). Only when that fails is the body canonicalized, as the `inngest` SDK does,
and only a body within the limits of `_bounded_json` (size, depth, numbers): one beyond them
cannot have been signed in canonical form by anyone, so it is refused unparsed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import urllib.parse
from collections.abc import Sequence

import rfc8785

from . import _bounded_json
from .errors import SignatureError

MAX_AGE_SECONDS = 300
_PREFIX = re.compile(r"^signkey-\w+-")


def strip_prefix(key: str) -> str:
    return _PREFIX.sub("", key, count=1)


def hashed_signing_key(key: str) -> str:
    """The bearer token for orchestrator calls: hex SHA-256 of the hex-decoded key."""
    raw = strip_prefix(key)
    try:
        decoded = bytes.fromhex(raw)
        if not decoded:
            raise ValueError("empty")
    except ValueError:
        raise SignatureError(
            "the signing key must be hex (optionally prefixed 'signkey-<env>-'); "
            "generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`"
        ) from None
    return hashlib.sha256(decoded).hexdigest()


def canonical(body: bytes) -> bytes:
    """The JCS (RFC 8785) form of a JSON body; an empty body stays empty. A body outside the
    limits of `_bounded_json` (an execution request's depth) is refused, not parsed."""
    if not body:
        return body
    try:
        value = _bounded_json.loads(body, max_depth=_bounded_json.EXECUTION_DEPTH)
        return bytes(rfc8785.dumps(value))
    except (ValueError, TypeError, rfc8785.CanonicalizationError) as err:
        raise SignatureError(f"cannot canonicalize the body for its signature: {err}") from None


def _mac(key: str, body: bytes, ts: int) -> str:
    mac = hmac.new(strip_prefix(key).encode(), body, hashlib.sha256)
    mac.update(str(ts).encode())
    return mac.hexdigest()


def sign(body: bytes, key: str, ts: int | None = None, *, canonicalize: bool = False) -> str:
    ts = int(time.time()) if ts is None else ts
    payload = canonical(body) if canonicalize else body
    return f"t={ts}&s={_mac(key, payload, ts)}"


def verify(
    body: bytes,
    header: str | None,
    keys: Sequence[str | None],
    *,
    now: float | None = None,
    max_age: int = MAX_AGE_SECONDS,
) -> str:
    """Check a request signature over `body` as sent, or else over its JCS form; return the
    key that matched."""
    candidates = [k for k in keys if k]
    if not candidates:
        raise SignatureError(
            "no signing key is configured, so signed requests cannot be checked: set "
            "DURABLE_SIGNING_KEY, or run in dev mode (DURABLE_DEV=1) on a trusted machine"
        )
    if not header:
        raise SignatureError(
            "missing X-Inngest-Signature header: production mode only accepts signed requests"
        )
    parts = urllib.parse.parse_qs(header)
    try:
        ts = int(parts["t"][0])
        sig = parts["s"][0]
    except (KeyError, IndexError, ValueError):
        raise SignatureError(
            "malformed X-Inngest-Signature header: expected t=<unix>&s=<hex>"
        ) from None
    current = time.time() if now is None else now
    away = current - ts if abs(ts) < 2**53 else None
    if away is None or abs(away) > max_age:
        distance = "far" if away is None else f"{int(away)} s"
        raise SignatureError(
            f"stale signature: its timestamp is {distance} away from now (limit {max_age} s); "
            "check the clocks, or the request was replayed"
        )
    given = sig.encode("utf-8", "replace")  # compare_digest refuses non-ASCII str
    for key in candidates:  # the raw bytes first: nothing is parsed for a matching signature
        if hmac.compare_digest(given, _mac(key, body, ts).encode()):
            return key
    mismatch = "signature does not match: the request was not signed with this app's key"
    try:
        payload = canonical(body)
    except SignatureError as err:
        raise SignatureError(f"{mismatch} ({err})") from None
    if payload != body:
        for key in candidates:
            if hmac.compare_digest(given, _mac(key, payload, ts).encode()):
                return key
    raise SignatureError(mismatch)

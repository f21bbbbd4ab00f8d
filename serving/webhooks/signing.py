"""Signatures of webhook bodies, Stripe style, and their verification by a receiver.

Each delivery carries ``X-Newsdesk-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256 keyed with the webhook's secret over ``f"{t}.".encode() + body`` (the raw body
bytes as received). The timestamp is signed too, so a receiver that refuses old timestamps
refuses replays of a captured request. :func:`verify_signature` depends on nothing but the
standard library: receivers may copy it as is.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Newsdesk-Signature"
EVENT_ID_HEADER = "X-Newsdesk-Event-Id"
DEFAULT_TOLERANCE_S = 300.0


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Newsdesk-Signature`` value of ``body`` signed now (or at ``timestamp``)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_digest(secret, t, body)}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (an ``X-Newsdesk-Signature`` value) signs ``body`` with ``secret``
    at a time within ``tolerance_s`` of ``now`` (default: the clock).

    ``body`` must be the raw bytes received, before any JSON parsing. Several ``v1=`` entries
    are accepted (any one matching is enough), so a sender may sign with two secrets while one
    is rotated. Comparison is constant-time.
    """
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False  # too old (a replay) or from too far in the future
    expected = _digest(secret, timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in signatures)

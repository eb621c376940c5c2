"""Payment confirmations from the payment provider: HMAC-SHA256 over the raw body, and a simulated provider.

A commuter's top-up is only a payment intent; money is credited when the provider confirms the
payment by calling the webhook. The provider proves it is the provider by a MAC under a secret the
two sides share (`Settings.payment_webhook_secret`), computed over the timestamp and the exact bytes
it sent, so no JSON re-encoding on either side can change what is verified. The timestamp bounds how
long a captured confirmation can be replayed; the idempotency key (checked in the database) makes a
replay inside that window credit nothing more.

`SimulatedProvider` stands in for the real provider in the demo and the tests: it signs confirmations
exactly as the verifier expects.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time

SIGNATURE_HEADER = "X-Payment-Signature"  # "v1=<64 hex>"
TIMESTAMP_HEADER = "X-Payment-Timestamp"  # Unix seconds, decimal
CURRENCY = "CNY"


class BadSignature(ValueError):
    """The confirmation is not provably from the provider (missing, stale, or wrong signature)."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header value: v1= and the hex HMAC-SHA256 of "<timestamp>." followed by the raw body."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    *,
    tolerance_s: float,
    now: float | None = None,
) -> None:
    """Raise BadSignature unless the signature matches and the timestamp is within `tolerance_s` of now.

    The comparison is constant-time (hmac.compare_digest) so response timing reveals nothing of the
    expected MAC."""
    if not timestamp_header or not signature_header:
        raise BadSignature("missing signature headers")
    if not timestamp_header.isdigit() or len(timestamp_header) > 12:
        raise BadSignature("malformed timestamp")
    timestamp = int(timestamp_header)
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise BadSignature("timestamp outside the tolerance window")
    expected = signature(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature_header.strip().encode("utf-8", "replace")):
        raise BadSignature("signature does not match")


class SimulatedProvider:
    """A payment provider for the demo and the tests: signs a confirmation for a payment intent."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def confirmation(
        self,
        reference: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        timestamp: int | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers to POST to /api/v1/payments/confirmations (a new key unless given)."""
        body = json.dumps(
            {
                "idempotency_key": idempotency_key or f"sim-{secrets.token_hex(12)}",
                "reference": reference,
                "amount": amount,
                "currency": CURRENCY,
                "status": "succeeded",
            }
        ).encode()
        timestamp = int(time.time()) if timestamp is None else timestamp
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(self.secret, timestamp, body),
        }
        return body, headers

"""Message authentication for the MQTT contract: one definition both ends import (docs/security.md).

Backend -> gate: an Ed25519 signature by the backend's key over the message's canonical bytes, with the
signing key's id, in the payload's `key_id` and `sig` fields. Gates hold only public keys (the current
and the next, for rotation), so a gate that is taken apart yields nothing that can sign.

Gate -> backend: a 128-bit keyed BLAKE2s MAC in the payload's `mac` field, under the gate's own key,
diversified from the backend's uplink master key by the gate id (as a SAM diversifies card keys). A
gate holds only its own key: a stolen one forges that gate's taps, no other gate's.

Canonical bytes: the model's own compact JSON with the authentication fields left out, behind the
model's name (so a signature over one kind of message is never valid as another). The receiver
re-serialises what it parsed, so what is verified is exactly what is used, whatever spacing or case
the wire had. Why not a fixed binary envelope: measured, the re-serialisation costs about 7 µs a tap
against about 10 µs to parse it, and the wire stays the JSON every tool already reads.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from functools import lru_cache
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .messages import Payload

MAC_FIELDS = frozenset({"mac"})
SIG_FIELDS = frozenset({"key_id", "sig"})
MAC_BYTES = 16  # a forger's chance per try is 2^-128
_PERSON = b"fg-upl1"  # BLAKE2s personalisation of the key diversification (domain separation)

#: Deterministic development secrets, printed here on purpose: refused outside development by
#: backend/config.py and gate/config.py, exactly like fare_core's DEVELOPMENT_SAM_KEY.
DEVELOPMENT_SIGNING_SEED = hashlib.sha256(b"faregate development downlink signing seed").digest()
DEVELOPMENT_UPLINK_MASTER_KEY = hashlib.sha256(b"faregate development uplink master key").digest()

P = TypeVar("P", bound=Payload)


class AuthError(ValueError):
    """A message is unsigned, signed by a key the receiver does not hold, or its MAC/signature is wrong."""


def tagged(name: str, body: bytes) -> bytes:
    """The one construction of what is signed or MACed: a model's name, a zero byte, then `body` (its
    compact JSON without the authentication fields). Every signer and verifier goes through here."""
    return name.encode() + b"\0" + body


def canonical(message: Payload, leave_out: frozenset[str]) -> bytes:
    """What is signed or MACed: the model's name, a zero byte, its compact JSON without `leave_out`."""
    return tagged(type(message).__name__, message.model_dump_json(exclude=set(leave_out)).encode())


def mac_tag(data: bytes, key: bytes) -> str:
    """The MAC (hex) of `tagged` bytes under one gate key."""
    return hashlib.blake2s(data, key=key, digest_size=MAC_BYTES).hexdigest()


def tag_valid(data: bytes, received: str, keys: Iterable[bytes]) -> bool:
    """True when `received` is the MAC of the `tagged` bytes `data` under one of `keys`."""
    return any(hmac.compare_digest(mac_tag(data, key), received) for key in keys)


# --- uplink: per-gate MAC ------------------------------------------------------------------------------


def derive_gate_key(master_key: bytes, gate_id: str) -> bytes:
    """The gate's own 32-byte MAC key: keyed BLAKE2s of its id under the master key (SAM-style)."""
    if len(master_key) != 32:
        raise ValueError("the uplink master key is 32 bytes")
    return hashlib.blake2s(gate_id.encode(), key=master_key, person=_PERSON).digest()


def compute_mac(message: Payload, key: bytes) -> str:
    return mac_tag(canonical(message, MAC_FIELDS), key)


def with_mac(message: P, key: bytes) -> P:
    """A copy of `message` carrying its MAC under `key`."""
    return message.model_copy(update={"mac": compute_mac(message, key)})


def encode_with_mac(message: Payload, key: bytes) -> bytes:
    """The wire bytes of `message` with its MAC, serialised once: `mac` is the model's last field, so
    the wire is the canonical JSON with `,"mac":"…"` put before its closing brace (the tap path)."""
    return mac_json(type(message).__name__, message.model_dump_json(exclude=set(MAC_FIELDS)).encode(), key)


def mac_json(name: str, body: bytes, key: bytes) -> bytes:
    """`body` (canonical JSON of a `name` model without its mac) with its MAC, for code that builds the
    JSON itself (faregate/simgate.py's cheap benchmark taps)."""
    return body[:-1] + b',"mac":"' + mac_tag(tagged(name, body), key).encode() + b'"}'


def mac_valid(message: Payload, keys: Iterable[bytes]) -> bool:
    """True when the message's MAC verifies under one of `keys` (current and, during a re-key, next)."""
    received = getattr(message, "mac", None)
    if not received:
        return False
    return tag_valid(canonical(message, MAC_FIELDS), received, keys)


class GateKeys:
    """The backend's view: every gate's key derived on demand from the master key(s), cached."""

    def __init__(self, master_keys: Iterable[bytes]) -> None:
        self.master_keys = tuple(master_keys)
        if not self.master_keys:
            raise ValueError("at least one uplink master key")
        self._derive = lru_cache(maxsize=65_536)(self._keys)

    def _keys(self, gate_id: str) -> tuple[bytes, ...]:
        return tuple(derive_gate_key(master, gate_id) for master in self.master_keys)

    def keys_for(self, gate_id: str) -> tuple[bytes, ...]:
        return self._derive(gate_id)

    def valid(self, message: Payload, gate_id: str) -> bool:
        return mac_valid(message, self.keys_for(gate_id))


# --- downlink: Ed25519 signatures ----------------------------------------------------------------------


def key_id(public_key: bytes) -> str:
    """A public key's id on the wire: the first 8 bytes of its SHA-256, hex (16 digits)."""
    return hashlib.sha256(public_key).digest()[:8].hex()


class Signer:
    """The backend's signing key (a 32-byte Ed25519 seed)."""

    def __init__(self, seed: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(self.public_key)

    def sign(self, message: P) -> P:
        """A copy of `message` signed: `key_id` names the key, `sig` is the signature (hex)."""
        unsigned = message.model_copy(update={"key_id": self.key_id, "sig": None})
        signature = self._key.sign(canonical(unsigned, frozenset({"sig"})))
        return unsigned.model_copy(update={"sig": signature.hex()})


class Verifier:
    """A gate's trusted backend keys, by key id: the current one and, during a rotation, the next."""

    def __init__(self, public_keys: Iterable[bytes]) -> None:
        self.keys = {key_id(raw): Ed25519PublicKey.from_public_bytes(raw) for raw in public_keys}
        if not self.keys:
            raise ValueError("at least one backend public key")

    def check(self, message: Payload) -> None:
        """Return if `message` is signed by a trusted key; AuthError says why not otherwise."""
        kid, sig = getattr(message, "key_id", None), getattr(message, "sig", None)
        if not kid or not sig:
            raise AuthError("unsigned")
        key = self.keys.get(kid)
        if key is None:
            raise AuthError(f"signed by unknown or retired key {kid}")
        try:
            key.verify(bytes.fromhex(sig), canonical(message, frozenset({"sig"})))
        except (InvalidSignature, ValueError) as exc:
            raise AuthError(f"bad signature (key {kid})") from exc


def public_key_of(seed: bytes) -> bytes:
    """The raw 32-byte public key of a signing seed (what gates are given)."""
    return Signer(seed).public_key


def backend_public_keys(keys_hex: Iterable[str], *, production: bool) -> list[bytes]:
    """The backend's public keys a gate or a station relay trusts, from hex: one, or two during a key
    rotation, 32 bytes each. In production the development key is refused: its seed is public, so
    anyone could sign with it. ValueError says what is wrong."""
    keys = list(keys_hex)
    if not 1 <= len(keys) <= 2:
        raise ValueError("one backend key, or two during a rotation")
    try:
        raw = [bytes.fromhex(key) for key in keys]
    except ValueError:
        raise ValueError("64 hex digits each (an Ed25519 public key)") from None
    if any(len(key) != 32 for key in raw):
        raise ValueError("64 hex digits each (an Ed25519 public key)")
    if production and DEVELOPMENT_PUBLIC_KEY in raw:
        raise ValueError("the development signing key is refused in production")
    return raw


DEVELOPMENT_PUBLIC_KEY = public_key_of(DEVELOPMENT_SIGNING_SEED)

"""API bodies and responses, layered Base / Create / Update / Public as in full-stack-fastapi-template."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .security import Role

CardIdStr = Annotated[
    str, Field(pattern=r"^[0-9a-fA-F]{16}$", examples=["0123456789abcdef"]), AfterValidator(str.lower)
]
Reason = Annotated[str, Field(min_length=1, max_length=200)]
FenAmount = Annotated[int, Field(ge=1, le=100_000_00)]
#: Path and query integers, bounded to what the database columns hold.
VersionPath = Annotated[int, Path(ge=0, le=2**32 - 1)]
IdPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
StationQuery = Annotated[int | None, Query(ge=0, le=0xFFFF)]


class Body(BaseModel):
    """Base of every request body: unknown fields refused."""

    model_config = ConfigDict(extra="forbid")


class Public(BaseModel):
    """Base of every response built from a table row."""

    model_config = ConfigDict(from_attributes=True)


# --- auth and accounts ----------------------------------------------------------------------------------


class LoginRequest(Body):
    """Credentials of an operator account."""

    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=200)]


class TokenPublic(BaseModel):
    """A bearer token and when it expires."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime
    role: Role


class OperatorBase(Body):
    """What an operator account is."""

    username: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
    role: Role


class OperatorCreate(OperatorBase):
    """A new account with its first password."""

    password: Annotated[str, Field(min_length=12, max_length=200)]


class OperatorUpdate(Body):
    """Change the role, (de)activate, or reset the password."""

    role: Role | None = None
    active: bool | None = None
    password: Annotated[str, Field(min_length=12, max_length=200)] | None = None


class OperatorPublic(Public):
    """An account as shown (never the password hash)."""

    id: int
    username: str
    role: Role
    active: bool


# --- gates -----------------------------------------------------------------------------------------------


class GatePublic(Public):
    """A gate: its progress, last status and the versions it uses."""

    gate_id: str
    station_id: int
    gate_no: int
    state: str
    last_seen: datetime | None
    mode: int | None
    commanded_mode: int | None
    command_id: int
    committed_seq: int
    highest_seq: int
    fare_table_version: int | None
    denylist_version: int | None
    actions_version: int | None
    journal_pending: int | None
    software: str | None
    tap_to_open_p50_ms: float | None  # the gate's own figures over its latest taps
    tap_to_open_p99_ms: float | None
    host_p99_ms: float | None  # the gate's own processing time, p99
    tailgating_alarms: int | None  # since the gate started
    forced_door_alarms: int | None


class GateModeCommand(Body):
    """Put a gate in a mode: 0 normal, 1 free exit (emergency), 2 closed, 3 maintenance."""

    mode: Annotated[int, Field(ge=0, le=3)]
    reason: Annotated[str, Field(max_length=200)] = ""


# --- taps, trips, dead letters ----------------------------------------------------------------------------


class TapPublic(Public):
    """A stored tap (wallet bytes omitted) and what reconciliation found."""

    tap_id: str
    gate_id: str
    station_id: int
    gate_no: int
    seq: int
    card_id: str
    time: datetime
    direction: int
    mode: int
    allowed: bool
    reason: int
    flags: int
    fare: int
    balance_before: int
    balance_after: int
    counter_before: int
    counter_after: int
    fare_table_version: int
    denylist_version: int
    action_id: int | None
    topup_applied: int
    latency_us: int
    received_at: datetime
    reconciled: str | None
    trip_id: int | None


class TripPublic(Public):
    """An entry paired with its exit."""

    id: int
    card_id: str
    entry_tap_id: str | None
    exit_tap_id: str | None
    entry_station: int | None
    exit_station: int | None
    entry_time: datetime | None
    exit_time: datetime | None
    fare: int
    state: str


class DeadLetterPublic(Public):
    """A payload that was not a valid tap, and why."""

    id: int
    received_at: datetime
    topic: str
    payload_hex: str
    reason: str


# --- phones -----------------------------------------------------------------------------------------------


class PhonePublic(Public):
    """A phone's status and the head of its ledger."""

    card_id: str
    status: str
    status_reason: str
    balance: int
    counter: int
    last_tap_id: str | None
    last_tap_time: datetime | None
    replaced_by: str | None


class PostingPublic(Public):
    """One leg of a ledger entry: signed fen on one account."""

    account: str
    amount: int


class LedgerEntryPublic(BaseModel):
    """One movement of money that concerns a phone (docs/ledger.md), with its legs; `amount` is what it
    did to this phone's wallet account (0 for a payment or grant still on its way to the wallet), and
    `detail` names the handset (gate, seq, wallet counters; "fork" for a cloned wallet's taps)."""

    id: int
    kind: str
    card_id: str | None
    tap_id: str | None
    action_id: int | None
    time: datetime
    counter_before: int | None
    counter_after: int | None
    detail: str
    amount: int
    balance_after: int  # the wallet account after this entry, in counter order
    legs: list[PostingPublic]


class BlockRequest(Body):
    """Why a phone is blocked or unblocked (kept in the deny-list history and the audit log)."""

    reason: Reason


class CommuterTokenPublic(BaseModel):
    """A self-service token for one phone, shown once."""

    card_id: str
    token: str


# --- deny-list --------------------------------------------------------------------------------------------


class DenyListVersionPublic(Public):
    """One deny-list version and the delta from its base."""

    version: int
    base_version: int
    added: str
    removed: str
    checksum: str
    size: int
    created_at: datetime
    reason: str


class DenyListSnapshotPublic(BaseModel):
    """The whole deny-list at its current version."""

    version: int
    checksum: str
    card_ids: list[str]


# --- fare tables ------------------------------------------------------------------------------------------


class FareTableCreate(Body):
    """Fare rules (TOML or JSON text) to compile, validate and publish."""

    rules: Annotated[str, Field(min_length=1, max_length=2_000_000)]
    format: Literal["toml", "json"] = "toml"
    activate_at: datetime | None = None  # default: now


class FareTableRollback(Body):
    """Publish an older version's rules again, as a new version."""

    activate_at: datetime | None = None


class FareTablePublic(Public):
    """A compiled fare table version."""

    version: int
    name: str
    checksum: str
    created_at: datetime
    activate_at: datetime
    state: str
    rolled_back_from: int | None
    created_by: str


# --- actions ----------------------------------------------------------------------------------------------


ActionKind = Literal["topup", "refund", "adjustment"]


class ActionCreate(Body):
    """An over-the-air top-up and/or unblock, applied at the phone's next tap. `kind` says where the
    money comes from in the ledger: a top-up paid at a service counter (payments:counter), or a refund
    or adjustment the operator grants (adjustments)."""

    card_id: CardIdStr
    kind: ActionKind = "topup"
    topup: Annotated[int, Field(ge=0, le=100_000_00)] = 0
    unblock: bool = False
    reason: Annotated[str, Field(max_length=200)] = ""


class ActionPublic(Public):
    """An action and its state (pending -> applied, or cancelled)."""

    id: int
    card_id: str
    kind: str
    topup: int
    unblock: bool
    state: str
    created_at: datetime
    applied_at: datetime | None
    applied_tap_id: str | None
    created_by: str
    reason: str


# --- alarms, audit, reports -------------------------------------------------------------------------------


class AlarmPublic(Public):
    """Something an operator must look at."""

    id: int
    created_at: datetime
    kind: str
    severity: str
    gate_id: str | None
    card_id: str | None
    tap_id: str | None
    detail: str
    acknowledged_by: str | None


class AuditPublic(Public):
    """One state-changing call."""

    id: int
    time: datetime
    actor: str
    action: str
    target: str
    detail: str


class CountRow(BaseModel):
    """One row of a report: the grouping keys and the figures."""

    keys: dict[str, str | int]
    taps: int = 0
    fen: int = 0


class LedgerReport(BaseModel):
    """Where the money is: revenue (landed fares only) beside what is not yet revenue or not yet in a
    wallet, as totals per kind of account and per account."""

    revenue: int  # landed fares, every network and day
    suspense: int  # fares and top-ups of writes whose landing is not yet known
    undelivered: int  # paid or granted, not yet written to a wallet
    overdrawn: int  # riders' debts: the sum of the wallets below zero (overdraft taps not yet topped up)
    totals: dict[str, int]  # per kind of account (wallet, issuance, payments, adjustments, ...)
    accounts: dict[str, int]  # per account, wallets left out (GET /phones/{card}/ledger has them)


class AuditReport(BaseModel):
    """The ledger's invariants (backend/audit.py): every count is 0 when all is well."""

    unbalanced_entries: int  # entries whose postings do not sum to zero
    invalid_trips: int  # two open trips for a card, an exit before its entry, complete without exit
    head_mismatches: int  # phones whose shown balance differs from their wallet account
    entries_without_postings: int
    suspense: int  # fen in suspense: 0 once every gate has reported
    totals: dict[str, int]  # per kind of account; they sum to zero


class LatencyRow(BaseModel):
    """Decision latency of one gate, microseconds."""

    gate_id: str
    taps: int
    mean_us: int
    max_us: int


# --- commuter ---------------------------------------------------------------------------------------------


class TopUpRequest(Body):
    """Fen to add to one's own phone: a payment intent, credited once the provider confirms payment."""

    amount: FenAmount


class PaymentIntentPublic(Public):
    """A top-up waiting for payment, and what the payment provider needs to collect it."""

    reference: str  # the merchant reference the provider quotes in its confirmation
    card_id: str
    amount: int
    currency: str = "CNY"
    state: str  # pending / confirmed
    created_at: datetime
    confirmed_at: datetime | None
    action_id: int | None  # the over-the-air top-up created on confirmation
    notify_path: str = "/api/v1/payments/confirmations"  # where the provider posts its confirmation


class PaymentConfirmation(Body):
    """The provider's confirmation of a payment (the raw body is what its signature covers)."""

    idempotency_key: Annotated[str, Field(min_length=8, max_length=100, pattern=r"^[!-~]+$")]
    reference: Annotated[str, Field(pattern=r"^pi_[0-9a-f]{32}$")]
    amount: FenAmount
    currency: Literal["CNY"]
    status: Literal["succeeded"]


class PaymentConfirmationResult(BaseModel):
    """What the confirmation did: `credited` is true only for the call that credited the money."""

    reference: str
    state: str
    credited: bool
    action_id: int | None


class ReportLostRequest(Body):
    """Block the lost phone and move its balance to a new, unused phone (see docs/security.md)."""

    new_card_id: CardIdStr

"""The database tables (SQLAlchemy 2 declarative). Money is integer fen; card ids are 16 hex digits.

Card ids are u64, which PostgreSQL's BIGINT (signed) cannot hold, so they are stored as their
canonical 16-digit lower-case hex text, which also sorts and compares like the number.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite too (which stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


CardIdCol = String(16)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class TapRow(Base):
    """One tap exactly as the gate reported it, plus what the backend derived from it.

    The table's key is (tap_id, time): on PostgreSQL the table is partitioned by service day (monthly
    ranges of `time` cut at the service day's start, backend/ingest/partitions.py, migration 0008), and
    a partitioned table's unique keys must hold its partition key. A tap's time is under its gate's MAC,
    so a tap sent again has the same time and the key stores it once; one tap id with another time is
    a conflict the ingest refuses (store.py). The ORM still identifies a tap by its tap_id alone."""

    __tablename__ = "taps"
    tap_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    gate_id: Mapped[str] = mapped_column(String(12))
    station_id: Mapped[int] = mapped_column(Integer)
    gate_no: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(BigInteger)
    card_id: Mapped[str] = mapped_column(CardIdCol)
    time: Mapped[datetime] = mapped_column(UtcDateTime(), primary_key=True)  # the partition key
    direction: Mapped[int] = mapped_column(Integer)
    mode: Mapped[int] = mapped_column(Integer)
    allowed: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[int] = mapped_column(Integer)
    flags: Mapped[int] = mapped_column(BigInteger)
    fare: Mapped[int] = mapped_column(BigInteger)
    balance_before: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    counter_before: Mapped[int] = mapped_column(BigInteger)
    counter_after: Mapped[int] = mapped_column(BigInteger)
    wallet_before: Mapped[bytes] = mapped_column(LargeBinary)
    fare_table_version: Mapped[int] = mapped_column(BigInteger)
    denylist_version: Mapped[int] = mapped_column(BigInteger)
    min_counter: Mapped[int] = mapped_column(BigInteger)
    action_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    topup_applied: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_us: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # reconciliation: NULL = not yet checked, "ok", or a comma list of findings
    reconciled: Mapped[str | None] = mapped_column(String(200), nullable=True)
    trip_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        Index("ix_taps_gate_seq", "gate_id", "seq"),  # each gate's progress (store.advance_gates)
        Index("ix_taps_card_time", "card_id", "time"),
        Index("ix_taps_time", "time"),  # the reports' windows (and partition pruning does the rest)
        Index("ix_taps_reconciled", "reconciled"),
        Index("ix_taps_card_counter", "card_id", "counter_before"),  # reconciliation's clone check
    )
    __mapper_args__ = {"primary_key": [tap_id]}  # noqa: RUF012  # the ORM: session.get(TapRow, tap_id)


class DeadLetterRow(Base):
    """A payload that could not be stored as a tap, with the reason; kept for an operator to inspect.

    Only a bounded prefix of the payload is kept (a gate can send megabytes), with its size and hash."""

    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    topic: Mapped[str] = mapped_column(String(300))
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # at most the first DEAD_LETTER_PREFIX bytes
    reason: Mapped[str] = mapped_column(Text)
    gate_id: Mapped[str | None] = mapped_column(String(12), nullable=True)  # from the topic, if any
    payload_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # the whole payload's
    payload_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # hex, whole payload

    __table_args__ = (Index("ix_dead_letters_gate_received", "gate_id", "received_at"),)


class GateRow(Base):
    """A gate as the backend knows it: progress of its tap sequence, last status, mode command."""

    __tablename__ = "gates"
    gate_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    station_id: Mapped[int] = mapped_column(Integer)
    gate_no: Mapped[int] = mapped_column(Integer)
    committed_seq: Mapped[int] = mapped_column(BigInteger, default=0)  # no gap at or below
    highest_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(12), default="unknown")
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    mode: Mapped[int | None] = mapped_column(Integer, nullable=True)  # reported by the gate
    commanded_mode: Mapped[int | None] = mapped_column(Integer, nullable=True)
    command_id: Mapped[int] = mapped_column(BigInteger, default=0)
    fare_table_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    denylist_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    actions_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    journal_pending: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    software: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the gate's own health figures from its latest status (kept when its last will arrives)
    tap_to_open_p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    tap_to_open_p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    host_p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)  # the gate's own processing
    tailgating_alarms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # since gate start
    forced_door_alarms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # since gate start


class PhoneRow(Base):
    """A phone (RF-SIM wallet) and the head of its ledger chain."""

    __tablename__ = "phones"
    card_id: Mapped[str] = mapped_column(CardIdCol, primary_key=True)
    status: Mapped[str] = mapped_column(String(12), default="active")  # active / blocked / lost
    status_reason: Mapped[str] = mapped_column(String(200), default="")
    balance: Mapped[int] = mapped_column(BigInteger, default=0)  # balance after the last counted tap
    counter: Mapped[int] = mapped_column(BigInteger, default=0)  # counter after the last counted tap
    last_tap_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    last_tap_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    open_trip_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    commuter_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    replaced_by: Mapped[str | None] = mapped_column(CardIdCol, nullable=True)


class LedgerEntryRow(Base):
    """One movement of money, double entry: its postings (PostingRow) sum to zero. docs/ledger.md
    lists the kinds and the accounts each moves money between.

    An entry that belongs to a wallet's chain carries the card and the counters of the wallet write
    it stands for, so a wallet's history reads in counter order whatever order the taps arrived in.
    (kind, tap_id) and (kind, action_id) are unique: a tap or an action is posted once per kind
    however often it is processed."""

    __tablename__ = "ledger_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(24))
    card_id: Mapped[str | None] = mapped_column(CardIdCol, nullable=True, index=True)
    tap_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    action_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime())  # when the money moved (the tap's time)
    counter_before: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    counter_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    detail: Mapped[str] = mapped_column(String(200), default="")
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime())  # when the back office posted it

    __table_args__ = (
        # named here: the convention names a constraint by its first column, and both start with kind
        UniqueConstraint("kind", "tap_id", name="uq_ledger_entries_kind_tap_id"),
        UniqueConstraint("kind", "action_id", name="uq_ledger_entries_kind_action_id"),
        Index("ix_ledger_entries_card_counter", "card_id", "counter_after"),
    )


class PostingRow(Base):
    """One leg of a ledger entry: signed fen on one account (`wallet:<card>`, `revenue:<network>:<day>`,
    `suspense`, `undelivered`, `payments:<provider>`, `adjustments`, `issuance`)."""

    __tablename__ = "postings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("ledger_entries.id", ondelete="CASCADE"), index=True)
    account: Mapped[str] = mapped_column(String(80), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)


class TripRow(Base):
    """An entry paired with its exit (or a boarding on a flat-fare network)."""

    __tablename__ = "trips"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    card_id: Mapped[str] = mapped_column(CardIdCol, index=True)
    entry_tap_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    exit_tap_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    entry_station: Mapped[int | None] = mapped_column(Integer, nullable=True)
    exit_station: Mapped[int | None] = mapped_column(Integer, nullable=True)
    entry_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    exit_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    fare: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16))  # open / complete / missing_exit / no_entry


class AlarmRow(Base):
    """Something an operator must look at: a reconciliation finding, a sequence gap, a gate offline."""

    __tablename__ = "alarms"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(8), default="warning")
    gate_id: Mapped[str | None] = mapped_column(String(12), nullable=True)
    card_id: Mapped[str | None] = mapped_column(CardIdCol, nullable=True)
    tap_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    acknowledged_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class DenyListVersionRow(Base):
    """One published deny-list version: the delta from its base and the checksum of the result."""

    __tablename__ = "denylist_versions"
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    base_version: Mapped[int] = mapped_column(BigInteger)
    added: Mapped[str] = mapped_column(Text, default="")  # comma-separated card ids
    removed: Mapped[str] = mapped_column(Text, default="")
    checksum: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    reason: Mapped[str] = mapped_column(String(200), default="")


class DenyListEntryRow(Base):
    """A card's deny-list membership history: denied from added_version up to (not incl.) removed_version."""

    __tablename__ = "denylist_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    card_id: Mapped[str] = mapped_column(CardIdCol, index=True)
    # indexed: a returning gate's catch-up reads the rows changed after its version (backend/catchup.py)
    added_version: Mapped[int] = mapped_column(BigInteger, index=True)
    removed_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    reason: Mapped[str] = mapped_column(String(200), default="")


class FareTableRow(Base):
    """A compiled fare table version: its source rules, artefact bytes, and publication state."""

    __tablename__ = "fare_tables"
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200), default="")
    rules: Mapped[str] = mapped_column(Text)
    artefact: Mapped[bytes] = mapped_column(LargeBinary)
    checksum: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    activate_at: Mapped[datetime] = mapped_column(UtcDateTime())
    state: Mapped[str] = mapped_column(String(16), default="published")  # published / superseded
    rolled_back_from: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_by: Mapped[str] = mapped_column(String(64), default="")


class ActionRow(Base):
    """An over-the-air action for a phone, pending until a gate reports it applied."""

    __tablename__ = "actions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    card_id: Mapped[str] = mapped_column(CardIdCol, index=True)
    kind: Mapped[str] = mapped_column(String(12), default="topup")  # topup / transfer / refund / adjustment
    topup: Mapped[int] = mapped_column(BigInteger, default=0)
    unblock: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(12), default="pending")  # pending / applied / cancelled
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    applied_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    applied_tap_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(String(200), default="")


class CounterRow(Base):
    """Named monotonic counters (action-list version, command ids) kept in the database."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class OperatorRow(Base):
    """An operator account: viewer, operator or admin."""

    __tablename__ = "operators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(12))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class TokenRow(Base):
    """A bearer token (stored as its SHA-256) with its expiry."""

    __tablename__ = "tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())


class LoginAttemptRow(Base):
    """One login attempt, kept for the rate limit's window: in the database, so every API process
    behind a load balancer counts the same attempts."""

    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200))  # "client address|username"
    at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (Index("ix_login_attempts_key_at", "key", "at"),)


class AuditRow(Base):
    """Every state-changing API call: who, what, on what, when."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(80))
    target: Mapped[str] = mapped_column(String(200), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class PaymentIntentRow(Base):
    """A commuter's top-up request: pending until the payment provider's signed confirmation credits it
    (once: the state moves pending -> confirmed in one conditional update, and the confirmation's
    idempotency key is unique)."""

    __tablename__ = "payment_intents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    reference: Mapped[str] = mapped_column(String(40), unique=True)  # the provider echoes it back
    card_id: Mapped[str] = mapped_column(CardIdCol)
    amount: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(12), default="pending")  # pending / confirmed
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    confirmed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(100), nullable=True, unique=True)
    action_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # the top-up it created

    __table_args__ = (Index("ix_payment_intents_card_created", "card_id", "created_at"),)

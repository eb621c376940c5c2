"""taps keyed by (tap_id, time); on PostgreSQL partitioned by service day (monthly ranges of time)

A city keeps years of taps: on PostgreSQL the table becomes a declarative RANGE partitioned table on
`time`, one partition per month of service days plus a default one (backend/ingest/partitions.py). A
partitioned table's unique keys must contain the partition key, so the key is (tap_id, time) on both
databases (SQLite keeps a plain table with the same key); (gate_id, seq) becomes a plain index, since
tap_id = gate_id:seq already makes it unique. The rows are copied into the new table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 14:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy import Connection, text

from backend.config import Settings
from backend.ingest import partitions
from backend.ledger import ServiceDay

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_taps_gate_seq": "gate_id, seq",
    "ix_taps_card_time": "card_id, time",
    "ix_taps_time": "time",
    "ix_taps_reconciled": "reconciled",
    "ix_taps_card_counter": "card_id, counter_before",
}
OLD_INDEXES = {name: columns for name, columns in INDEXES.items() if name != "ix_taps_gate_seq"}


def _service_day() -> ServiceDay:
    settings = context.config.attributes.get("settings")
    if not isinstance(settings, Settings):
        settings = Settings()
    return settings.service_day


def _indexes(bind: Connection, indexes: dict[str, str]) -> None:
    for name, columns in indexes.items():
        bind.execute(text(f"CREATE INDEX {name} ON taps ({columns})"))


def _rekeyed(bind: Connection, key: tuple[str, ...]) -> sa.Table:
    """SQLite: the taps table as it stands, with `key` as its primary key (batch mode rebuilds it)."""
    old = sa.Table("taps", sa.MetaData(), autoload_with=bind)
    new = sa.Table(
        "taps", sa.MetaData(),
        *(sa.Column(c.name, c.type, nullable=c.nullable and c.name not in key, primary_key=c.name in key)
          for c in old.columns),
        *(sa.UniqueConstraint(*u.columns.keys(), name=u.name) for u in old.constraints
          if isinstance(u, sa.UniqueConstraint)),
    )
    new.primary_key.name = "pk_taps"
    for index in old.indexes:
        sa.Index(index.name, *(new.c[c.name] for c in index.columns), unique=bool(index.unique))
    return new


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        keyed = _rekeyed(bind, ("tap_id", "time"))
        with op.batch_alter_table("taps", recreate="always", copy_from=keyed) as batch:
            batch.drop_constraint("uq_taps_gate_id", type_="unique")
            batch.create_index("ix_taps_gate_seq", ["gate_id", "seq"])
        return
    bind.execute(text("CREATE TABLE taps_partitioned (LIKE taps INCLUDING DEFAULTS) "
                      "PARTITION BY RANGE (time)"))
    partitions.ensure(bind, _service_day(), parent="taps_partitioned")  # the default, this month, ahead
    bind.execute(text("INSERT INTO taps_partitioned SELECT * FROM taps"))
    # and the months of the data copied: ensure() moves them out of the default partition
    partitions.ensure(bind, _service_day(), parent="taps_partitioned")
    bind.execute(text("DROP TABLE taps"))
    bind.execute(text("ALTER TABLE taps_partitioned RENAME TO taps"))
    bind.execute(text("ALTER TABLE taps ADD CONSTRAINT pk_taps PRIMARY KEY (tap_id, time)"))
    _indexes(bind, INDEXES)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        with op.batch_alter_table("taps", recreate="always", copy_from=_rekeyed(bind, ("tap_id",))) as batch:
            batch.drop_index("ix_taps_gate_seq")
            batch.create_unique_constraint("uq_taps_gate_id", ["gate_id", "seq"])
        return
    bind.execute(text("CREATE TABLE taps_plain (LIKE taps INCLUDING DEFAULTS)"))
    # one row per tap id (0008 refuses a second time for an id, so there is at most one)
    bind.execute(text("INSERT INTO taps_plain SELECT DISTINCT ON (tap_id) * FROM taps ORDER BY tap_id, time"))
    bind.execute(text("DROP TABLE taps"))  # and its partitions
    bind.execute(text("ALTER TABLE taps_plain RENAME TO taps"))
    bind.execute(text("ALTER TABLE taps ADD CONSTRAINT pk_taps PRIMARY KEY (tap_id)"))
    bind.execute(text("ALTER TABLE taps ADD CONSTRAINT uq_taps_gate_id UNIQUE (gate_id, seq)"))
    _indexes(bind, OLD_INDEXES)

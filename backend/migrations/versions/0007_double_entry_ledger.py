"""double-entry ledger (ledger_entries + postings) in place of the one-row-per-tap ledger; actions.kind

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 12:30:00

Issue 15, docs/ledger.md. The old `ledger` rows and everything derived from the taps (trips, each
tap's reconciliation and trip, each phone's chain head) were made under the old rules (time order, an
unconfirmed write never posted), so they are not converted: the raw taps stay, their `reconciled` goes
back to NULL, trips are deleted and the phones' heads reset, and the processor derives everything
again under the new rules when it next runs. What the taps do not hold is posted here: where the money
of each live action came from (a lost phone's transfer, a provider's payment, an operator's top-up).
The downgrade brings back an empty old `ledger` and leaves the taps to be processed again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOST = "balance moved from lost phone "


def upgrade() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("card_id", sa.String(length=16), nullable=True),
        sa.Column("tap_id", sa.String(length=40), nullable=True),
        sa.Column("action_id", sa.BigInteger(), nullable=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("counter_before", sa.BigInteger(), nullable=True),
        sa.Column("counter_after", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.String(length=200), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        sa.UniqueConstraint("kind", "tap_id", name="uq_ledger_entries_kind_tap_id"),
        sa.UniqueConstraint("kind", "action_id", name="uq_ledger_entries_kind_action_id"),
    )
    op.create_index("ix_ledger_entries_card_id", "ledger_entries", ["card_id"])
    op.create_index("ix_ledger_entries_card_counter", "ledger_entries", ["card_id", "counter_after"])
    op.create_table(
        "postings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entry_id", sa.Integer(), nullable=False),
        sa.Column("account", sa.String(length=80), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["entry_id"], ["ledger_entries.id"], ondelete="CASCADE",
                                name=op.f("fk_postings_entry_id_ledger_entries")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_postings")),
    )
    op.create_index("ix_postings_entry_id", "postings", ["entry_id"])
    op.create_index("ix_postings_account", "postings", ["account"])
    with op.batch_alter_table("actions") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=12), nullable=False, server_default="topup"))
    op.execute(f"UPDATE actions SET kind = 'transfer' WHERE reason LIKE '{LOST}%'")
    op.drop_index("ix_ledger_card_id", table_name="ledger")
    op.drop_table("ledger")
    # derived state, derived again by the processor under the new rules
    op.execute("DELETE FROM trips")
    op.execute("UPDATE taps SET reconciled = NULL, trip_id = NULL")
    op.execute("UPDATE phones SET balance = 0, counter = 0, last_tap_id = NULL, last_tap_time = NULL,"
               " open_trip_id = NULL")
    _post_action_sources()


def _post_action_sources() -> None:
    """Each live action's source entry, as the API now posts it when the action is created."""
    bind = op.get_bind()
    actions = sa.table("actions", sa.column("id"), sa.column("card_id"), sa.column("kind"),
                       sa.column("topup"), sa.column("state"),
                       sa.column("created_at", sa.DateTime(timezone=True)), sa.column("reason"))
    intents = sa.table("payment_intents", sa.column("action_id"), sa.column("reference"))
    entries = sa.table("ledger_entries", sa.column("id"), sa.column("kind"), sa.column("card_id"),
                       sa.column("action_id"), sa.column("time", sa.DateTime(timezone=True)),
                       sa.column("detail"), sa.column("recorded_at", sa.DateTime(timezone=True)))
    postings = sa.table("postings", sa.column("entry_id"), sa.column("account"), sa.column("amount"))
    paid = dict(bind.execute(sa.select(intents.c.action_id, intents.c.reference)
                             .where(intents.c.action_id.is_not(None))).all())
    rows = bind.execute(sa.select(actions).where(actions.c.topup > 0, actions.c.state != "cancelled")
                        .order_by(actions.c.id)).all()
    now = datetime.now(UTC)
    for row in rows:
        if row.kind == "transfer":
            old = str(row.reason)[len(LOST):len(LOST) + 16]
            kind, card, source, detail = "transfer_out", old, f"wallet:{old}", f"to {row.card_id}"
        elif row.id in paid:
            kind, card, source = "payment", row.card_id, "payments:provider"
            detail = f"payment {paid[row.id]}"
        else:
            kind, card, source, detail = "payment", row.card_id, "payments:counter", "operator top-up"
        entry_id = bind.execute(
            sa.insert(entries).values(kind=kind, card_id=card, action_id=row.id, time=row.created_at,
                                      detail=f"{detail} (posted by migration 0007)",
                                      recorded_at=now)
            .returning(entries.c.id)
        ).scalar_one()
        bind.execute(sa.insert(postings), [
            {"entry_id": entry_id, "account": source, "amount": -int(row.topup)},
            {"entry_id": entry_id, "account": "undelivered", "amount": int(row.topup)},
        ])


def downgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("card_id", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("tap_id", sa.String(length=40), nullable=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_before", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("counter_before", sa.BigInteger(), nullable=True),
        sa.Column("counter_after", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger")),
        sa.UniqueConstraint("tap_id", name=op.f("uq_ledger_tap_id")),
    )
    op.create_index("ix_ledger_card_id", "ledger", ["card_id"])
    with op.batch_alter_table("actions") as batch:
        batch.drop_column("kind")
    op.drop_index("ix_postings_account", table_name="postings")
    op.drop_index("ix_postings_entry_id", table_name="postings")
    op.drop_table("postings")
    op.drop_index("ix_ledger_entries_card_counter", table_name="ledger_entries")
    op.drop_index("ix_ledger_entries_card_id", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    # the old processor derives its ledger and trips again
    op.execute("DELETE FROM trips")
    op.execute("UPDATE taps SET reconciled = NULL, trip_id = NULL")
    op.execute("UPDATE phones SET balance = 0, counter = 0, last_tap_id = NULL, last_tap_time = NULL,"
               " open_trip_id = NULL")

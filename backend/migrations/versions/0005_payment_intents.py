"""payment intents: a commuter top-up is credited only on the provider's signed confirmation

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payment_intents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reference", sa.String(length=40), nullable=False),
        sa.Column("card_id", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("idempotency_key", sa.String(length=100), nullable=True),
        sa.Column("action_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_intents")),
        sa.UniqueConstraint("reference", name=op.f("uq_payment_intents_reference")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_payment_intents_idempotency_key")),
    )
    op.create_index("ix_payment_intents_card_created", "payment_intents", ["card_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_payment_intents_card_created", table_name="payment_intents")
    op.drop_table("payment_intents")

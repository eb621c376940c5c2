"""dead letters keep a bounded prefix of the payload, its full size, its SHA-256 and the sending gate

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 12:00:00

A hostile gate could otherwise fill the table with 10 MB payloads; the hash still tells whether two
dead letters were the same payload, the size how big it was, and the gate column feeds the per-gate
dead-letter rate alarm. Old rows get their size (length of what was stored, which was everything).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("gate_id", sa.String(length=12), nullable=True))
    op.add_column("dead_letters", sa.Column("payload_size", sa.BigInteger(), nullable=True))
    op.add_column("dead_letters", sa.Column("payload_sha256", sa.String(length=64), nullable=True))
    op.create_index("ix_dead_letters_gate_received", "dead_letters", ["gate_id", "received_at"])
    op.execute("UPDATE dead_letters SET payload_size = length(payload)")


def downgrade() -> None:
    op.drop_index("ix_dead_letters_gate_received", table_name="dead_letters")
    with op.batch_alter_table("dead_letters") as batch:  # SQLite drops columns by copying the table
        batch.drop_column("payload_sha256")
        batch.drop_column("payload_size")
        batch.drop_column("gate_id")

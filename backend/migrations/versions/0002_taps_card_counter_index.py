"""index taps by (card_id, counter_before) for the clone check

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:25:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_taps_card_counter", "taps", ["card_id", "counter_before"])


def downgrade() -> None:
    op.drop_index("ix_taps_card_counter", table_name="taps")

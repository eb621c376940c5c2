"""gates keep their own health figures (tap-to-open p50/p99, own processing p99, door alarm counts)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 17:25:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS: list[tuple[str, type[sa.Float[float]] | type[sa.BigInteger]]] = [
    ("tap_to_open_p50_ms", sa.Float),
    ("tap_to_open_p99_ms", sa.Float),
    ("host_p99_ms", sa.Float),
    ("tailgating_alarms", sa.BigInteger),
    ("forced_door_alarms", sa.BigInteger),
]


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column("gates", sa.Column(name, kind(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gates") as batch:  # SQLite drops columns by copying the table
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)

"""deny-list history indexed by version: a gate's catch-up reads the rows changed after its version

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 15:20:00

backend/catchup.py answers a returning gate with the net delta from the version it holds, reading the
membership rows added or removed after it. Without these indexes each answer scans the whole history
(10 million phones: about a second each, up to 8 answers a window).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_denylist_entries_added_version", "denylist_entries", ["added_version"])
    op.create_index("ix_denylist_entries_removed_version", "denylist_entries", ["removed_version"])


def downgrade() -> None:
    op.drop_index("ix_denylist_entries_removed_version", table_name="denylist_entries")
    op.drop_index("ix_denylist_entries_added_version", table_name="denylist_entries")

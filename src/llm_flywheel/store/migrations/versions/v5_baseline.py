"""Baseline: the whole schema as of legacy SQLite schema v5 (datasets ... teacher batches).

Revision ID: v5_baseline
Revises:
Create Date: 2026-11-26

Legacy SQLite files (``PRAGMA user_version`` 1..5) are brought to v5 by the old SQL migrations and then stamped
with this revision; new stores (SQLite or PostgreSQL) are created from the Core tables.  Later schema changes are
new revisions after this one -- never edit this file.
"""
from alembic import op

from llm_flywheel.store.tables import metadata

revision = "v5_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    metadata.create_all(bind=op.get_bind())


def downgrade() -> None:
    raise RuntimeError("the baseline is not downgraded: delete the workspace (or drop its schema) instead")

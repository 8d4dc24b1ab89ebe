"""serving spend: an index for the serving spend cap, and teacher_answers.bought_by for answers serving bought.

Revision ID: v11_serving_spend
Revises: v10_evidence_horizons
Create Date: 2026-11-27

Why: serving's teacher spend cap (``pipeline/serve_budget.py``) sums what one teacher was paid in a rolling window
before each call it makes; without the index on served_teacher_answers(model, prompt_version, created_at) that is a
scan of every answer serving ever bought.  Labelling now stores the answer serving bought for an item's content as
its first pass (``pipeline/served_answers.py``); ``bought_by = 'serve'`` marks those rows, so the ledger -- what a
labelling run or a wheel stage paid -- does not count money serving spent earlier.  NULL: bought by labelling.
"""
from alembic import op
import sqlalchemy as sa

revision = "v11_serving_spend"
down_revision = "v10_evidence_horizons"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("served_teacher_answers_time", "served_teacher_answers", ["model", "prompt_version", "created_at"])
    op.add_column("teacher_answers", sa.Column("bought_by", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("teacher_answers", "bought_by")
    op.drop_index("served_teacher_answers_time", table_name="served_teacher_answers")

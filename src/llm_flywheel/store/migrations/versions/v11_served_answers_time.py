"""served_answers_time: an index on served_teacher_answers(model, prompt_version, created_at).

Revision ID: v11_served_answers_time
Revises: v10_evidence_horizons
Create Date: 2026-11-27

Why: serving's teacher spend cap (``pipeline/serve_budget.py``) sums what one teacher was paid in a rolling window
before each call it makes; without this index that is a scan of every answer serving ever bought.
"""
from alembic import op

revision = "v11_served_answers_time"
down_revision = "v10_evidence_horizons"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("served_teacher_answers_time", "served_teacher_answers", ["model", "prompt_version", "created_at"])


def downgrade() -> None:
    op.drop_index("served_teacher_answers_time", table_name="served_teacher_answers")

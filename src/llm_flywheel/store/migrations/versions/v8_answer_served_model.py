"""teacher_answers.served_model: the model the provider says answered (the response's ``model`` field).

Revision ID: v8_answer_served_model
Revises: v7_teacher_model_files
Create Date: 2026-11-26

Why: answers are cached under the model *name* the user asked for, and a provider's alias moves: ``gpt-4o`` is
served by one dated snapshot, then another.  Labels bought before and after the move are two models' labels under
one name.  Each answer now keeps the name the response gave, so a run can say when the answers it uses came from
more than one model (``pipeline/labeling.note_served_models``), and a label's provenance is on record.  Older
answers: NULL.
"""
from alembic import op
import sqlalchemy as sa

revision = "v8_answer_served_model"
down_revision = "v7_teacher_model_files"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("teacher_answers", sa.Column("served_model", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("teacher_answers", "served_model")

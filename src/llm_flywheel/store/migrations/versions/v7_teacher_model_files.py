"""teacher_model_files: which model file a local server said it serves under each teacher model name.

Revision ID: v7_teacher_model_files
Revises: v6_served_teacher_claims
Create Date: 2026-11-26

Why: teacher answers are cached by model *name*, and llama.cpp serves whatever GGUF it was started with under any
name.  A user who restarts ``llama-server`` with another model and keeps the teacher spec would silently get the old
model's answers back.  The first run under a name records the file the server reported (``/props`` ``model_path``,
its file name); a later run that finds another file under the same name stops before any call
(``pipeline/served_model.py``).
"""
from alembic import op
import sqlalchemy as sa

revision = "v7_teacher_model_files"
down_revision = "v6_served_teacher_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "teacher_model_files",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("model_file", sa.Text, nullable=False),
        sa.Column("base_url", sa.Text, nullable=False),
        sa.Column("seen_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("teacher_model_files")

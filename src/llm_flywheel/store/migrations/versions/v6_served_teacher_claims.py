"""served_teacher_claims: which serving process is buying the teacher's answer for new content right now.

Revision ID: v6_served_teacher_claims
Revises: v5_baseline
Create Date: 2026-11-26

Why: Ray Serve replicas (``flywheel serve --replicas N``) share one store and its content-hash cache of teacher
answers, but two replicas that get the same new content at the same moment both miss that cache.  The first to
insert a claim here pays; the others wait for the stored answer (``store/serving.py``).  A claim lives only while its
call runs (refreshed meanwhile, deleted after), so the table stays tiny.
"""
from alembic import op
import sqlalchemy as sa

revision = "v6_served_teacher_claims"
down_revision = "v5_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "served_teacher_claims",
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("prompt_version", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("claimed_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("content_hash", "model", "prompt_version"),
    )


def downgrade() -> None:
    op.drop_table("served_teacher_claims")

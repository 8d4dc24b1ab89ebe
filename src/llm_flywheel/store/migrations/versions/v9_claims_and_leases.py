"""teacher_call_claims: which labelling run is buying one teacher call (content, teacher, prompt, pass) right now;
leases: which process runs something only one may run at a time (the wheel on a dataset).

Revision ID: v9_claims_and_leases
Revises: v8_answer_served_model
Create Date: 2026-11-27

Why: two labelling runs over the same items at once -- `flywheel label` started twice, the wheel beside a notebook,
two machines on one PostgreSQL store -- each built its list of missing calls before the other stored anything, so
both paid for every call (measured: 2 runs over 600 tickets made 1,562 calls for 781 answers).  The run that inserts
a claim here calls; the other waits for the stored answer (``store/claims.py``, ``pipeline/label_claims.py``).  A
claim lives only while its call runs (refreshed meanwhile, deleted after), so the table stays tiny.

Two wheels on one dataset at once -- a cron job that overlaps the last one, two people -- used to take each other's
unfinished run for a killed one and "resume" it side by side: both trained, calibrated and promoted every round.  A
lease row per dataset now lets one turn it and tells the other who does (``pipeline/liveness.py``).
"""
from alembic import op
import sqlalchemy as sa

revision = "v9_claims_and_leases"
down_revision = "v8_answer_served_model"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "teacher_call_claims",
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("prompt_version", sa.Text, nullable=False),
        sa.Column("pass_index", sa.Integer, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("claimed_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("content_hash", "model", "prompt_version", "pass_index"),
    )
    op.create_index("ix_teacher_call_claims_owner", "teacher_call_claims", ["owner"])
    op.create_table(
        "leases",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("claimed_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_teacher_call_claims_owner", table_name="teacher_call_claims")
    op.drop_table("teacher_call_claims")

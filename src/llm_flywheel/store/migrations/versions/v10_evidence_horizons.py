"""evidence_horizons: the answer id before which a labelling run's adaptive-pass evidence was stored.

Revision ID: v10_evidence_horizons
Revises: v9_claims_and_leases
Create Date: 2026-11-27

Why: adaptive passes reuse as evidence the items earlier runs asked every pass, and must decide the same way when
a run is resumed or repeated (otherwise a re-run could buy later passes the first attempt skipped).  The cut-off
used to be the first answer stored on the run's own items, so a run over items an earlier run had answered
(`flywheel label --limit 1000` after `--limit 500`) saw no evidence at all and bought a new calibration sample.
Each run (its dataset, teacher, prompt, passes and items) now records the answer id it started from, once; its
resumes and re-runs read it back (``store/answers.py``, ``pipeline/label_adaptive.py``).
"""
from alembic import op
import sqlalchemy as sa

revision = "v10_evidence_horizons"
down_revision = "v9_claims_and_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evidence_horizons",
        sa.Column("run_key", sa.Text, nullable=False),
        sa.Column("horizon", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("run_key"),
    )


def downgrade() -> None:
    op.drop_table("evidence_horizons")

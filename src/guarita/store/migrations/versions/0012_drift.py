"""drift: sampled embeddings per agent, baselines and evaluations; request records say how
long the answer was, whether it refused and how confident the model was

Revision ID: 0012
Revises: 0010 (the integrator chains it after the rollouts' 0011)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_RECORD_COLUMNS = (
    ("answer_chars", sa.Integer()),
    ("refusal", sa.Boolean()),
    ("confidence", sa.Float()),
)


def upgrade() -> None:
    op.create_table(
        "drift_samples",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("prompt_version", sa.Integer(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("embedder", sa.String(100), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
    )
    op.create_index(
        "ix_drift_samples_agent_kind_time", "drift_samples", ["agent", "kind", "created_at"]
    )
    op.create_table(
        "drift_baselines",
        sa.Column("agent", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(10), primary_key=True),
        sa.Column("starts_at", _TIME, nullable=False),
        sa.Column("ends_at", _TIME, nullable=False),
        sa.Column("set_at", _TIME, nullable=False),
        sa.Column("set_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "drift_results",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("level", sa.String(20), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
    )
    op.create_index("ix_drift_results_agent_time", "drift_results", ["agent", "kind", "created_at"])
    with op.batch_alter_table("requests") as batch:
        for name, type_ in _RECORD_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for name, _type in reversed(_RECORD_COLUMNS):
            batch.drop_column(name)
    op.drop_index("ix_drift_results_agent_time", "drift_results")
    op.drop_table("drift_results")
    op.drop_table("drift_baselines")
    op.drop_index("ix_drift_samples_agent_kind_time", "drift_samples")
    op.drop_table("drift_samples")

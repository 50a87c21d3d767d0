"""rollouts: canary and shadow rollouts (state moved by compare-and-swap on ``version``),
their decisions, the per-request samples of each arm and the shadow's mirrored pairs

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("agent", sa.String(200), nullable=False),
        # the agent while the rollout is in effect, else NULL: unique, so two concurrent
        # starts for one agent cannot both succeed (NULLs never collide)
        sa.Column("active_agent", sa.String(200), nullable=True),
        sa.Column("change_type", sa.String(100), nullable=False),
        sa.Column("strategy", sa.String(40), nullable=False),
        sa.Column("candidate_prompt", sa.String(300), nullable=True),
        sa.Column("candidate_model", sa.String(200), nullable=True),
        sa.Column("stable_prompt", sa.String(300), nullable=True),
        sa.Column("stable_model", sa.String(200), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(30), nullable=False),
        sa.Column("stage_started_at", _TIME, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("last_decision", sa.JSON(), nullable=True),
        sa.UniqueConstraint("active_agent", name="uq_rollouts_active_agent"),
    )
    op.create_index("ix_rollouts_agent", "rollouts", ["agent"])
    op.create_table(
        "rollout_decisions",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column(
            "rollout_id",
            sa.String(32),
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(30), nullable=False),
        sa.Column("state", sa.String(30), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
    )
    op.create_index("ix_rollout_decisions_rollout", "rollout_decisions", ["rollout_id", "id"])
    op.create_table(
        "rollout_samples",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("sample_id", sa.String(32), nullable=False),
        sa.Column("rollout_id", sa.String(32), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(20), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("relevance", sa.Float(), nullable=True),
        sa.Column("consistency", sa.Float(), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.UniqueConstraint("sample_id", name="uq_rollout_samples_sample_id"),
    )
    op.create_index("ix_rollout_samples_stage", "rollout_samples", ["rollout_id", "stage", "id"])
    op.create_table(
        "shadow_pairs",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("pair_id", sa.String(32), nullable=False),
        sa.Column("rollout_id", sa.String(32), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("live_ok", sa.Boolean(), nullable=False),
        sa.Column("candidate_ok", sa.Boolean(), nullable=False),
        sa.Column("candidate_error", sa.String(60), nullable=True),
        sa.Column("similarity", sa.Float(), nullable=True),
        sa.Column("self_similarity", sa.Float(), nullable=True),
        sa.Column("live_latency_ms", sa.Float(), nullable=False),
        sa.Column("candidate_latency_ms", sa.Float(), nullable=False),
        sa.Column("live_tokens", sa.Integer(), nullable=False),
        sa.Column("candidate_tokens", sa.Integer(), nullable=False),
        sa.Column("candidate_cost_usd", sa.Float(), nullable=False),
        sa.Column("live_quality", sa.Float(), nullable=True),
        sa.Column("candidate_quality", sa.Float(), nullable=True),
        sa.UniqueConstraint("pair_id", name="uq_shadow_pairs_pair_id"),
    )
    op.create_index("ix_shadow_pairs_rollout", "shadow_pairs", ["rollout_id", "id"])


def downgrade() -> None:
    op.drop_table("shadow_pairs")
    op.drop_table("rollout_samples")
    op.drop_table("rollout_decisions")
    op.drop_table("rollouts")

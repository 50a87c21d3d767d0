"""slo_states: each agent's SLO budget state (the deploy freeze), changed by compare-and-swap;
an index of records by agent and time for the SLO counts

Revision ID: 0013
Revises: 0010 (re-chained after the rollouts' 0011 when merged)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slo_states",
        sa.Column("agent", sa.String(200), primary_key=True),
        sa.Column("slo", sa.String(20), primary_key=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("consumed", sa.Float(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_requests_agent_created_at", "requests", ["agent", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_requests_agent_created_at", table_name="requests")
    op.drop_table("slo_states")

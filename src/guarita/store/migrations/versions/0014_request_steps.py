"""request_steps: each chat call's reasoning, tool calls and tool results (PII-masked)

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "request_steps",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("step_id", sa.String(48), nullable=False, unique=True),
        sa.Column("record_id", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("call_id", sa.String(100), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_request_steps_record_id", "request_steps", ["record_id"])
    op.create_index("ix_request_steps_request_id", "request_steps", ["request_id"])
    op.create_index("ix_request_steps_created_at", "request_steps", ["created_at"])


def downgrade() -> None:
    for name in ("created_at", "request_id", "record_id"):
        op.drop_index(f"ix_request_steps_{name}", "request_steps")
    op.drop_table("request_steps")

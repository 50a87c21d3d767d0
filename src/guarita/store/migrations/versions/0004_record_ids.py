"""request records get a unique record id (idempotent writes); request ids up to 128
characters; tasks count deliveries apart from ended attempts

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("record_id", sa.String(length=32), nullable=True))
        batch.alter_column(
            "request_id", existing_type=sa.String(length=64), type_=sa.String(length=128)
        )
        batch.create_unique_constraint("uq_requests_record_id", ["record_id"])
    with op.batch_alter_table("tasks") as batch:
        batch.alter_column(
            "request_id", existing_type=sa.String(length=64), type_=sa.String(length=128)
        )
        batch.add_column(sa.Column("deliveries", sa.Integer(), nullable=False, server_default="0"))
    # tasks written before this revision counted every claim as an attempt
    op.execute("UPDATE tasks SET deliveries = attempts")


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("deliveries")
        batch.alter_column(
            "request_id", existing_type=sa.String(length=128), type_=sa.String(length=64)
        )
    with op.batch_alter_table("requests") as batch:
        batch.drop_constraint("uq_requests_record_id", type_="unique")
        batch.alter_column(
            "request_id", existing_type=sa.String(length=128), type_=sa.String(length=64)
        )
        batch.drop_column("record_id")

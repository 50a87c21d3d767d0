"""request records say which model was asked for, the answer's quality, what was held
against budgets, and what routing, economy mode and the cache did

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("requested_model", sa.String(200), nullable=True))
        batch.add_column(sa.Column("quality", sa.Float(), nullable=True))
        batch.add_column(sa.Column("reserved_usd", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("route", sa.String(20), nullable=True))
        batch.add_column(sa.Column("complexity", sa.Float(), nullable=True))
        batch.add_column(sa.Column("economy", sa.String(200), nullable=True))
        batch.add_column(sa.Column("cache", sa.String(20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for column in ("cache", "economy", "complexity", "route", "reserved_usd", "quality",
                       "requested_model"):  # fmt: skip
            batch.drop_column(column)

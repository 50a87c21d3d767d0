"""request records say which model, deployment and fallback level answered

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("served_by", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("deployment", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("fallback_level", sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("fallback_level")
        batch.drop_column("deployment")
        batch.drop_column("served_by")

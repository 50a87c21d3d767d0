"""api keys may carry their own limits over their tier's, and say when they last changed;
request records say how many prompt tokens compression saved

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("limits", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("requests") as batch:
        batch.add_column(
            sa.Column("tokens_saved", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("tokens_saved")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("limits")

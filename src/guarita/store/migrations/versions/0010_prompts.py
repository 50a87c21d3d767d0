"""prompts: the prompt registry (prompts, their immutable versions, labels moved by
compare-and-swap); request records say which prompt version, rollout variant and scores

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_RECORD_COLUMNS = (
    ("prompt_name", sa.String(200)),
    ("prompt_version", sa.Integer()),
    ("prompt_hash", sa.String(64)),
    ("variant", sa.String(20)),
    ("rollout_id", sa.String(64)),
    ("scores", sa.JSON()),
    ("consistency", sa.Float()),
)


def upgrade() -> None:
    op.create_table(
        "prompts",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("created_at", _TIME, nullable=False),
    )
    op.create_table(
        "prompt_versions",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column(
            "name",
            sa.String(200),
            sa.ForeignKey("prompts.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("template", sa.JSON(), nullable=False),
        sa.Column("variables", sa.JSON(), nullable=False),
        sa.Column("model_config", sa.JSON(), nullable=False),
        sa.Column("author", sa.String(200), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_prompt_versions_name_version"),
    )
    op.create_table(
        "prompt_labels",
        sa.Column(
            "name",
            sa.String(200),
            sa.ForeignKey("prompts.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("label", sa.String(100), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
    )
    with op.batch_alter_table("requests") as batch:
        for name, type_ in _RECORD_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for name, _type in reversed(_RECORD_COLUMNS):
            batch.drop_column(name)
    op.drop_table("prompt_labels")
    op.drop_table("prompt_versions")
    op.drop_table("prompts")

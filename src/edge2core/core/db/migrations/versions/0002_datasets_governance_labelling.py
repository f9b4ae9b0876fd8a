"""Receiver metadata, near-duplicate groups, labelling queue, erasure, quarantine.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 18:49:20.156895
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erased_images",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("erasure_id", sa.Integer(), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "label_tasks",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("top_sku", sa.String(length=64), nullable=True),
        sa.Column("top_confidence", sa.Float(), nullable=True),
        sa.Column("sku", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("sha256"),
    )
    with op.batch_alter_table("label_tasks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_label_tasks_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_label_tasks_site"), ["site"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_label_tasks_status"), ["status"], unique=False
        )

    op.create_table(
        "quarantine",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.String(length=1000), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_quarantine_site"), ["site"], unique=False)

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("label_origin", sa.String(length=16), nullable=True)
        )
        batch_op.add_column(sa.Column("phash", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("dup_group", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("redaction", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("quality", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("sharpness", sa.Float(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_images_captured_at"), ["captured_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_images_dup_group"), ["dup_group"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_images_received_at"), ["received_at"], unique=False
        )

    # Photos stored before this revision: kiosk captures carry the scanned SKU; each photo is
    # its own near-duplicate group (no perceptual hash was computed for them).
    op.execute(
        "UPDATE images SET label_origin = 'scan' WHERE source = 'kiosk' AND sku IS NOT NULL"
    )
    op.execute("UPDATE images SET dup_group = sha256")


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_images_received_at"))
        batch_op.drop_index(batch_op.f("ix_images_dup_group"))
        batch_op.drop_index(batch_op.f("ix_images_captured_at"))
        batch_op.drop_column("sharpness")
        batch_op.drop_column("quality")
        batch_op.drop_column("redaction")
        batch_op.drop_column("dup_group")
        batch_op.drop_column("phash")
        batch_op.drop_column("label_origin")

    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quarantine_site"))

    op.drop_table("quarantine")
    with op.batch_alter_table("label_tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_label_tasks_status"))
        batch_op.drop_index(batch_op.f("ix_label_tasks_site"))
        batch_op.drop_index(batch_op.f("ix_label_tasks_created_at"))

    op.drop_table("label_tasks")
    op.drop_table("erasures")
    op.drop_table("erased_images")

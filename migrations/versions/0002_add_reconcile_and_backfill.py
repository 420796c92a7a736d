"""add reconcile counts and backfill slices

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 17:47:03.167034

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "backfill_slices",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("slice_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("slice_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "run_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "source", "slice_start", "slice_end", name=op.f("pk_backfill_slices")
        ),
    )
    with op.batch_alter_table("sync_runs") as batch:
        for name in ("sessions_deleted", "sessions_restored"):
            batch.add_column(
                sa.Column(name, sa.Integer(), server_default="0", nullable=False)
            )


def downgrade() -> None:
    """Downgrade schema."""
    # Batch mode: SQLite rebuilds the table where it cannot drop a column.
    with op.batch_alter_table("sync_runs") as batch:
        batch.drop_column("sessions_restored")
        batch.drop_column("sessions_deleted")
    op.drop_table("backfill_slices")

"""add session history, directory tables, BI views and the reader role

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 17:55:41.783252

Tables: ``session_history`` (backfilled with one version per stored session,
so that ACUs already synced are not counted again on the day of their next
change), ``organizations``, ``users`` and the one-row ``bi_settings``.

Views: the ``v_*`` contract of ``docs/schema.md``, on PostgreSQL and SQLite
alike; only a handful of expressions differ (``_Dialect``). A later change to
a view is a new revision that drops and recreates it, and grants it again.

PostgreSQL only: the cluster-wide role ``devin_reader`` (created ``NOLOGIN``
when absent), granted ``USAGE`` on this schema and ``SELECT`` on its views.
Downgrade revokes both and drops the role only if this revision created it
and nothing in the cluster still depends on it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READER = "devin_reader"
READER_COMMENT = "devin-etl: read-only access to the BI views (migration 0003)"
# A session has ended once it exits or errors, or says its task is finished.
TERMINAL = (
    "status IN ('exit', 'error') OR (status = 'running' AND status_detail = 'finished')"
)
CANNOT_CREATE_READER = (
    f"cannot create the role {READER}: migrate once as a user with CREATEROLE, "
    f"or have an administrator run CREATE ROLE {READER} NOLOGIN, then migrate "
    "again"
)


def upgrade() -> None:
    """Upgrade schema."""
    _create_tables()
    op.execute(
        "INSERT INTO bi_settings (id, day_start_hour_utc, updated_at) "
        "VALUES (1, 0, CURRENT_TIMESTAMP)"
    )
    dialect = _Dialect(op.get_context().dialect.name)
    op.execute(_backfill_history(dialect))
    for name, query in _views(dialect):
        op.execute(f"CREATE VIEW {name} AS {query}")
    if dialect.is_postgres:
        _create_reader()
        _grant_reader()


def downgrade() -> None:
    """Downgrade schema."""
    dialect = _Dialect(op.get_context().dialect.name)
    if dialect.is_postgres:
        _revoke_reader()
    for name, _ in reversed(_views(dialect)):
        op.execute(f"DROP VIEW {name}")
    if dialect.is_postgres:
        _drop_reader_if_unused()
    op.drop_index(op.f("ix_session_history_updated_at"), table_name="session_history")
    op.drop_table("session_history")
    op.drop_table("users")
    op.drop_table("organizations")
    op.drop_table("bi_settings")


def _create_tables() -> None:
    op.create_table(
        "bi_settings",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("day_start_hour_utc", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "day_start_hour_utc BETWEEN 0 AND 23",
            name=op.f("ck_bi_settings_day_start_hour_utc"),
        ),
        sa.CheckConstraint("id = 1", name=op.f("ck_bi_settings_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bi_settings")),
    )
    op.create_table(
        "organizations",
        sa.Column("org_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_session_acu_limit", sa.Float(precision=53), nullable=True),
        sa.Column("max_cycle_acu_limit", sa.Float(precision=53), nullable=True),
        sa.Column("first_synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_organizations")),
    )
    op.create_table(
        "users",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("first_synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_users")),
    )
    _create_session_history()


def _create_session_history() -> None:
    json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "session_history",
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "run_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("status_detail", sa.Text(), nullable=True),
        sa.Column("acus_consumed", sa.Float(precision=53), nullable=True),
        sa.Column("is_archived", sa.Boolean(), nullable=True),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("tags", json, nullable=False),
        sa.Column("pull_requests", json, nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name=op.f("fk_session_history_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "session_id", "version", name=op.f("pk_session_history")
        ),
    )
    op.create_index(
        op.f("ix_session_history_updated_at"),
        "session_history",
        ["updated_at"],
        unique=False,
    )


class _Dialect:
    """The expressions PostgreSQL and SQLite spell differently.

    Timestamps are UTC; a BI day starts at ``bi_settings.day_start_hour_utc``
    and is named by the date it starts on; a week starts on the Monday.
    """

    hour = "coalesce((SELECT day_start_hour_utc FROM bi_settings WHERE id = 1), 0)"

    def __init__(self, name: str) -> None:
        self.is_postgres = name == "postgresql"

    def day(self, moment: str) -> str:
        if self.is_postgres:
            utc = f"({moment} AT TIME ZONE 'UTC')"
            return f"CAST({utc} - make_interval(hours => {self.hour}) AS date)"
        return f"date({moment}, '-' || {self.hour} || ' hours')"

    def week(self, day: str) -> str:
        if self.is_postgres:
            return f"CAST(date_trunc('week', {day}) AS date)"
        monday = f"((CAST(strftime('%w', {day}) AS INTEGER) + 6) % 7)"
        return f"date({day}, '-' || {monday} || ' days')"

    def seconds(self, start: str, end: str) -> str:
        if self.is_postgres:
            return f"CAST(EXTRACT(EPOCH FROM {end} - {start}) AS double precision)"
        return f"round((julianday({end}) - julianday({start})) * 86400.0)"

    def pr_states(self, column: str) -> str:
        """A table function of (key = pr_url, value = pr_state) pairs."""
        function = "jsonb_each_text" if self.is_postgres else "json_each"
        return f"{function}({column})"

    def tag_list(self, session_id: str) -> str:
        """The session's tags as a JSON array in code point order."""
        if self.is_postgres:
            return (
                '(SELECT coalesce(jsonb_agg(t.tag ORDER BY t.tag COLLATE "C"), '
                "'[]'::jsonb) FROM session_tags AS t "
                f"WHERE t.session_id = {session_id})"
            )
        return (
            "(SELECT json_group_array(tag) FROM (SELECT t.tag FROM session_tags "
            f"AS t WHERE t.session_id = {session_id} ORDER BY t.tag))"
        )

    def pr_state_map(self, session_id: str) -> str:
        """The session's pull requests as a JSON object pr_url -> pr_state."""
        if self.is_postgres:
            return (
                "(SELECT coalesce(jsonb_object_agg(p.pr_url, p.pr_state), "
                "'{}'::jsonb) FROM session_pull_requests AS p "
                f"WHERE p.session_id = {session_id})"
            )
        return (
            "(SELECT json_group_object(pr_url, pr_state) FROM (SELECT p.pr_url, "
            "p.pr_state FROM session_pull_requests AS p "
            f"WHERE p.session_id = {session_id} ORDER BY p.pr_url))"
        )


def _backfill_history(sql: _Dialect) -> str:
    """Version 1 of every stored session, in the loader's JSON form."""
    return f"""
        INSERT INTO session_history (
            session_id, version, updated_at, observed_at, run_id, status,
            status_detail, acus_consumed, is_archived, title, tags, pull_requests
        )
        SELECT s.session_id, 1, s.updated_at, s.last_synced_at, NULL, s.status,
               s.status_detail, s.acus_consumed, s.is_archived, s.title,
               {sql.tag_list("s.session_id")}, {sql.pr_state_map("s.session_id")}
        FROM sessions AS s
    """


def _views(sql: _Dialect) -> list[tuple[str, str]]:
    """Every view with its query, in an order that creates dependencies first."""
    return [
        ("v_sessions", _sessions(sql)),
        ("v_sessions_daily", _sessions_daily()),
        ("v_pull_requests", _pull_requests(sql)),
        ("v_pr_outcomes", _pr_outcomes(sql)),
        ("v_session_durations", _session_durations(sql)),
        ("v_tags", _tags()),
        ("v_acu_daily", _acu_daily(sql)),
    ]


def _sessions(sql: _Dialect) -> str:
    return f"""
        SELECT s.session_id, s.org_id, o.name AS org_name, s.user_id,
               u.name AS user_name, u.email AS user_email, s.service_user_id,
               s.parent_session_id, s.playbook_id, s.title, s.url, s.status,
               s.status_detail, s.origin, s.category, s.subcategory,
               s.is_archived, s.acus_consumed, s.created_at, s.updated_at,
               {sql.day("s.created_at")} AS created_day
        FROM sessions AS s
        LEFT JOIN organizations AS o ON o.org_id = s.org_id
        LEFT JOIN users AS u ON u.user_id = s.user_id
        WHERE s.deleted_at IS NULL
    """


def _sessions_daily() -> str:
    return """
        SELECT created_day AS day, org_id, org_name, origin, category, status,
               count(*) AS sessions
        FROM v_sessions
        GROUP BY created_day, org_id, org_name, origin, category, status
    """


def _pull_requests(sql: _Dialect) -> str:
    # A pull request's dates are the updated_at of the first session version
    # that showed it (in that state): the API gives pull requests no dates.
    return f"""
        WITH observed AS (
            SELECT h.session_id, pr.key AS pr_url, pr.value AS pr_state,
                   h.updated_at
            FROM session_history AS h
            CROSS JOIN {sql.pr_states("h.pull_requests")} AS pr
        ), first_seen AS (
            SELECT session_id, pr_url, min(updated_at) AS first_seen_at,
                   min(CASE WHEN pr_state = 'merged' THEN updated_at END)
                       AS merged_at,
                   min(CASE WHEN pr_state = 'closed' THEN updated_at END)
                       AS closed_at
            FROM observed
            GROUP BY session_id, pr_url
        )
        SELECT p.session_id, p.pr_url, p.repo, p.pr_number, p.pr_state,
               s.org_id, s.org_name, s.user_id, s.user_name,
               f.first_seen_at, f.merged_at, f.closed_at
        FROM session_pull_requests AS p
        JOIN v_sessions AS s ON s.session_id = p.session_id
        LEFT JOIN first_seen AS f
            ON f.session_id = p.session_id AND f.pr_url = p.pr_url
    """


def _pr_outcomes(sql: _Dialect) -> str:
    def week(column: str) -> str:
        return sql.week(sql.day(column))

    return f"""
        WITH prs AS (
            SELECT repo, first_seen_at, merged_at, closed_at
            FROM v_pull_requests
            WHERE repo IS NOT NULL
        ), events AS (
            SELECT repo, {week("first_seen_at")} AS week,
                   1 AS opened, 0 AS merged, 0 AS closed
            FROM prs WHERE first_seen_at IS NOT NULL
            UNION ALL
            SELECT repo, {week("merged_at")}, 0, 1, 0
            FROM prs WHERE merged_at IS NOT NULL
            UNION ALL
            SELECT repo, {week("closed_at")}, 0, 0, 1
            FROM prs WHERE closed_at IS NOT NULL
        )
        SELECT week, repo, sum(opened) AS opened, sum(merged) AS merged,
               sum(closed) AS closed,
               CAST(sum(merged) AS double precision)
                   / nullif(sum(merged) + sum(closed), 0) AS merge_rate
        FROM events
        GROUP BY week, repo
    """


def _session_durations(sql: _Dialect) -> str:
    return f"""
        WITH ended AS (
            SELECT session_id, min(version) AS version
            FROM session_history
            WHERE {TERMINAL}
            GROUP BY session_id
        )
        SELECT s.session_id, s.org_id, s.org_name, s.user_id, s.user_name,
               s.origin, s.category, s.created_at, s.created_day,
               h.updated_at AS ended_at, h.status AS end_status,
               h.status_detail AS end_status_detail,
               {sql.seconds("s.created_at", "h.updated_at")} AS duration_seconds
        FROM ended AS e
        JOIN session_history AS h
            ON h.session_id = e.session_id AND h.version = e.version
        JOIN v_sessions AS s ON s.session_id = e.session_id
    """


def _tags() -> str:
    return """
        SELECT s.created_day AS day, s.org_id, s.org_name, t.tag,
               count(*) AS sessions
        FROM session_tags AS t
        JOIN v_sessions AS s ON s.session_id = t.session_id
        GROUP BY s.created_day, s.org_id, s.org_name, t.tag
    """


def _acu_daily(sql: _Dialect) -> str:
    # acus_consumed is a running total: each version adds its growth since
    # the previous one, so the days of a session sum to its latest total.
    # Deleted sessions stay: the ACUs they consumed were consumed.
    return f"""
        WITH growth AS (
            SELECT h.session_id, {sql.day("h.updated_at")} AS day,
                   coalesce(h.acus_consumed, 0) - coalesce(lag(h.acus_consumed)
                       OVER (PARTITION BY h.session_id ORDER BY h.version), 0)
                       AS acus
            FROM session_history AS h
        )
        SELECT g.day, s.org_id, o.name AS org_name, s.user_id,
               u.name AS user_name, sum(g.acus) AS acus
        FROM growth AS g
        JOIN sessions AS s ON s.session_id = g.session_id
        LEFT JOIN organizations AS o ON o.org_id = s.org_id
        LEFT JOIN users AS u ON u.user_id = s.user_id
        GROUP BY g.day, s.org_id, o.name, s.user_id, u.name
    """


def _create_reader() -> None:
    # Roles are cluster-wide: another schema (or a concurrent migration) may
    # have created it already, and a role made by an administrator is kept.
    op.execute(f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
                CREATE ROLE {READER} NOLOGIN;
                COMMENT ON ROLE {READER} IS '{READER_COMMENT}';
            END IF;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION '{CANNOT_CREATE_READER}';
        END
        $$
    """)


def _grant_reader() -> None:
    op.execute(
        "DO $$ BEGIN EXECUTE format('GRANT USAGE ON SCHEMA %I TO "
        f"{READER}', current_schema()); END $$"
    )
    views = ", ".join(name for name, _ in _views(_Dialect("postgresql")))
    op.execute(f"GRANT SELECT ON {views} TO {READER}")


def _revoke_reader() -> None:
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
                EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {READER}',
                               current_schema());
            END IF;
        END
        $$
    """)


def _drop_reader_if_unused() -> None:
    # pg_shdepend spans every database of the cluster: a grant anywhere else
    # keeps the role. A role with LOGIN or members was set up by a person.
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (
                SELECT FROM pg_roles AS r
                WHERE r.rolname = '{READER}' AND NOT r.rolcanlogin
                  AND shobj_description(r.oid, 'pg_authid') = '{READER_COMMENT}'
                  AND NOT EXISTS (
                      SELECT FROM pg_shdepend AS d
                      WHERE d.refclassid = 'pg_authid'::regclass
                        AND d.refobjid = r.oid)
                  AND NOT EXISTS (
                      SELECT FROM pg_auth_members AS m
                      WHERE m.roleid = r.oid OR m.member = r.oid)
            ) THEN
                DROP ROLE {READER};
            END IF;
        EXCEPTION
            WHEN dependent_objects_still_exist THEN NULL;
        END
        $$
    """)

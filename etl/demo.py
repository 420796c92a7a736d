"""``devin-etl demo``: the whole product on a laptop, with no key and no server.

Starts the API simulator, syncs it into the embedded warehouse, changes some
sessions upstream, syncs again and prints what the dashboards would show,
from the same views they query.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from etl import db
from etl.config import Settings
from etl.errors import ConfigError, LockTimeoutError
from etl.pipeline import RunSummary, sync_once
from etl.simulator import (
    Simulator,
    generate_organizations,
    generate_sessions,
    generate_users,
)

DEMO_SOURCE = "demo"
Echo = Callable[[str], None]

# Portable SQL over the BI views (docs/schema.md), which exist on SQLite and
# PostgreSQL alike: what the Grafana dashboard shows, as text.
QUERIES = {
    "Sessions per organization (v_sessions_daily)": """
        SELECT coalesce(org_name, org_id) AS org, sum(sessions) AS sessions
        FROM v_sessions_daily
        GROUP BY org_id, org_name ORDER BY sessions DESC LIMIT 5
    """,
    "ACUs per day, last 5 days with usage (v_acu_daily)": """
        SELECT day, round(CAST(sum(acus) AS NUMERIC), 1) AS acus
        FROM v_acu_daily
        GROUP BY day HAVING sum(acus) <> 0 ORDER BY day DESC LIMIT 5
    """,
    "Top users by ACUs (v_acu_daily)": """
        SELECT coalesce(user_name, user_id, '(service users)') AS who,
               round(CAST(sum(acus) AS NUMERIC), 1) AS acus
        FROM v_acu_daily
        GROUP BY user_id, user_name ORDER BY sum(acus) DESC LIMIT 5
    """,
    "Pull requests by repository (v_pr_outcomes)": """
        SELECT repo, sum(opened) AS opened, sum(merged) AS merged,
               sum(closed) AS closed,
               round(1.0 * sum(merged) / nullif(sum(merged) + sum(closed), 0), 2)
                   AS merge_rate
        FROM v_pr_outcomes
        GROUP BY repo ORDER BY merged DESC, repo LIMIT 5
    """,
    "Session durations by origin (v_session_durations)": """
        SELECT origin, count(*) AS ended,
               round(CAST(avg(duration_seconds) / 3600 AS NUMERIC), 1) AS avg_hours
        FROM v_session_durations
        GROUP BY origin ORDER BY ended DESC LIMIT 5
    """,
    "Status mix (v_sessions)": """
        SELECT status, count(*) AS sessions FROM v_sessions
        GROUP BY status ORDER BY sessions DESC
    """,
}


def run_demo(
    settings: Settings, *, sessions: int, database_url: str | None, echo: Echo
) -> None:
    """Run the demo end to end, printing each step with ``echo``."""
    now = _now()
    with Simulator(
        generate_sessions(sessions, seed=42, now=now),
        organizations=generate_organizations(seed=42, now=now),
        users=generate_users(seed=42),
    ) as simulator:
        demo_settings = _demo_settings(settings, simulator, database_url)
        engine = db.create_warehouse_engine(demo_settings.database)
        try:
            _run_steps(demo_settings, engine, simulator, echo)
        finally:
            engine.dispose()


def _now() -> int:
    return int(time.time())


def _demo_settings(
    settings: Settings, simulator: Simulator, database_url: str | None
) -> Settings:
    database = settings.database.model_dump(by_alias=True)
    if database_url:
        database["url"] = database_url
    database["auto_migrate"] = True
    values = settings.model_dump(by_alias=True)
    values.update(
        api={
            **values["api"],
            "base_url": simulator.base_url,
            "key": simulator.config.api_key,
        },
        database=database,
        sync={**values["sync"], "source": DEMO_SOURCE},
        filters={},
    )
    return Settings(**values)


def _run_steps(
    settings: Settings, engine: sa.Engine, simulator: Simulator, echo: Echo
) -> None:
    url = sa.make_url(settings.database.url).render_as_string(hide_password=True)
    echo(f"Simulated Devin API at {simulator.base_url}; warehouse {url}")
    db.ensure_schema(engine, settings.database)
    _refuse_foreign_warehouse(engine)

    first = _sync(settings, engine)
    echo(_describe("First sync (everything)", first))

    changed = _change_sessions(simulator)
    echo(f"Upstream: {changed} sessions changed or created meanwhile.")

    second = _sync(settings, engine)
    echo(_describe("Second sync (incremental)", second))

    for title, query in QUERIES.items():
        echo("")
        echo(title)
        echo(_render(engine, query))


def _sync(settings: Settings, engine: sa.Engine) -> RunSummary:
    summary = sync_once(settings, engine, wait=True)
    if summary is None:
        raise LockTimeoutError("another demo holds the warehouse: try again later")
    return summary


def _refuse_foreign_warehouse(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        sources = set(
            connection.execute(sa.text("SELECT source FROM sync_state")).scalars()
        )
    if sources - {DEMO_SOURCE}:
        raise ConfigError(
            "the demo would mix simulated sessions into a warehouse that holds "
            "real ones: pass --database-url sqlite:///demo.db"
        )


def _change_sessions(simulator: Simulator) -> int:
    rng = random.Random(7)
    snapshot = simulator.sessions_snapshot()
    picked = rng.sample(snapshot, k=max(1, len(snapshot) // 20))
    for session in picked:
        simulator.update_session(
            session["session_id"],
            status="exit",
            acus_consumed=round(session["acus_consumed"] + rng.uniform(0.5, 5), 2),
            tags=session["tags"][1:],
            pull_requests=[
                {**pr, "pr_state": "merged"} for pr in session["pull_requests"]
            ],
        )
    created = max(1, len(snapshot) // 100)
    for _ in range(created):
        simulator.create_session()
    return len(picked) + created


def _describe(title: str, summary: RunSummary) -> str:
    counts = summary.counts
    return (
        f"{title}: {counts.sessions_seen} sessions read in {summary.seconds:.1f}s, "
        f"{counts.sessions_inserted} new, {counts.sessions_updated} updated, "
        f"{counts.sessions_unchanged} unchanged, "
        f"{counts.child_rows_written} tag/PR/child rows written"
    )


def _render(engine: sa.Engine, query: str) -> str:
    with engine.connect() as connection:
        result = connection.execute(sa.text(query))
        headers = list(result.keys())
        rows = [[_cell(value) for value in row] for row in result]
    widths = [
        max(len(str(v)) for v in column) for column in zip(headers, *rows, strict=True)
    ]
    lines = [headers, *rows]
    return "\n".join(
        "  " + "  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True))
        for line in lines
    )


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)

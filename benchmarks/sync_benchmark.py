"""Measure a full, a 1%-changed and a no-change sync against its floors.

Run from the repository root (PostgreSQL from ``TEST_DATABASE_URL`` or the
local default):

    .venv/bin/python benchmarks/sync_benchmark.py --sessions 200000

This process hosts the API simulator; every sync runs as its own
``python -m etl sync`` process, so wall times include start-up and the peak
RSS is that process's own. Two floors are measured on the same simulator and
database: (a) fetching and JSON-decoding every page with no database, and
(b) COPYing the already-normalized rows. The ratio compares the full sync
with (a) + (b).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from etl import db  # noqa: E402
from etl.config import ApiSettings, DatabaseSettings  # noqa: E402
from etl.extract import SESSIONS_PATH, DevinClient  # noqa: E402
from etl.simulator import Simulator, SimulatorConfig, generate_sessions  # noqa: E402
from etl.transform import normalize_items  # noqa: E402

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PAGE_SIZE = 200


@dataclass(frozen=True)
class Measure:
    name: str
    seconds: float
    sessions: int
    peak_rss_mb: float | None = None

    def line(self) -> str:
        rate = self.sessions / self.seconds if self.seconds else 0.0
        rss = f"{self.peak_rss_mb:7.0f} MB" if self.peak_rss_mb else "       -  "
        return f"{self.name:<34} {self.seconds:8.2f} s {rate:10,.0f} sessions/s {rss}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share changed")
    args = parser.parse_args()

    server_url = sa.make_url(os.environ.get("TEST_DATABASE_URL", DEFAULT_SERVER))
    database = f"devin_etl_bench_{uuid.uuid4().hex[:8]}"
    _create_database(server_url, database)
    try:
        url = server_url.set(database=database).render_as_string(hide_password=False)
        _run(args.sessions, args.changed, url)
    finally:
        _drop_database(server_url, database)


def _run(count: int, changed_share: float, url: str) -> None:
    started = time.monotonic()
    sessions = generate_sessions(count, seed=1, now=int(time.time()))
    print(f"generated {count:,} sessions in {time.monotonic() - started:.1f}s")
    with Simulator(sessions, SimulatorConfig()) as simulator:
        fetch = _measure_fetch(simulator, count)
        copy = _measure_copy(simulator, url, count)
        full = _measure_sync(simulator, url, "full sync", count)
        changed = _change(simulator, int(count * changed_share))
        one_percent = _measure_sync(
            simulator, url, f"sync after {changed:,} changed", changed
        )
        unchanged = _measure_sync(simulator, url, "sync with no change", 0)

    floors = fetch.seconds + copy.seconds
    print()
    for measure in (fetch, copy, full, one_percent, unchanged):
        print(measure.line())
    print()
    print(f"full sync / (fetch + copy) = {full.seconds / floors:.2f}  (target <= 1.25)")
    print(f"no-change run wall time    = {unchanged.seconds:.2f} s  (target <= 1 s)")
    peak = max(m.peak_rss_mb or 0 for m in (full, one_percent, unchanged))
    print(f"peak RSS of sync processes = {peak:.0f} MB  (target <= 250 MB)")


def _measure_fetch(simulator: Simulator, count: int) -> Measure:
    """Floor (a): page through everything and decode JSON, no database."""
    settings = ApiSettings(base_url=simulator.base_url, page_size=PAGE_SIZE)
    client = DevinClient(settings, simulator.config.api_key)
    started = time.monotonic()
    seen = sum(
        len(page.items)
        for page in client.iter_pages(SESSIONS_PATH, [], page_size=PAGE_SIZE)
    )
    seconds = time.monotonic() - started
    client.close()
    assert seen == count, f"listed {seen} of {count}"
    return Measure("floor (a): fetch + decode", seconds, count)


def _measure_copy(simulator: Simulator, url: str, count: int) -> Measure:
    """Floor (b): COPY the normalized rows into empty tables of a fresh schema."""
    frames = normalize_items(simulator.sessions_snapshot())
    settings = DatabaseSettings.model_validate({"url": url, "schema": "copy_floor"})
    engine = db.create_warehouse_engine(settings)
    db.upgrade_schema(engine, settings)
    now = datetime.now(UTC)
    sessions = frames.sessions.assign(
        created_at=lambda f: [datetime.fromtimestamp(v, UTC) for v in f["created_at"]],
        updated_at=lambda f: [datetime.fromtimestamp(v, UTC) for v in f["updated_at"]],
        first_synced_at=now,
        last_synced_at=now,
    )
    tables = {"sessions": sessions, **frames.child_frames}
    rows = {name: _plain_rows(frame) for name, frame in tables.items()}

    started = time.monotonic()
    with engine.begin() as connection:
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        for name, frame in tables.items():
            columns = ", ".join(frame.columns)
            with cursor.copy(f"COPY {name} ({columns}) FROM STDIN") as copy:
                for row in rows[name]:
                    copy.write_row(row)
    seconds = time.monotonic() - started
    engine.dispose()
    return Measure("floor (b): COPY normalized rows", seconds, count)


def _plain_rows(frame: Any) -> list[tuple[Any, ...]]:
    plain = frame.astype(object).where(frame.notna(), None)
    return list(plain.itertuples(index=False, name=None))


def _measure_sync(simulator: Simulator, url: str, name: str, sessions: int) -> Measure:
    env = {
        **os.environ,
        "DEVIN_API_KEY": simulator.config.api_key,
        "DEVIN_API_BASE_URL": simulator.base_url,
        "DATABASE_URL": url,
        "DEVIN_ETL_DATABASE__AUTO_MIGRATE": "true",
        "DEVIN_ETL_LOGGING__LEVEL": "WARNING",
    }
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "etl", "sync"], env=env, cwd=ROOT)
    peak_kb = _watch_peak_rss(process)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"{name}: the sync failed (exit {process.returncode})")
    return Measure(name, seconds, sessions, peak_kb / 1024)


def _watch_peak_rss(process: subprocess.Popen[bytes]) -> int:
    """The child's VmHWM (peak RSS, kB), read until it exits.

    The kernel's rusage for a child also counts the parent's memory at fork
    time (this process holds the simulator's data), so it cannot be used.
    """
    peak = 0
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            text = status.read_text()
        except OSError:
            break
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
        time.sleep(0.02)
    process.wait()
    return peak


def _change(simulator: Simulator, count: int) -> int:
    for session in simulator.sessions_snapshot()[:count]:
        simulator.update_session(
            session["session_id"],
            acus_consumed=session["acus_consumed"] + 1.0,
            status="exit",
        )
    return count


def _create_database(server: sa.URL, name: str) -> None:
    engine = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()


def _drop_database(server: sa.URL, name: str) -> None:
    engine = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


if __name__ == "__main__":
    main()

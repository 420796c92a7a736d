"""The ``devin-etl`` command line: thin callers of the pipeline functions.

Exit codes: 0 success, 1 failure (one ``Error:`` line on stderr, a
traceback only with ``--debug``), 2 usage errors.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from etl import __version__
from etl.config import Settings, load_settings
from etl.errors import EtlError, LockTimeoutError
from etl.logs import configure_logging, redact, register_secret

if TYPE_CHECKING:
    import sqlalchemy as sa

    from etl.backfill import BackfillSummary
    from etl.pipeline import RunSummary
    from etl.reconcile import ReconcileSummary

# Commands import the pipeline (pandas, SQLAlchemy, Alembic) when they run,
# so that --help and usage errors answer at once.

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Context:
    """What the group options decide for every command."""

    config_path: Path | None
    is_debug: bool
    log_format: str | None

    def settings(self, *, is_daemon: bool = False) -> Settings:
        settings = load_settings(self.config_path)
        register_secret(
            settings.api.key.get_secret_value() if settings.api.key else None
        )
        level = "DEBUG" if self.is_debug else settings.logging.level
        log_format = self.log_format or settings.logging.format
        configure_logging(level, log_format, is_daemon=is_daemon)
        return settings


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Example: DEVIN_API_KEY=cog_... devin-etl sync",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML settings file [default: $DEVIN_ETL_CONFIG or config/devin-etl.toml].",
)
@click.option("--debug", is_flag=True, help="Log internals and show tracebacks.")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "text", "json"]),
    help="Log line format [default: from settings].",
)
@click.version_option(__version__, prog_name="devin-etl")
@click.pass_context
def cli(
    ctx: click.Context, config_path: Path | None, debug: bool, log_format: str | None
) -> None:
    """Sync Devin sessions from the Devin API v3 into a SQL warehouse."""
    ctx.obj = Context(config_path, debug, log_format)


@cli.command(epilog="Example: devin-etl sync   (from cron: */15 * * * *)")
@click.option("--full", is_flag=True, help="Ignore the watermark; list everything.")
@click.option(
    "--wait",
    is_flag=True,
    help="If another run of the source is in progress, wait for it to end.",
)
@click.pass_obj
def sync(obj: Context, full: bool, wait: bool) -> None:
    """Run one incremental sync of the configured sessions, then exit.

    Exits 0 without syncing when another run of the same source is in
    progress, unless --wait is given.
    """
    settings = obj.settings()
    with open_warehouse(settings) as engine:
        from etl.pipeline import sync_once

        summary = sync_once(settings, engine, full=full, wait=wait)
    if summary is not None:
        click.echo(describe_run(summary))
    elif wait:
        raise LockTimeoutError(
            f"another run of source {settings.sync.source} still held the lock "
            f"after {settings.sync.lock_wait_seconds:.0f}s: check `devin-etl status` "
            "or raise sync.lock_wait_seconds"
        )
    else:
        click.echo(
            f"Another run of source {settings.sync.source} is in progress; "
            "nothing to do (use --wait to wait for it)."
        )


@cli.command(
    epilog="Example: DEVIN_API_KEY=cog_... devin-etl daemon   "
    "(JSON logs; /healthz and /metrics on 127.0.0.1:9108)"
)
@click.pass_obj
def daemon(obj: Context) -> None:
    """Sync on the [daemon] schedule until SIGTERM or SIGINT, then exit 0.

    Runs one job at a time; a failed run is logged and the next tick tries
    again. On a signal the batch in progress commits (or, after
    daemon.stop_timeout_seconds, is rolled back) and the daemon exits.
    Serves /healthz and /metrics on daemon.http_host:daemon.http_port.
    """
    from etl.scheduler import run_daemon

    settings = obj.settings(is_daemon=True)
    with open_warehouse(settings) as engine:
        is_stopped_in_time = run_daemon(settings, engine)
    if not is_stopped_in_time:
        # The job thread is still in its batch: leave without joining it.
        sys.stderr.flush()
        os._exit(0)


@cli.command(
    epilog="Example: devin-etl reconcile   (daily; --force after a real mass deletion)"
)
@click.option(
    "--force",
    is_flag=True,
    help="Mark sessions deleted even beyond reconcile.max_deleted_share.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="If another run of the source is in progress, wait for it to end.",
)
@click.pass_obj
def reconcile(obj: Context, force: bool, wait: bool) -> None:
    """Mark the stored sessions that the API no longer lists as deleted.

    Lists the id of every session the configured filters select, sets
    deleted_at on stored sessions missing from it (once a lookup by id
    confirms they are gone) and clears it on sessions listed again. Changes
    nothing and fails if more than reconcile.max_deleted_share of the live
    sessions would be marked, unless --force is given.
    """
    settings = obj.settings()
    with open_warehouse(settings) as engine:
        from etl.reconcile import reconcile_once

        summary = reconcile_once(settings, engine, force=force, wait=wait)
    if summary is None:
        report_busy_lock("run", settings, wait=wait)
    else:
        click.echo(describe_reconcile(summary))


DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


@cli.command(epilog="Example: devin-etl backfill --since 2024-01-01 --until 2025-01-01")
@click.option(
    "--since",
    required=True,
    type=click.DateTime(DATE_FORMATS),
    metavar="DATE",
    help="Load sessions created from this date on (UTC; YYYY-MM-DD[THH:MM:SS]).",
)
@click.option(
    "--until",
    type=click.DateTime(DATE_FORMATS),
    metavar="DATE",
    help="...and created before this date (UTC) [default: now, by the API's clock].",
)
@click.option(
    "--wait",
    is_flag=True,
    help="If another backfill of the source is in progress, wait for it to end.",
)
@click.pass_obj
def backfill(obj: Context, since: datetime, until: datetime | None, wait: bool) -> None:
    """Load the sessions created between --since and --until, slice by slice.

    Slices are backfill.slice_days long; each finished one is recorded, so a
    backfill that was interrupted resumes where it stopped when started
    again with the same --since. The watermark is left alone and syncs may
    run meanwhile. Shows a progress bar on a terminal, one log line per
    slice otherwise.
    """
    since = since.replace(tzinfo=UTC)
    until = until.replace(tzinfo=UTC) if until else None
    if until is not None and until <= since:
        raise click.BadParameter("must be later than --since", param_hint="--until")
    settings = obj.settings()
    with open_warehouse(settings) as engine:
        from etl.backfill import backfill_once

        summary = backfill_once(settings, engine, since=since, until=until, wait=wait)
    if summary is None:
        report_busy_lock("backfill", settings, wait=wait)
    else:
        click.echo(describe_backfill(summary))


@cli.command(
    epilog="Example: DATABASE_URL=postgresql://etl@db/warehouse devin-etl migrate"
)
@click.pass_obj
def migrate(obj: Context) -> None:
    """Create or upgrade the warehouse schema to the latest revision."""
    from etl.db import upgrade_schema

    settings = obj.settings()
    with open_warehouse(settings) as engine:
        revision = upgrade_schema(engine, settings.database)
    click.echo(f"Warehouse schema is at revision {revision}.")


@cli.command(epilog="Example: devin-etl status")
@click.option("--runs", default=10, show_default=True, help="How many runs to list.")
@click.pass_obj
def status(obj: Context, runs: int) -> None:
    """Show the watermark, the last runs and the row counts."""
    from etl.db import ensure_schema
    from etl.report import render_status

    settings = obj.settings()
    with open_warehouse(settings) as engine:
        ensure_schema(
            engine, settings.database.model_copy(update={"auto_migrate": False})
        )
        click.echo(render_status(engine, settings, runs=runs))


@cli.command(epilog="Example: devin-etl demo --sessions 2000")
@click.option("--sessions", default=2000, show_default=True, help="Simulated sessions.")
@click.option(
    "--database-url",
    default=None,
    help="Warehouse for the demo [default: the embedded SQLite file].",
)
@click.pass_obj
def demo(obj: Context, sessions: int, database_url: str | None) -> None:
    """Sync from a local API simulator twice and show what the warehouse holds.

    Needs no API key and no database server.
    """
    from etl.demo import run_demo

    settings = obj.settings()
    run_demo(settings, sessions=sessions, database_url=database_url, echo=click.echo)


@cli.command(epilog="Example: devin-etl simulate --port 8080 --sessions 5000")
@click.option("--port", default=8080, show_default=True, help="Port on 127.0.0.1.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address.")
@click.option("--sessions", default=5000, show_default=True, help="Simulated sessions.")
@click.option("--seed", default=0, show_default=True, help="Data generator seed.")
def simulate(port: int, host: str, sessions: int, seed: int) -> None:
    """Serve a fake Devin API with generated sessions until interrupted."""
    from etl.simulator import serve

    serve(sessions_count=sessions, port=port, seed=seed, host=host)


@contextmanager
def open_warehouse(settings: Settings) -> Iterator[sa.Engine]:
    from etl.db import create_warehouse_engine

    engine = create_warehouse_engine(settings.database)
    try:
        yield engine
    finally:
        engine.dispose()


def describe_run(summary: RunSummary) -> str:
    counts = summary.counts
    complete = "" if summary.is_window_complete else " (window incomplete)"
    return (
        f"Run {summary.run_id} succeeded in {summary.seconds:.1f}s{complete}: "
        f"{counts.sessions_seen} sessions seen, {counts.sessions_inserted} new, "
        f"{counts.sessions_updated} updated, {counts.sessions_unchanged} unchanged, "
        f"{counts.items_rejected} rejected; watermark "
        f"{summary.watermark.isoformat() if summary.watermark else 'none'}"
    )


def describe_reconcile(summary: ReconcileSummary) -> str:
    return (
        f"Reconcile run {summary.run_id} succeeded in {summary.seconds:.1f}s: "
        f"{summary.listed} sessions listed, {summary.deleted} marked deleted, "
        f"{summary.restored} restored"
    )


def describe_backfill(summary: BackfillSummary) -> str:
    counts = summary.counts
    incomplete = (
        f", {summary.incomplete} incomplete (run the backfill again)"
        if summary.incomplete
        else ""
    )
    return (
        f"Backfill run {summary.run_id} succeeded in {summary.seconds:.1f}s: "
        f"{summary.slices} slices up to {summary.until.isoformat()}, "
        f"{summary.skipped} finished earlier{incomplete}; "
        f"{counts.sessions_seen} sessions seen, {counts.sessions_inserted} new, "
        f"{counts.sessions_updated} updated, {counts.sessions_unchanged} unchanged"
    )


def report_busy_lock(what: str, settings: Settings, *, wait: bool) -> None:
    """Another ``what`` of the source holds the lock: say so and exit 0, or
    fail when --wait waited for it in vain."""
    source = settings.sync.source
    if wait:
        raise LockTimeoutError(
            f"another {what} of source {source} still held the lock after "
            f"{settings.sync.lock_wait_seconds:.0f}s: check `devin-etl status` "
            "or raise sync.lock_wait_seconds"
        )
    click.echo(
        f"Another {what} of source {source} is in progress; nothing to do "
        "(use --wait to wait for it)."
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn expected failures into one line."""
    is_debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="devin-etl", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except EtlError as error:
        _fail(str(error), error, is_debug)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as error:
        _fail(
            f"unexpected {type(error).__name__}: {error} "
            "(rerun with --debug and report it)",
            error,
            is_debug,
        )


def _fail(message: str, error: BaseException, is_debug: bool) -> None:
    if is_debug:
        log.error("Failed", exc_info=error)
    click.echo(f"Error: {redact(message)}", err=True)
    sys.exit(1)

"""Prometheus metrics of the daemon, and its HTTP endpoints.

``/metrics`` serves the series below in the Prometheus text format;
``/healthz`` answers 200 or 503 with the verdict of :mod:`etl.health` as
JSON. Counters count what this process did since it started; the two
gauges read ``sync_state`` at each scrape, so they are true whichever
process ran the sync.

=========================================== ==================================
``devin_etl_runs_total{kind,status}``       runs by kind (sync, reconcile) and
                                            outcome (succeeded, failed,
                                            stopped, skipped)
``devin_etl_sessions_written_total{action}`` sessions inserted or updated, by
                                            committed batches
``devin_etl_api_requests_total{code}``      API responses by status code,
                                            retried ones included; ``none``
                                            when no response came
``devin_etl_api_retries_total``             requests retried after a
                                            transient failure
``devin_etl_run_duration_seconds{kind}``    histogram of run durations
``devin_etl_watermark_age_seconds``         now minus the source's watermark
``devin_etl_last_success_timestamp_seconds`` unix time of the last success
=========================================== ==================================
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

import sqlalchemy as sa
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from etl.errors import ConfigError
from etl.extract import RequestStats
from etl.health import Health
from etl.pipeline import RunCounts
from etl.state import read_source_state, utc_now

log = logging.getLogger(__name__)

KINDS = ("sync", "reconcile")
STATUSES = ("succeeded", "failed", "stopped", "skipped")
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
JSON_TYPE = "application/json"


class Metrics:
    """The daemon's series, in a registry of their own.

    The ``observe_*`` methods are called from the run's thread while the
    HTTP thread renders; prometheus_client's metrics are thread-safe.
    """

    def __init__(self, engine: sa.Engine, source: str) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "devin_etl_runs",
            "Runs by kind and outcome.",
            ["kind", "status"],
            registry=self.registry,
        )
        self.sessions_written = Counter(
            "devin_etl_sessions_written",
            "Sessions inserted or updated in the warehouse.",
            ["action"],
            registry=self.registry,
        )
        self.api_requests = Counter(
            "devin_etl_api_requests",
            "Devin API responses by HTTP status code (none: no response).",
            ["code"],
            registry=self.registry,
        )
        self.api_retries = Counter(
            "devin_etl_api_retries",
            "Devin API requests retried after a transient failure.",
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "devin_etl_run_duration_seconds",
            "How long runs took, skipped runs excluded.",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(WarehouseCollector(engine, source))
        ProcessCollector(registry=self.registry)
        self._create_series()

    def _create_series(self) -> None:
        """Show zeros before the first run, so rates and alerts work at once."""
        for kind in KINDS:
            self.run_duration.labels(kind=kind)
            for status in STATUSES:
                self.runs.labels(kind=kind, status=status)
        for action in ("inserted", "updated"):
            self.sessions_written.labels(action=action)

    def observe_batch(self, counts: RunCounts) -> None:
        """Count the sessions of a batch that just committed."""
        self.sessions_written.labels(action="inserted").inc(counts.sessions_inserted)
        self.sessions_written.labels(action="updated").inc(counts.sessions_updated)

    def observe_requests(self, stats: RequestStats) -> None:
        """Count the traffic of a run's client, once, when the run ends."""
        for code, count in stats.by_status.items():
            self.api_requests.labels(code=code).inc(count)
        self.api_retries.inc(stats.retries)

    def observe_run(self, kind: str, status: str, seconds: float) -> None:
        self.runs.labels(kind=kind, status=status).inc()
        if status != "skipped":
            self.run_duration.labels(kind=kind).observe(seconds)

    def render(self) -> bytes:
        """Every series in the Prometheus text format."""
        return generate_latest(self.registry)


class WarehouseCollector(Collector):
    """Gauges read from ``sync_state`` at each scrape, in seconds.

    A warehouse that cannot be read yields no samples rather than failing
    the scrape: ``/healthz`` reports why.
    """

    def __init__(self, engine: sa.Engine, source: str) -> None:
        self._engine = engine
        self._source = source

    def collect(self) -> Iterable[Metric]:
        try:
            with self._engine.connect() as connection:
                stored = read_source_state(connection, self._source)
        except sa.exc.SQLAlchemyError as error:
            log.debug("Metrics could not read sync_state: %s", error)
            return []
        gauges = []
        if stored.watermark is not None:
            age = (utc_now() - stored.watermark).total_seconds()
            gauges.append(
                GaugeMetricFamily(
                    "devin_etl_watermark_age_seconds",
                    "Seconds since the source's watermark.",
                    value=age,
                )
            )
        if stored.last_success_at is not None:
            gauges.append(
                GaugeMetricFamily(
                    "devin_etl_last_success_timestamp_seconds",
                    "Unix time of the source's last successful run.",
                    value=stored.last_success_at.timestamp(),
                )
            )
        return gauges


@contextmanager
def serve_endpoints(
    host: str, port: int, metrics: Metrics, health: Callable[[], Health]
) -> Iterator[tuple[str, int]]:
    """Serve ``/metrics`` and ``/healthz`` from a thread while the block runs.

    Yields the bound address (``port`` 0 picks a free one). Raises
    :class:`ConfigError` when the address cannot be bound.
    """
    try:
        server = _EndpointServer((host, port), metrics, health)
    except OSError as error:
        raise ConfigError(
            f"cannot serve /healthz and /metrics on {host}:{port} "
            f"({error.strerror or error}): set daemon.http_port to a free port, "
            "or to 0 to turn the endpoints off"
        ) from None
    thread = threading.Thread(
        target=server.serve_forever, name="http-endpoints", daemon=True
    )
    thread.start()
    try:
        bound_host, bound_port = server.server_address[:2]
        yield str(bound_host), int(bound_port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _EndpointServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        metrics: Metrics,
        health: Callable[[], Health],
    ) -> None:
        self.metrics = metrics
        self.health = health
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "devin-etl"
    sys_version = ""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, self._server.metrics.render())
        elif path == "/healthz":
            health = self._server.health()
            self._send_json(200 if health.is_healthy else 503, health.as_json())
        else:
            self._send_json(404, {"error": "not found: try /healthz or /metrics"})

    @property
    def _server(self) -> _EndpointServer:
        return cast(_EndpointServer, self.server)

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, JSON_TYPE, json.dumps(body).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are no news: log them at DEBUG only."""
        log.debug("%s %s", self.address_string(), format % args)

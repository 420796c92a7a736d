"""The Dockerfile and .dockerignore that build the devin-etl:local image.

Docker does not run where the tests run, so the Dockerfile is read stage by
stage and .dockerignore is matched as Docker matches it. The image's health
check runs here against a fake daemon on loopback.
"""

from __future__ import annotations

import re
import shlex
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from compose_stack import (
    FINAL_STAGE,
    ROOT,
    STAGES,
    Instruction,
    dockerfile_healthcheck,
    dockerfile_instruction,
    run_python_check,
)

PINNED_PYTHON = re.compile(r"^python:3\.11\.\d+-slim-\w+$")
BUILD_TOOLS = re.compile(r"apt-get|apk |gcc|g\+\+|clang|build-essential|\bmake\b")


def copies(stage: list[Instruction]) -> list[list[str]]:
    return [shlex.split(i.args) for i in stage if i.keyword == "COPY"]


@pytest.mark.parametrize(
    "stage", STAGES, ids=[stage[0].args.split()[-1] for stage in STAGES]
)
def test_dockerfile_base_image_is_pinned(stage: list[Instruction]) -> None:
    image = stage[0].args.split()[0]
    assert PINNED_PYTHON.match(image), f"{image} is not python:3.11.N-slim-<distro>"


def test_dockerfile_final_stage_runs_as_non_root() -> None:
    users = [i.args for i in FINAL_STAGE if i.keyword == "USER"]
    assert users
    assert users[-1] not in ("root", "0", "0:0")


def test_dockerfile_final_stage_installs_no_build_tools() -> None:
    runs = [i.args for i in FINAL_STAGE if i.keyword == "RUN"]
    assert [run for run in runs if BUILD_TOOLS.search(run)] == []
    assert len(STAGES) >= 2, "build in a stage of its own"


def test_dockerfile_entrypoint_is_devin_etl() -> None:
    assert dockerfile_instruction("ENTRYPOINT") == ["devin-etl"]
    assert dockerfile_instruction("CMD") == ["daemon"]


def test_dockerfile_keeps_migrations_beside_etl() -> None:
    # etl.db.MIGRATIONS_DIR is migrations/ in the parent of the etl package;
    # the builder installs /app editable, so the venv imports /app/etl.
    targets = {
        args[0]: args[-1] for args in copies(FINAL_STAGE) if "--from" not in args[0]
    }
    builder_workdir = [i.args for i in STAGES[0] if i.keyword == "WORKDIR"][-1]

    assert targets["etl"] == f"{builder_workdir}/etl"
    assert targets["migrations"] == f"{builder_workdir}/migrations"
    assert targets["alembic.ini"] == f"{builder_workdir}/alembic.ini"
    assert any("--editable ." in i.args for i in STAGES[0] if i.keyword == "RUN")


def dockerignore_patterns() -> list[re.Pattern[str]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert not line.startswith("!"), "negations are not modelled here"
            patterns.append(re.compile(_glob_to_regex(line.strip())))
    return patterns


def _glob_to_regex(glob: str) -> str:
    parts = re.split(r"(\*\*/|\*|\?|\[[^]]*\])", glob)
    special = {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}
    return "".join(
        special.get(part, part if part.startswith("[") else re.escape(part))
        for part in parts
    )


def is_ignored(path: str) -> bool:
    """Docker's rule: a path is out when it or a parent directory matches."""
    segments = path.split("/")
    prefixes = ["/".join(segments[: n + 1]) for n in range(len(segments))]
    return any(
        p.fullmatch(prefix) for p in dockerignore_patterns() for prefix in prefixes
    )


COPIED = sorted(
    {
        source
        for args in copies(STAGES[0] + FINAL_STAGE)
        if not args[0].startswith("--from")
        for source in args[:-1]
    }
)


@pytest.mark.parametrize("source", COPIED)
def test_dockerfile_copies_a_file_in_the_context(source: str) -> None:
    assert (ROOT / source).exists()
    assert not is_ignored(source)


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "etl/__pycache__/cli.cpython-311.pyc",
        "devin_sessions.db",
        "etl/cache.db",
        ".mypy_cache/3.11/etl",
        ".env",
        "config/devin-etl.toml",
        ".pytest_cache/v/cache",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert is_ignored(path)


# --- the health check, run for real -------------------------------------------


@dataclass
class FakeDaemon:
    """An HTTP server on loopback that answers every GET with ``status``."""

    status: int
    paths: list[str]
    port: int = 0


@pytest.fixture
def fake_daemon(request: pytest.FixtureRequest) -> Iterator[FakeDaemon]:
    daemon = FakeDaemon(request.param, [])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            daemon.paths.append(self.path)
            self.send_response(daemon.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    daemon.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield daemon
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("fake_daemon", "exit_code"), [(200, 0), (503, 1)], indirect=["fake_daemon"]
)
def test_dockerfile_healthcheck_asks_healthz(
    fake_daemon: FakeDaemon, exit_code: int
) -> None:
    port = str(fake_daemon.port)
    code = run_python_check(dockerfile_healthcheck(), DEVIN_ETL_DAEMON__HTTP_PORT=port)

    assert code == exit_code
    assert fake_daemon.paths == ["/healthz"]


def test_dockerfile_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    code = run_python_check(dockerfile_healthcheck(), DEVIN_ETL_DAEMON__HTTP_PORT=port)
    assert code == 1

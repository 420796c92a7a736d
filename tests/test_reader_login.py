"""The reader-login service, which lets Grafana's role log in.

The service's script runs here against the test PostgreSQL server, on a
throwaway role standing in for devin_reader.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from compose_stack import (
    daemon_settings,
    isolate_settings,
    libpq_env,
    resolved_service,
)


@pytest.fixture
def reader_role(postgres_url: str) -> Iterator[str]:
    """A NOLOGIN role standing in for devin_reader, dropped afterwards."""
    role = f"reader_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {role} NOLOGIN"))
    try:
        yield role
    finally:
        with engine.connect() as connection:
            connection.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        engine.dispose()


def run_reader_login(
    postgres_url: str, role: str, password: str
) -> subprocess.CompletedProcess[str]:
    """Run the service's script here, on ``role`` instead of devin_reader."""
    service = resolved_service("reader-login", {"DEVIN_READER_PASSWORD": password})
    script = service["command"][0]
    assert "ROLE devin_reader " in script
    env = {**service["environment"], **libpq_env(postgres_url)}
    return subprocess.run(
        [*service["entrypoint"], script.replace("ROLE devin_reader ", f"ROLE {role} ")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass(frozen=True)
class Role:
    can_login: bool
    password: str | None
    settings: list[str] | None  # ALTER ROLE ... IN DATABASE <this one> SET


def read_role(postgres_url: str, name: str) -> Role:
    query = """
        SELECT r.rolcanlogin, r.rolpassword, s.setconfig
        FROM pg_authid AS r
        LEFT JOIN pg_db_role_setting AS s ON s.setrole = r.oid
            AND s.setdatabase = (
                SELECT oid FROM pg_database WHERE datname = current_database())
        WHERE r.rolname = :name
    """
    engine = sa.create_engine(postgres_url)
    with engine.connect() as connection:
        row = connection.execute(sa.text(query), {"name": name}).one()
    engine.dispose()
    return Role(*row)


def is_scram_of(stored: str, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier from pg_authid was made from ``password``."""
    method, iterations_salt, keys = stored.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key = base64.b64decode(keys.split(":")[0])
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    is_match = hashlib.sha256(client_key).digest() == stored_key
    return method == "SCRAM-SHA-256" and is_match


@pytest.mark.parametrize(
    "password",
    ["plain-password", 'it\'s "quoted" $HOME \\ :x'],
    ids=["plain", "tricky"],
)
def test_reader_login_sets_login_and_password(
    postgres_url: str, reader_role: str, password: str
) -> None:
    result = run_reader_login(postgres_url, reader_role, password)
    role = read_role(postgres_url, reader_role)

    assert result.returncode == 0, result.stderr
    assert role.can_login
    assert role.password is not None
    assert is_scram_of(role.password, password)
    assert password not in result.stdout + result.stderr


def test_reader_login_points_search_path_at_warehouse_schema(
    postgres_url: str,
    reader_role: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # The dashboards query the views unqualified, in the daemon's schema.
    isolate_settings(monkeypatch, tmp_path)
    schema = daemon_settings({}, monkeypatch).database.db_schema
    run_reader_login(postgres_url, reader_role, "pw")

    role = read_role(postgres_url, reader_role)
    assert role.settings == [f"search_path={schema}"]


def test_reader_login_without_password_fails_in_one_line(
    postgres_url: str, reader_role: str
) -> None:
    result = run_reader_login(postgres_url, reader_role, "")

    assert result.returncode == 1
    assert result.stderr.startswith("Error: DEVIN_READER_PASSWORD is empty")
    assert len(result.stderr.strip().splitlines()) == 1
    assert read_role(postgres_url, reader_role) == Role(False, None, None)


def test_reader_login_fails_when_role_is_missing(postgres_url: str) -> None:
    result = run_reader_login(postgres_url, f"missing_{uuid.uuid4().hex[:8]}", "pw")

    assert result.returncode != 0
    assert "does not exist" in result.stderr

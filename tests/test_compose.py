"""docker-compose.yml and .env.example, held against the code they configure.

Docker does not run where the tests run, so the files are read and checked
against the settings, the CLI commands and the simulator. Compose's variable
interpolation is evaluated as documented, and the services' health checks run
against loopback servers and the test PostgreSQL server.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from compose_stack import (
    COMPOSE,
    ENV_EXAMPLE,
    ROOT,
    SERVICES,
    EnvEntry,
    compose_variables,
    daemon_settings,
    dockerfile_healthcheck,
    dockerfile_instruction,
    interpolate,
    isolate_settings,
    libpq_env,
    resolve,
    resolved_service,
    run_python_check,
)
from etl.cli import cli
from etl.config import WELL_KNOWN_ENV, DaemonSettings, Settings
from etl.simulator import SimulatorConfig
from support import start_simulator

LOCAL_IMAGE = "devin-etl:local"

# Names the stack may set besides the devin-etl settings, by who reads them.
POSTGRES_IMAGE_ENV = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
LIBPQ_ENV = {"PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"}
STACK_ENV = {"DEVIN_READER_PASSWORD"}

EXPECTED_PROFILES = {
    "postgres": [],
    "migrate": [],
    "etl": [],
    "simulator": ["demo"],
    "reader-login": ["bi"],
    "grafana": ["bi"],
}
EXPECTED_DEPENDENCIES = [
    ("migrate", "postgres", "service_healthy"),
    ("etl", "postgres", "service_healthy"),
    ("etl", "migrate", "service_completed_successfully"),
    ("reader-login", "postgres", "service_healthy"),
    ("reader-login", "migrate", "service_completed_successfully"),
    ("grafana", "reader-login", "service_completed_successfully"),
]
# A pin names a release that never moves: PostgreSQL 15.minor, Grafana x.y.z.
PINNED_IMAGES = {
    "postgres": re.compile(r"^postgres:15\.\d+(-\w+)?$"),
    "grafana/grafana": re.compile(r"^grafana/grafana:\d+\.\d+\.\d+$"),
}


# --- Compose interpolation ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A-x}", {"A": ""}, ""),
        ("${A:+x}", {"A": "1"}, "x"),
        ("${A:+x}", {"A": ""}, ""),
        ("${A:-${B:+y}}", {"B": "1"}, "y"),
        ("${A:-${B:+y}}", {"A": "a", "B": "1"}, "a"),
        ("$$A and $A", {"A": "1"}, "$A and 1"),
    ],
    ids=[
        "default",
        "default-empty",
        "dash-keeps-empty",
        "alt",
        "alt-empty",
        "nested",
        "nested-outer-set",
        "escaped",
    ],
)
def test_interpolate_follows_compose_rules(
    text: str, env: dict[str, str], expected: str
) -> None:
    assert interpolate(text, env, set()) == expected


# --- .env.example -------------------------------------------------------------


def test_env_example_lists_exactly_the_compose_variables() -> None:
    listed = {entry.name for entry in ENV_EXAMPLE}
    used = compose_variables()

    assert sorted(used - listed) == [], "used by docker-compose.yml, not listed"
    assert sorted(listed - used) == [], "listed, not used by docker-compose.yml"


@pytest.mark.parametrize("entry", ENV_EXAMPLE, ids=lambda entry: entry.name)
def test_env_example_entry_is_explained_and_empty(entry: EnvEntry) -> None:
    # Empty values keep the defaults of docker-compose.yml, and no secret is
    # ever committed here.
    assert entry.has_comment
    assert entry.value == ""


def test_env_example_empty_values_mean_defaults() -> None:
    copied = {entry.name: entry.value for entry in ENV_EXAMPLE}
    assert resolve(COMPOSE, copied, set()) == resolve(COMPOSE, {}, set())


# --- environment of the services ------------------------------------------------


def setting_env_names(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """``DEVIN_ETL_<SECTION>__<KEY>`` for every leaf setting, by alias."""
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name).upper()
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from setting_env_names(annotation, key + "__")
        else:
            yield key


SETTING_ENV = set(setting_env_names(Settings, "DEVIN_ETL_"))
ENVIRONMENT_KEYS = [
    (service, key)
    for service, spec in SERVICES.items()
    for key in spec.get("environment", {})
]


def test_setting_env_names_cover_nested_and_aliased_keys() -> None:
    assert {
        "DEVIN_ETL_API__BASE_URL",
        "DEVIN_ETL_API__RETRY__MAX_ATTEMPTS",
        "DEVIN_ETL_DATABASE__SCHEMA",
    } <= SETTING_ENV
    assert "DEVIN_ETL_DATABASE__DB_SCHEMA" not in SETTING_ENV


@pytest.mark.parametrize(
    ("service", "key"), ENVIRONMENT_KEYS, ids=[f"{s}-{k}" for s, k in ENVIRONMENT_KEYS]
)
def test_compose_environment_names_are_understood(service: str, key: str) -> None:
    if key.startswith("DEVIN_ETL_"):
        assert key in SETTING_ENV, f"{key} is no devin-etl setting"
    elif key.startswith("GF_"):
        assert service == "grafana"
    else:
        assert key in {*WELL_KNOWN_ENV, *POSTGRES_IMAGE_ENV, *LIBPQ_ENV, *STACK_ENV}


@pytest.fixture
def clean_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> pytest.MonkeyPatch:
    """No settings from this process or from a config file in the directory."""
    isolate_settings(monkeypatch, tmp_path)
    return monkeypatch


def simulator_url() -> str:
    args = SERVICES["simulator"]["command"]
    params = cli.commands["simulate"].make_context("simulate", args[1:]).params
    return f"http://simulator:{params['port']}"


REAL_KEY = "cog_real_service_key"
DEDICATED_URL = "https://api.acme.devinenterprise.com"
SIMULATOR = "the simulator service"
API_CASES = [
    ({}, SimulatorConfig().api_key, SIMULATOR),
    (
        {entry.name: entry.value for entry in ENV_EXAMPLE},
        SimulatorConfig().api_key,
        SIMULATOR,
    ),
    ({"DEVIN_API_KEY": REAL_KEY}, REAL_KEY, "https://api.devin.ai"),
    (
        {"DEVIN_API_KEY": REAL_KEY, "DEVIN_API_BASE_URL": DEDICATED_URL},
        REAL_KEY,
        DEDICATED_URL,
    ),
]


@pytest.mark.parametrize(
    ("shell", "key", "base_url"),
    API_CASES,
    ids=["demo-no-env", "demo-env-example-copy", "real-key", "dedicated"],
)
def test_compose_daemon_talks_to_simulator_only_without_key(
    clean_environment: pytest.MonkeyPatch,
    shell: dict[str, str],
    key: str,
    base_url: str,
) -> None:
    settings = daemon_settings(shell, clean_environment)

    assert settings.require_api_key() == key
    assert settings.api.base_url == (
        simulator_url() if base_url == SIMULATOR else base_url
    )


def test_compose_daemon_reaches_postgres_service(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    shell = {"POSTGRES_USER": "u", "POSTGRES_DB": "d", "POSTGRES_PASSWORD": "p@/:"}
    settings = daemon_settings(shell, clean_environment)
    postgres = resolved_service("postgres", shell)["environment"]
    url = sa.make_url(settings.database.url)

    assert (url.host, url.port, url.password) == ("postgres", 5432, None)
    assert (url.username, url.database) == ("u", "d")
    assert os.environ["PGPASSWORD"] == postgres["POSTGRES_PASSWORD"] == "p@/:"


def test_compose_daemon_publishes_its_http_port() -> None:
    port = DaemonSettings().http_port
    assert SERVICES["etl"]["ports"] == [
        f"127.0.0.1:${{ETL_PUBLISHED_PORT:-{port}}}:{port}"
    ]


# --- services: images, commands, profiles, dependencies, health ----------------


def is_local_image(service: dict[str, Any]) -> bool:
    return "build" in service


@pytest.mark.parametrize("name", list(SERVICES))
def test_compose_image_is_pinned(name: str) -> None:
    image = SERVICES[name]["image"]
    if is_local_image(SERVICES[name]):
        assert image == LOCAL_IMAGE
        assert SERVICES[name]["build"] == "."
    else:
        pinned = PINNED_IMAGES.get(image.split(":")[0])
        assert pinned, f"{image}: add its pin rule to PINNED_IMAGES"
        assert pinned.match(image), f"{image} is not pinned to a release"


def service_command(name: str) -> list[str]:
    command = SERVICES[name].get("command") or dockerfile_instruction("CMD")
    assert isinstance(command, list), "use the exec form for commands"
    return command


LOCAL_SERVICES = [name for name, spec in SERVICES.items() if is_local_image(spec)]


@pytest.mark.parametrize("name", LOCAL_SERVICES)
def test_compose_command_is_devin_etl_command(name: str) -> None:
    command, *args = service_command(name)

    assert command in cli.commands, f"devin-etl has no command {command!r}"
    cli.commands[command].make_context(command, args)  # raises on a bad option


def test_compose_command_rejects_unknown_option() -> None:
    # The check above would catch a typo in a service's options.
    with pytest.raises(click.NoSuchOption):
        cli.commands["simulate"].make_context("simulate", ["--hots", "0.0.0.0"])


@pytest.mark.parametrize("name", list(SERVICES))
def test_compose_profiles(name: str) -> None:
    assert SERVICES[name].get("profiles", []) == EXPECTED_PROFILES[name]


@pytest.mark.parametrize(
    ("service", "dependency", "condition"),
    EXPECTED_DEPENDENCIES,
    ids=[f"{s}-on-{d}" for s, d, _ in EXPECTED_DEPENDENCIES],
)
def test_compose_dependency(service: str, dependency: str, condition: str) -> None:
    assert SERVICES[service]["depends_on"][dependency] == {"condition": condition}


DEPENDENCIES = [
    (name, dependency, spec)
    for name, service in SERVICES.items()
    for dependency, spec in service.get("depends_on", {}).items()
]


@pytest.mark.parametrize(
    ("name", "dependency", "spec"),
    DEPENDENCIES,
    ids=[f"{s}-on-{d}" for s, d, _ in DEPENDENCIES],
)
def test_compose_dependency_can_be_met(
    name: str, dependency: str, spec: dict[str, str]
) -> None:
    # A service outside every profile cannot wait for one inside a profile.
    assert set(SERVICES[dependency].get("profiles", [])) <= set(
        SERVICES[name].get("profiles", [])
    )
    if spec["condition"] == "service_healthy":
        assert effective_healthcheck(dependency) is not None


def effective_healthcheck(name: str) -> list[str] | None:
    """The health check command: the service's, else the image's."""
    healthcheck = SERVICES[name].get("healthcheck", {})
    if healthcheck.get("disable"):
        return None
    if "test" in healthcheck:
        test: list[str] = healthcheck["test"]
        return test
    if is_local_image(SERVICES[name]):
        return ["CMD", *dockerfile_healthcheck()]
    return None


@pytest.mark.parametrize("name", ["postgres", "etl", "simulator", "grafana"])
def test_compose_service_has_healthcheck(name: str) -> None:
    test = effective_healthcheck(name)
    assert test is not None
    assert test[0] in ("CMD", "CMD-SHELL")


def test_compose_postgres_keeps_data_in_named_volume() -> None:
    volume, target = SERVICES["postgres"]["volumes"][0].split(":")
    assert target == "/var/lib/postgresql/data"
    assert volume in COMPOSE["volumes"]


BIND_MOUNTS = [
    (name, mount.split(":")[0])
    for name, service in SERVICES.items()
    for mount in service.get("volumes", [])
    if mount.startswith("./")
]


@pytest.mark.parametrize(
    ("name", "source"), BIND_MOUNTS, ids=[f"{n}-{s}" for n, s in BIND_MOUNTS]
)
def test_compose_bind_mount_exists(name: str, source: str) -> None:
    assert (ROOT / source).is_dir(), f"{name} mounts {source}, which does not exist"


def test_grafana_gets_every_variable_its_provisioning_reads() -> None:
    files = sorted((ROOT / "grafana/provisioning").glob("**/*.y*ml"))
    assert files, "grafana/provisioning holds no YAML file"
    names: set[str] = set()
    for path in files:
        interpolate(path.read_text(), {}, names)

    assert names <= set(SERVICES["grafana"]["environment"])


# --- health checks of the services, run for real ------------------------------


def simulator_healthcheck(base_url: str) -> list[str]:
    """The simulator's check, aimed at ``base_url`` instead of port 8080."""
    command: list[str] = resolved_service("simulator", {})["healthcheck"]["test"][1:]
    assert command[2].count("http://127.0.0.1:8080/") == 1
    return [*command[:2], command[2].replace("http://127.0.0.1:8080", base_url)]


@pytest.mark.parametrize(
    ("api_key", "exit_code"),
    [(SimulatorConfig().api_key, 0), ("cog_other_key", 1)],
    ids=["simulator-key", "other-key"],
)
def test_compose_simulator_healthcheck_asks_sessions(
    api_key: str, exit_code: int
) -> None:
    with start_simulator(5, api_key=api_key) as simulator:
        code = run_python_check(simulator_healthcheck(simulator.base_url))
    assert code == exit_code


def test_compose_postgres_healthcheck_asks_server(postgres_url: str) -> None:
    kind, command = SERVICES["postgres"]["healthcheck"]["test"]
    env = libpq_env(postgres_url)
    shell = {"POSTGRES_USER": env["PGUSER"], "POSTGRES_DB": env["PGDATABASE"]}
    script = interpolate(command, {}, set())
    result = subprocess.run(
        ["sh", "-c", script], env={**os.environ, **env, **shell}, check=False
    )

    assert kind == "CMD-SHELL"
    assert result.returncode == 0

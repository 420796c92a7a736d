"""The Compose stack's files, read as Docker would read them; not a test module.

docker-compose.yml is resolved with Compose's variable interpolation, as
docs.docker.com describes it; .env.example is read entry by entry; the
Dockerfile is split into stages of instructions. The helpers that run a
service's pieces here (its settings, its health check, libpq's environment)
live here too, because more than one test module uses them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from etl.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


# --- Compose interpolation, as docs.docker.com describes it -----------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATOR = re.compile(r":?[-+?]")


def interpolate(text: str, env: Mapping[str, str], names: set[str]) -> str:
    """``text`` with Compose's ``$`` expressions replaced; ``names`` collects."""
    parts: list[str] = []
    index = 0
    while (dollar := text.find("$", index)) >= 0:
        parts.append(text[index:dollar])
        value, index = _expand(text, dollar, env, names)
        parts.append(value)
    parts.append(text[index:])
    return "".join(parts)


def _expand(
    text: str, dollar: int, env: Mapping[str, str], names: set[str]
) -> tuple[str, int]:
    after = text[dollar + 1 : dollar + 2]
    if after == "$":
        return "$", dollar + 2
    if after == "{":
        end = _closing_brace(text, dollar + 2)
        return _expand_braced(text[dollar + 2 : end], env, names), end + 1
    if match := _NAME.match(text, dollar + 1):
        names.add(match.group())
        return env.get(match.group(), ""), match.end()
    return "$", dollar + 1


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return index
    raise ValueError(f"unclosed ${{ in {text!r}")


def _expand_braced(body: str, env: Mapping[str, str], names: set[str]) -> str:
    name_match = _NAME.match(body)
    operator = _OPERATOR.match(body, name_match.end()) if name_match else None
    if name_match is None or (operator is None and name_match.end() < len(body)):
        raise ValueError(f"Compose does not support ${{{body}}}")
    name = name_match.group()
    names.add(name)
    if operator is None:
        return env.get(name, "")
    operand = interpolate(body[operator.end() :], env, names)
    return _apply(operator.group(), env.get(name), operand, name)


def _apply(operator: str, value: str | None, operand: str, name: str) -> str:
    is_present = bool(value) if operator.startswith(":") else value is not None
    if operator.endswith("+"):
        return operand if is_present else ""
    if is_present:
        return value or ""
    if operator.endswith("?"):
        raise ValueError(f"{name} is required: {operand}")
    return operand


def resolve(node: Any, env: Mapping[str, str], names: set[str]) -> Any:
    """A parsed Compose node with every string value interpolated."""
    if isinstance(node, str):
        return interpolate(node, env, names)
    if isinstance(node, list):
        return [resolve(item, env, names) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env, names) for key, value in node.items()}
    return node


def resolved_service(name: str, env: Mapping[str, str]) -> dict[str, Any]:
    service: dict[str, Any] = resolve(SERVICES[name], env, set())
    return service


def compose_variables() -> set[str]:
    names: set[str] = set()
    resolve(COMPOSE, {}, names)
    return names


# --- .env.example -------------------------------------------------------------


@dataclass(frozen=True)
class EnvEntry:
    name: str
    value: str
    has_comment: bool


def read_env_example() -> list[EnvEntry]:
    entries: list[EnvEntry] = []
    is_commented = False
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("#"):
            is_commented = True
        elif "=" in line:
            name, value = line.split("=", 1)
            entries.append(EnvEntry(name.strip(), value, is_commented))
        else:
            is_commented = False
    return entries


ENV_EXAMPLE = read_env_example()


# --- Dockerfile -----------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def read_dockerfile() -> list[list[Instruction]]:
    """The instructions of each stage, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    stages: list[list[Instruction]] = []
    for line in re.split(r"(?<!\\)\n", "\n".join(lines)):
        keyword, _, args = line.replace("\\\n", " ").strip().partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if keyword:
            stages[-1].append(Instruction(keyword.upper(), args.strip()))
    return stages


STAGES = read_dockerfile()
FINAL_STAGE = STAGES[-1]


def dockerfile_instruction(keyword: str) -> Any:
    """The JSON (exec form) arguments of the final stage's ``keyword``."""
    found = [i.args for i in FINAL_STAGE if i.keyword == keyword]
    assert len(found) == 1, f"the final stage needs one {keyword}"
    return json.loads(found[0])


def dockerfile_healthcheck() -> list[str]:
    found = [i.args for i in FINAL_STAGE if i.keyword == "HEALTHCHECK"]
    assert len(found) == 1, "the final stage needs one HEALTHCHECK"
    _options, _, command = found[0].partition(" CMD ")
    exec_form: list[str] = json.loads(command)
    return exec_form


# --- running a service's pieces here ----------------------------------------------


def isolate_settings(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Drop settings from this process, and from a config file in the directory."""
    for name in list(os.environ):
        if name.startswith(("DEVIN_", "PG")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(directory)


def daemon_settings(shell: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the etl service loads when ``shell`` is Compose's env."""
    for key, value in resolved_service("etl", shell)["environment"].items():
        monkeypatch.setenv(key, str(value))
    return load_settings()


def libpq_env(url: str) -> dict[str, str]:
    parsed = sa.make_url(url)
    return {
        "PGHOST": parsed.host or "127.0.0.1",
        "PGPORT": str(parsed.port or 5432),
        "PGUSER": parsed.username or "postgres",
        "PGPASSWORD": parsed.password or "",
        "PGDATABASE": parsed.database or "postgres",
    }


def run_python_check(command: list[str], **env: str) -> int:
    """Run an exec-form ``python -c`` health check here; returns the exit code."""
    assert command[:2] == ["python", "-c"], f"not a python -c check: {command}"
    result = subprocess.run(
        [sys.executable, "-c", command[2]],
        env={**os.environ, **env},
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode

"""Settings: read once at start from a TOML file and the environment.

Precedence, highest first: the three well-known environment variables
(``DEVIN_API_KEY``, ``DEVIN_API_BASE_URL``, ``DATABASE_URL``), then
``DEVIN_ETL_<SECTION>__<KEY>`` variables, then the TOML file, then defaults.
``config/devin-etl.example.toml`` documents every key.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from etl.errors import ConfigError

CONFIG_ENV = "DEVIN_ETL_CONFIG"
DEFAULT_CONFIG_PATH = Path("config/devin-etl.toml")
DEFAULT_DATABASE_URL = "sqlite:///devin_sessions.db"
WELL_KNOWN_ENV = {
    "DEVIN_API_KEY": ("api", "key"),
    "DEVIN_API_BASE_URL": ("api", "base_url"),
    "DATABASE_URL": ("database", "url"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrySettings(_Section):
    """How transient API failures are retried (see :mod:`etl.extract`)."""

    max_attempts: int = Field(default=6, ge=1, le=50)
    backoff_seconds: float = Field(default=1.0, gt=0)
    max_backoff_seconds: float = Field(default=60.0, gt=0)


class ApiSettings(_Section):
    base_url: str = "https://api.devin.ai"
    key: SecretStr | None = None
    page_size: int = Field(default=200, ge=1, le=200)
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    read_timeout_seconds: float = Field(default=60.0, gt=0)
    retry: RetrySettings = RetrySettings()

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class FilterSettings(_Section):
    """Filters of the list endpoint; they define which sessions are synced."""

    org_ids: list[str] = []
    user_ids: list[str] = []
    service_user_ids: list[str] = []
    session_ids: list[str] = []
    tags: list[str] = []
    origins: list[str] = []
    repo_names: list[str] = []
    category: str | None = None
    playbook_id: str | None = None
    schedule_id: str | None = None
    is_archived: bool | None = None
    include_deleted_orgs: bool = False
    created_after: datetime | None = None
    created_before: datetime | None = None

    @field_validator("created_after", "created_before")
    @classmethod
    def _assume_utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def fingerprint(self) -> str:
        """A short stable hash; a watermark is only valid for one filter set."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class SyncSettings(_Section):
    source: str = Field(default="enterprise", min_length=1, max_length=100)
    lookback_seconds: int = Field(default=300, ge=2)
    batch_pages: int = Field(default=10, ge=1, le=1000)
    max_passes: int = Field(default=3, ge=1, le=20)
    lock_wait_seconds: float = Field(default=3600.0, gt=0)
    refresh_directory: bool = True


def _check_crontab(value: str | None) -> str | None:
    if value is None:
        return None
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(value, timezone="UTC")
    except ValueError as error:
        raise ValueError(f"not a 5-field cron expression ({error})") from None
    return value


class DaemonSettings(_Section):
    """Schedules of ``devin-etl daemon`` (cron fields in UTC) and its endpoints."""

    sync_interval_seconds: int = Field(default=900, ge=1)
    sync_cron: str | None = None
    reconcile_interval_seconds: int | None = Field(default=None, ge=60)
    reconcile_cron: str | None = "30 3 * * *"
    stop_timeout_seconds: float = Field(default=60.0, gt=0)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=9108, ge=0, le=65535)
    healthy_max_age_seconds: int = Field(default=3600, ge=1)

    _check_crons = field_validator("sync_cron", "reconcile_cron")(_check_crontab)


class ReconcileSettings(_Section):
    max_deleted_share: float = Field(default=0.10, ge=0.0, le=1.0)


class BackfillSettings(_Section):
    slice_days: int = Field(default=7, ge=1, le=366)


class BiSettings(_Section):
    day_start_hour_utc: int = Field(default=0, ge=0, le=23)


class DatabaseSettings(_Section):
    url: str = DEFAULT_DATABASE_URL
    db_schema: str = Field(
        default="devin", alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,62}$"
    )
    auto_migrate: bool = False

    @field_validator("url")
    @classmethod
    def _use_psycopg3(cls, value: str) -> str:
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value.removeprefix(prefix)
        return value

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "text", "json"] = "auto"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DEVIN_ETL_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    api: ApiSettings = ApiSettings()
    filters: FilterSettings = FilterSettings()
    sync: SyncSettings = SyncSettings()
    database: DatabaseSettings = DatabaseSettings()
    logging: LoggingSettings = LoggingSettings()
    daemon: DaemonSettings = DaemonSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    backfill: BackfillSettings = BackfillSettings()
    bi: BiSettings = BiSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            _WellKnownEnvSource(settings_cls),
            env_settings,
            TomlConfigSettingsSource(settings_cls),
        )

    def require_api_key(self) -> str:
        """The API key, or a :class:`ConfigError` saying how to set it."""
        if self.api.key is None or not self.api.key.get_secret_value():
            raise ConfigError(
                "DEVIN_API_KEY is not set: export it with a service-user key "
                "(cog_...) that has the ViewAccountSessions permission"
            )
        return self.api.key.get_secret_value()


class _WellKnownEnvSource(PydanticBaseSettingsSource):
    """Reads the unprefixed variables that every deployment tool knows."""

    def get_field_value(
        self, field: FieldInfo, field_name: str
    ) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, (section, key) in WELL_KNOWN_ENV.items():
            value = os.environ.get(name)
            if value:
                values.setdefault(section, {})[key] = value
        return values


def load_settings(path: Path | None = None) -> Settings:
    """Read and validate the settings once.

    ``path`` defaults to ``$DEVIN_ETL_CONFIG``, then to
    ``config/devin-etl.toml`` when that file exists. Raises
    :class:`ConfigError` naming the first bad key.
    """
    toml_file = _find_config_file(path)

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=toml_file)

    try:
        return _FileSettings()
    except ValidationError as error:
        raise ConfigError(_describe(error, toml_file)) from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read config file {toml_file}: {error}") from None


def _find_config_file(path: Path | None) -> Path | None:
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    if path is not None:
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist: fix the path or start from "
                "config/devin-etl.example.toml"
            )
        return path
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _describe(error: ValidationError, toml_file: Path | None) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    env = "DEVIN_ETL_" + "__".join(str(p).upper() for p in first["loc"])
    where = f"{toml_file} or {env}" if toml_file else env
    return (
        f"invalid setting {key}: {first['msg']} "
        f"(fix it in {where}; see config/devin-etl.example.toml)"
    )

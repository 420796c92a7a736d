"""Settings: the example file, precedence, and messages that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.config import Settings, load_settings
from etl.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "devin-etl.example.toml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "DEVIN_API_KEY",
        "DEVIN_API_BASE_URL",
        "DATABASE_URL",
        "DEVIN_ETL_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_settings_example_file_matches_defaults() -> None:
    assert load_settings(EXAMPLE).model_dump() == Settings().model_dump()


def test_load_settings_environment_overrides_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_config(
        tmp_path,
        '[api]\nbase_url = "https://file.example"\n[sync]\nlookback_seconds = 60\n',
    )
    monkeypatch.setenv("DEVIN_API_BASE_URL", "https://env.example/")
    monkeypatch.setenv("DEVIN_ETL_SYNC__LOOKBACK_SECONDS", "900")
    monkeypatch.setenv("DEVIN_ETL_FILTERS__ORG_IDS", '["org-a", "org-b"]')

    settings = load_settings(path)

    assert settings.api.base_url == "https://env.example"
    assert settings.sync.lookback_seconds == 900
    assert settings.filters.org_ids == ["org-a", "org-b"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[sync]\nlookback_seconds = -1\n", "sync.lookback_seconds"),
        ("[api]\npage_size = 500\n", "api.page_size"),
        ('[api]\nbase_url = "ftp://x"\n', "api.base_url"),
        ("[sync]\nlookbak_seconds = 10\n", "sync.lookbak_seconds"),
        ('[database]\nschema = "Robert; DROP"\n', "database.schema"),
    ],
    ids=["negative", "too-large", "bad-url", "unknown-key", "bad-schema"],
)
def test_load_settings_error_names_the_bad_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = write_config(tmp_path, text)

    with pytest.raises(ConfigError, match=f"invalid setting {key}") as error:
        load_settings(path)

    assert "\n" not in str(error.value)


def test_load_settings_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_load_settings_unparsable_file_is_a_clear_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[api\n")

    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(path)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_load_settings_database_url_uses_psycopg3(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)

    assert load_settings().database.url == expected


def test_require_api_key_says_how_to_set_it() -> None:
    with pytest.raises(ConfigError, match="DEVIN_API_KEY is not set"):
        Settings().require_api_key()


def test_settings_repr_hides_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVIN_API_KEY", "cog_secret_value")

    settings = load_settings()

    assert settings.require_api_key() == "cog_secret_value"
    assert "cog_secret_value" not in repr(settings)

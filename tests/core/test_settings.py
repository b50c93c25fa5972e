"""Settings: environment, TOML file, validation, the generated secret key."""

from __future__ import annotations

import os
import stat

import pytest

from zhongtai.settings import SettingsError, load_settings, mask_url_password, masked


@pytest.fixture(autouse=True)
def _clean(zt_clean_env, tmp_path, monkeypatch):
    monkeypatch.setenv("ZHONGTAI_HOME", str(tmp_path / "home"))


def test_defaults_embedded(tmp_path):
    settings = load_settings()
    assert settings.home == tmp_path / "home"
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'home' / 'zhongtai.db'}"
    assert settings.storage.driver == "local"


def test_environment_and_nested_values(monkeypatch):
    monkeypatch.setenv("ZHONGTAI_PORT", "9001")
    monkeypatch.setenv("ZHONGTAI_STORAGE__DRIVER", "s3")
    monkeypatch.setenv("ZHONGTAI_STORAGE__BUCKET", "models")
    monkeypatch.setenv("ZHONGTAI_PLUGINS", "data, train")
    settings = load_settings()
    assert settings.port == 9001
    assert (settings.storage.driver, settings.storage.bucket) == ("s3", "models")
    assert settings.plugins == ["data", "train"]


def test_toml_file_is_read_and_environment_wins(tmp_path, monkeypatch):
    config = tmp_path / "zt.toml"
    config.write_text('port = 9100\nlog_level = "DEBUG"\n[storage]\nroot = "/srv/objects"\n')
    monkeypatch.setenv("ZHONGTAI_CONFIG", str(config))
    monkeypatch.setenv("ZHONGTAI_PORT", "9200")
    settings = load_settings()
    assert settings.port == 9200
    assert settings.log_level == "DEBUG"
    assert str(settings.storage.root) == "/srv/objects"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ZHONGTAI_PORT", "eighty", "ZHONGTAI_PORT:"),
        ("ZHONGTAI_PORT", "70000", "ZHONGTAI_PORT:"),
        ("ZHONGTAI_DATABASE_URL", "mysql://db/x", "unsupported database 'mysql'"),
        ("ZHONGTAI_DATABASE_URL", "not a url", "ZHONGTAI_DATABASE_URL: not a database URL"),
        ("ZHONGTAI_LOG_LEVEL", "LOUD", "ZHONGTAI_LOG_LEVEL:"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert any(expected in line for line in info.value.problems)


def test_invalid_toml_is_reported(tmp_path, monkeypatch):
    config = tmp_path / "bad.toml"
    config.write_text("port = = 1")
    monkeypatch.setenv("ZHONGTAI_CONFIG", str(config))
    with pytest.raises(SettingsError, match="invalid TOML"):
        load_settings()


def test_secret_key_is_generated_once_and_private(tmp_path):
    settings = load_settings()
    key = settings.resolved_secret_key()
    assert len(key) >= 40
    path = tmp_path / "home" / "secret_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_settings().resolved_secret_key() == key


def test_configured_secret_key_wins(monkeypatch):
    monkeypatch.setenv("ZHONGTAI_SECRET_KEY", "configured-key")
    assert load_settings().resolved_secret_key() == "configured-key"


def test_listing_masks_secrets_and_url_passwords(monkeypatch):
    monkeypatch.setenv("ZHONGTAI_SECRET_KEY", "s3cr3t")
    monkeypatch.setenv("ZHONGTAI_DATABASE_URL", "postgresql://zt:hunter2@db:5432/zt")
    monkeypatch.setenv("ZHONGTAI_STORAGE__SECRET_ACCESS_KEY", "aws-secret")
    listing = masked(load_settings(), "ZHONGTAI_")
    text = "\n".join(f"{k}={v}" for k, v in listing.items())
    assert "s3cr3t" not in text and "hunter2" not in text and "aws-secret" not in text
    assert listing["ZHONGTAI_DATABASE_URL"] == "postgresql://zt:********@db:5432/zt"
    assert listing["ZHONGTAI_STORAGE__SECRET_ACCESS_KEY"] == "********"


def test_mask_url_password_leaves_plain_urls():
    assert mask_url_password("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"

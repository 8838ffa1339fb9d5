"""Server settings: defaults from the schema, a TOML file, command-line overrides, and errors
that name the key and the fix; docs/server.md is generated from the same schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from floe.config.schema import ConfigError
from floe.config.settings import SERVER_SCHEMA, load_server_settings, reference, server_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_come_from_the_schema():
    settings = server_settings()
    assert settings.port == 8080 and settings.heartbeat_timeout == 600
    assert settings.fair_share_half_life == 86400 and settings.max_log_bytes == 8 * 2**20
    assert set(SERVER_SCHEMA.fields) == set(vars(settings))


def test_a_toml_file_with_overrides_on_top(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text('port = 9000\nheartbeat_timeout = "2m"\ndurability = "normal"\n')
    settings = load_server_settings(str(path), {"port": 9100})
    assert (settings.port, settings.heartbeat_timeout, settings.durability) == (9100, 120,
                                                                                "normal")


def test_every_problem_is_named_with_the_file(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text('prot = 9000\ndurability = "sometimes"\n')
    with pytest.raises(ConfigError) as caught:
        load_server_settings(str(path))
    text = str(caught.value)
    assert f'{path}: prot: unknown key; did you mean "port"?' in text
    assert "durability" in text and '"full"' in text


def test_a_broken_toml_file_is_refused_with_its_position(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text("port = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_server_settings(str(path))
    with pytest.raises(ConfigError, match="cannot read the settings file"):
        load_server_settings(str(tmp_path / "missing.toml"))


def test_docs_server_md_is_current():
    current = (ROOT / "docs" / "server.md").read_text(encoding="utf-8")
    assert current == reference(), (
        "docs/server.md is out of date with config/settings.py; run `make docs` and commit it")

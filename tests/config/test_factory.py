"""The factory's config (site.toml): docs/factory.md is generated from its schema, the example
validates, and a site's token comes from its file or the environment with a sentence if not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from floe.config.factory import (
    SHAPE_SCHEMA,
    SITE_SCHEMA,
    ShapeConfig,
    SiteConfig,
    factory_config,
    load_factory_config,
    reference,
    site_token,
    to_toml,
)
from floe.config.schema import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_docs_factory_md_is_current():
    current = (ROOT / "docs" / "factory.md").read_text(encoding="utf-8")
    assert current == reference(), (
        "docs/factory.md is out of date with config/factory.py; run `make docs` and commit it")


def test_the_example_site_toml_validates_with_its_workdir_made_absolute():
    config = load_factory_config(ROOT / "examples" / "site.toml")
    assert [site.plugin for site in config.sites] == ["local"]
    assert config.workdir.is_absolute() and config.workdir.name == "factory"
    assert config.factory_id == "workstation"


def a_site(token_file: str) -> SiteConfig:
    document = {"matchmaker": "http://127.0.0.1:8080",
                "sites": [{"name": "a", "plugin": "local", "token_file": token_file,
                           "shapes": [{"name": "s"}]}]}
    return factory_config(document).sites[0]


def test_a_site_token_comes_from_its_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOE_SITE_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.touch(mode=0o600)
    token_file.write_text("floe_s_abc\n")
    assert site_token(a_site(str(token_file))) == "floe_s_abc"
    monkeypatch.setenv("FLOE_SITE_TOKEN", "floe_s_env")
    assert site_token(a_site("")) == "floe_s_env"
    token_file.write_text("")
    with pytest.raises(ConfigError, match="is empty; write the token"):
        site_token(a_site(str(token_file)))
    monkeypatch.delenv("FLOE_SITE_TOKEN")
    with pytest.raises(ConfigError, match="no site token: set token_file, or FLOE_SITE_TOKEN"):
        site_token(a_site(""))


def test_a_bare_shape_memory_is_refused_naming_bytes_and_the_fix():
    document = {"matchmaker": "http://127.0.0.1:8080",
                "sites": [{"name": "a", "plugin": "local", "memory_headroom_min": 256,
                           "shapes": [{"name": "s", "memory": 2048, "disk": "10GiB"}]}]}
    with pytest.raises(ConfigError) as caught:
        factory_config(document)
    assert sorted(caught.value.problems) == [
        'site.toml: sites[0].memory_headroom_min: 256 is 256B: a size without a unit counts '
        'bytes, and here it must be 0 or at least 1MB; write "256MiB" or "256MB" for that many '
        'megabytes',
        'site.toml: sites[0].shapes[0].memory: 2048 is 2KiB: a size without a unit counts '
        'bytes, and here it must be at least 1MB; write "2048MiB" or "2048MB" for that many '
        'megabytes']


@pytest.mark.parametrize(("value", "said"), [
    (14, "14 is 14s (a duration without a unit counts seconds)"),
    ("30m", '"30m" is less than 1h'),
])
def test_keep_pilot_logs_too_short_to_be_meant_is_refused_naming_seconds(value, said):
    document = {"matchmaker": "http://127.0.0.1:8080",
                "sites": [{"name": "a", "plugin": "local", "keep_pilot_logs": value,
                           "shapes": [{"name": "s"}]}]}
    with pytest.raises(ConfigError) as caught:
        factory_config(document)
    assert caught.value.problems == [
        f"site.toml: sites[0].keep_pilot_logs: {said}: here a duration must be 0 or at least "
        '1h and at most 366d, such as "14d" or "12h"']
    document["sites"][0]["keep_pilot_logs"] = 0  # for ever
    assert factory_config(document).sites[0].keep_pilot_logs == 0


def test_a_site_token_file_holding_more_than_the_token_is_refused_without_echoing_it(
        tmp_path):
    token_file = tmp_path / "token"
    token_file.touch(mode=0o600)
    token_file.write_text("factory token of site a (shown only now; ...):\nfloe_s_secret\n")
    with pytest.raises(ConfigError) as refused:
        site_token(a_site(str(token_file)))
    assert str(refused.value).endswith(
        f"site a: token_file {token_file} holds more than a token; the file must hold the "
        "token `floe site add` printed, alone")
    assert "floe_s_secret" not in str(refused.value)


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_a_site_token_file_other_users_can_read_is_refused_with_the_fix(tmp_path, mode):
    token_file = tmp_path / "token"
    token_file.write_text("floe_s_abc\n")
    token_file.chmod(mode)
    with pytest.raises(ConfigError) as refused:
        site_token(a_site(str(token_file)))
    assert str(refused.value).endswith(
        f"site a: token_file {token_file} can be read by other users (mode {mode:04o}), and the "
        f"token lets anyone start pilots for the site; make it yours alone: chmod 600 "
        f"{token_file}")


def test_a_users_or_a_pilots_token_given_as_the_site_token_is_refused_naming_the_fix(
        tmp_path, monkeypatch):
    monkeypatch.setenv("FLOE_SITE_TOKEN", "floe_u_abc")
    with pytest.raises(ConfigError) as caught:
        site_token(a_site(""))
    assert str(caught.value) == (
        "site a: FLOE_SITE_TOKEN holds a user's token (floe_u_...), not the site's factory "
        "token (floe_s_...): on the matchmaker's host, `floe site add a` prints it once, and "
        "`floe site token a` replaces a lost one")
    token_file = tmp_path / "token"
    token_file.touch(mode=0o600)
    token_file.write_text("floe_p_abc\n")
    with pytest.raises(ConfigError, match=f"token_file {token_file} holds a pilot token "):
        site_token(a_site(str(token_file)))


def a_document(**more: object) -> dict:
    return {"matchmaker": "http://file.example:8080",
            "sites": [{"name": "a", "plugin": "local", "shapes": [{"name": "s"}]}], **more}


def test_the_matchmaker_is_the_option_else_floe_url_else_the_files(tmp_path, monkeypatch):
    path = tmp_path / "site.toml"
    path.write_text(to_toml(a_document()))
    monkeypatch.delenv("FLOE_URL", raising=False)
    config = load_factory_config(path)
    assert (config.matchmaker, config.matchmaker_source) == ("http://file.example:8080",
                                                             str(path))
    monkeypatch.setenv("FLOE_URL", "https://env.example:8443/")
    config = load_factory_config(path)
    assert (config.matchmaker, config.matchmaker_source) == (
        "https://env.example:8443", f"FLOE_URL, not {path}'s http://file.example:8080")
    config = load_factory_config(path, "http://option.example:8080")
    assert (config.matchmaker, config.matchmaker_source) == (
        "http://option.example:8080", f"--matchmaker, not {path}'s http://file.example:8080")
    path.write_text(to_toml({k: v for k, v in a_document().items() if k != "matchmaker"}))
    assert load_factory_config(path).matchmaker_source == "FLOE_URL"  # the file may leave it out


@pytest.mark.parametrize(("option", "said"), [
    ("localhost:8080", "--matchmaker localhost:8080 has no scheme; write http://localhost:8080 "
                       "(or https://localhost:8080 where the matchmaker serves TLS)"),
    (None, "FLOE_URL=ftp://x is not an http:// or https:// address")])
def test_a_matchmaker_address_that_cannot_be_used_is_refused_naming_where_it_came_from(
        tmp_path, monkeypatch, option, said):
    monkeypatch.setenv("FLOE_URL", "ftp://x")
    path = tmp_path / "site.toml"
    path.write_text(to_toml(a_document()))
    with pytest.raises(ConfigError) as caught:
        load_factory_config(path, option)
    assert str(caught.value) == said


def test_a_matchmaker_without_a_scheme_in_the_file_is_refused_with_how_to_write_it():
    with pytest.raises(ConfigError) as caught:
        factory_config(a_document(matchmaker="floe.example.org:8443"))
    assert str(caught.value) == (
        'site.toml: matchmaker: "floe.example.org:8443" has no scheme; write '
        "http://floe.example.org:8443 (or https://floe.example.org:8443 where the matchmaker "
        "serves TLS)")


def test_a_cacert_that_is_no_certificate_is_refused_naming_it(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"site.toml: cacert: cannot load {bad} as a CA "
                                          r"certificate \(PEM\): "):
        factory_config(a_document(cacert=str(bad)))


def test_the_typed_site_and_shape_settings_have_exactly_the_schemas_fields():
    assert [f.name for f in dataclasses.fields(SiteConfig)] == list(SITE_SCHEMA.fields)
    assert [f.name for f in dataclasses.fields(ShapeConfig)] == list(SHAPE_SCHEMA.fields)


def test_a_document_written_as_toml_reads_back_as_the_same_config(tmp_path):
    document = {"matchmaker": "http://127.0.0.1:8080", "factory_id": "f1",
                "workdir": str(tmp_path / "w"),
                "sites": [{"name": "a-b", "plugin": "slurm", "max_queued": 3, "max_total": 3,
                           "memory_headroom": 0.25, "environment": {"X_Y": 'say "hi"'},
                           "options": {"partition": "short", "request_disk": True},
                           "shapes": [{"name": "s", "memory": "1GiB",
                                       "directives": ["--constraint=avx2"]}]}]}
    path = tmp_path / "site.toml"
    path.write_text(to_toml(document))
    config = load_factory_config(path)
    [site] = config.sites
    assert (config.factory_id, site.name, site.max_queued) == ("f1", "a-b", 3)
    assert site.environment == {"X_Y": 'say "hi"'} and site.memory_headroom == 0.25
    assert site.options == {"partition": "short", "request_disk": True}
    assert site.shapes[0].directives == ("--constraint=avx2",)


def test_a_nul_in_what_reaches_the_pilots_environment_is_refused(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(to_toml({"matchmaker": "http://127.0.0.1:8080", "workdir": str(tmp_path),
                             "sites": [{"name": "a", "plugin": "local",
                                        "shapes": [{"name": "s"}],
                                        "environment": {"X": "a\0b"},
                                        "system": {"cvmfs": "\0"}}]}))
    with pytest.raises(ConfigError) as caught:
        load_factory_config(path)
    assert caught.value.problems == [
        f'{path}: sites[0].environment.X: holds a NUL character (\\u0000), which cannot be '
        'passed to a program: remove it from "a\\u0000b"',
        f'{path}: sites[0].system.cvmfs: holds a NUL character (\\u0000), which cannot be '
        'passed to a program: remove it from "\\u0000"']


@pytest.mark.parametrize(("site", "why"), [
    ({"plugin": "slurm", "ssh": {"host": "icecube@login"}},
     "a site reached over ssh shares no filesystem with the factory"),
    ({"plugin": "htcondor"}, "the htcondor plugin transfers the pilot"),
])
def test_a_shared_filesystem_is_refused_where_the_nodes_cannot_share_one(site, why):
    document = {"matchmaker": "http://127.0.0.1:8080",
                "sites": [{"name": "a", "shapes": [{"name": "s"}], "shared_filesystem": True,
                           **site}]}
    with pytest.raises(ConfigError) as caught:
        factory_config(document)
    assert caught.value.problems == [
        f"site.toml: sites[0].shared_filesystem: {why}; remove shared_filesystem"]
    del document["sites"][0]["shared_filesystem"]
    assert not factory_config(document).sites[0].shared_filesystem


def test_a_table_written_a_level_too_high_is_told_where_it_belongs():
    document = {"matchmaker": "http://127.0.0.1:8080", "ssh": {"host": "icecube@login"},
                "sites": [{"name": "a", "plugin": "local", "cpus": 2,
                           "shapes": [{"name": "s"}]}]}
    with pytest.raises(ConfigError) as caught:
        factory_config(document)
    assert caught.value.problems == [
        'site.toml: ssh: unknown key; it belongs inside "sites"',
        'site.toml: sites[0].cpus: unknown key; it belongs inside "shapes"']

"""The token from a file (`--token-file`, `FLOE_TOKEN_FILE`), so that it stays off the command
line that `ps` shows: its place in the one order the token is looked for in, the refusals of a
file other users can read, an empty one and one holding more than a token; and the client file
found under `$XDG_CONFIG_HOME`, the cache under `$XDG_CACHE_HOME`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from floe.cli.places import cache_dir, config_dir
from tests.pilot.live import LiveMatchmaker

from .support import run

WRONG = "floe_u_not-a-token-anyone-was-given"


def token_file(tmp_path: Path, token: str, name: str = "floe.token", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def client_file(tmp_path: Path, matchmaker: LiveMatchmaker, token: str | None = None) -> Path:
    path = tmp_path / "client.toml"
    path.write_text(f'url = "{matchmaker.url}"\n'
                    + (f'token = "{token}"\n' if token is not None else ""))
    path.chmod(0o600)
    return path


def test_a_token_file_names_the_caller(capsys, matchmaker, tmp_path):
    path = token_file(tmp_path, matchmaker.user_token)
    status, _, err = run(capsys, "datasets", "--url", matchmaker.url, "--token-file", str(path))
    assert status == 0, err


def test_floe_token_file_names_the_caller(capsys, matchmaker, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOE_TOKEN_FILE", str(token_file(tmp_path, matchmaker.user_token)))
    status, _, err = run(capsys, "datasets", "--url", matchmaker.url)
    assert status == 0, err


def test_the_token_is_the_first_of_the_options_the_environment_and_the_client_file(
        capsys, matchmaker, tmp_path, monkeypatch):
    """--token, --token-file, FLOE_TOKEN, FLOE_TOKEN_FILE, client.toml: the first given counts,
    and a token file after it is not even read."""
    good = str(token_file(tmp_path, matchmaker.user_token))
    wrong = str(token_file(tmp_path, WRONG, "wrong.token"))
    missing = str(tmp_path / "missing.token")
    monkeypatch.setenv("FLOE_CONFIG", str(client_file(tmp_path, matchmaker, WRONG)))

    def outcome(*options: str) -> str:
        status, _, err = run(capsys, "datasets", *options)
        return "ok" if status == 0 else err

    assert outcome("--token", matchmaker.user_token, "--token-file", missing) == "ok"
    monkeypatch.setenv("FLOE_TOKEN", WRONG)
    monkeypatch.setenv("FLOE_TOKEN_FILE", missing)
    assert outcome("--token-file", good) == "ok"
    assert "this token is not known" in outcome("--token-file", wrong)
    monkeypatch.setenv("FLOE_TOKEN", matchmaker.user_token)
    assert outcome() == "ok"
    monkeypatch.delenv("FLOE_TOKEN")
    monkeypatch.setenv("FLOE_TOKEN_FILE", good)
    assert outcome() == "ok"
    monkeypatch.delenv("FLOE_TOKEN_FILE")
    assert "this token is not known" in outcome()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_token_file_other_users_can_read_is_refused_with_the_fix(capsys, tmp_path, mode):
    path = token_file(tmp_path, "floe_u_secret", mode=mode)
    status, out, err = run(capsys, "datasets", "--url", "http://127.0.0.1:9", "--token-file",
                           str(path))
    assert (status, out) == (1, "")
    assert err == (f"floe datasets: --token-file {path} can be read by other users (mode "
                   f"{mode:04o}); make it yours alone: chmod 600 {path}\n")


def test_a_client_file_other_users_can_read_is_refused_when_its_token_counts(
        capsys, matchmaker, tmp_path, monkeypatch):
    path = client_file(tmp_path, matchmaker, matchmaker.user_token)
    monkeypatch.setenv("FLOE_CONFIG", str(path))
    path.chmod(0o644)
    status, out, err = run(capsys, "datasets")
    assert (status, out) == (1, "")
    assert err == (f"floe datasets: {path} holds your token and can be read by other users "
                   f"(mode 0644); make it yours alone: chmod 600 {path}\n")
    # Its token given another way, or none in it at all: its address is no secret.
    assert run(capsys, "datasets", "--token", matchmaker.user_token)[0] == 0
    path.write_text(f'url = "{matchmaker.url}"\n')
    assert "no token given" in run(capsys, "datasets")[2]


def test_a_token_file_that_is_empty_or_holds_more_than_a_token_is_refused(capsys, tmp_path,
                                                                          monkeypatch):
    empty = token_file(tmp_path, "  ", "empty.token")
    monkeypatch.setenv("FLOE_TOKEN_FILE", str(empty))
    status, _, err = run(capsys, "status", "--url", "http://127.0.0.1:9")
    assert status == 1
    assert err == (f"floe status: FLOE_TOKEN_FILE={empty} is empty; write your token into it "
                   "(`floe user add` printed it)\n")
    two = token_file(tmp_path, "floe_u_one\nfloe_u_two", "two.token")
    status, _, err = run(capsys, "status", "--url", "http://127.0.0.1:9", "--token-file",
                         str(two))
    assert status == 1
    assert err == (f"floe status: --token-file {two} holds more than a token; the file must "
                   "hold your token alone\n")
    missing = tmp_path / "missing.token"
    status, _, err = run(capsys, "status", "--url", "http://127.0.0.1:9", "--token-file",
                         str(missing))
    assert status == 1
    assert err == f"floe status: --token-file {missing}: No such file or directory\n"


def test_a_token_file_may_be_a_pipe(capsys, matchmaker):
    """`--token-file <(pass show floe)`: a pipe, which no other user can open."""
    read, write = os.pipe()
    os.write(write, matchmaker.user_token.encode())
    os.close(write)
    try:
        assert stat.S_ISFIFO(os.fstat(read).st_mode)
        status, _, err = run(capsys, "datasets", "--url", matchmaker.url, "--token-file",
                             f"/dev/fd/{read}")
    finally:
        os.close(read)
    assert status == 0, err


def test_the_client_file_is_found_under_xdg_config_home(capsys, matchmaker, tmp_path,
                                                        monkeypatch):
    monkeypatch.delenv("FLOE_CONFIG")
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    (xdg / "floe").mkdir(parents=True)
    client_file(xdg / "floe", matchmaker, matchmaker.user_token)
    status, _, err = run(capsys, "datasets")
    assert status == 0, err
    assert config_dir() == xdg / "floe"
    # A relative XDG_CONFIG_HOME is ignored, as the specification says: ~/.config it is.
    monkeypatch.setenv("XDG_CONFIG_HOME", "xdg")
    (home / ".config" / "floe").mkdir(parents=True)
    client_file(home / ".config" / "floe", matchmaker, WRONG)
    status, _, err = run(capsys, "datasets")
    assert status == 1 and "this token is not known" in err
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert config_dir() == home / ".config" / "floe"


def test_the_cache_is_under_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" / "floe"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert cache_dir() == tmp_path / "home" / ".cache" / "floe"

"""`floe --version`, and `floe completion bash|zsh`: scripts made from the parser itself,
driven here by a real bash (and zsh where it is installed) as a TAB would drive them."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import floe
from floe.cli.main import main as floe_main


def test_floe_version_prints_the_version_and_succeeds(capsys):
    with pytest.raises(SystemExit) as exited:
        floe_main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"floe {floe.__version__}\n"


def script(shell: str, capsys) -> str:
    assert floe_main(["completion", shell]) == 0
    return capsys.readouterr().out


BASH_CASES = [
    ("floe su", "submit suspend"),
    ("floe user a", "add"),
    ("floe user add --a", "--admin"),
    ("floe factory --log-level ''", "debug info warning"),
    ("floe docs ''", "config factory server"),
    ("floe completion ''", "bash zsh"),
    ("floe server --db ''", ""),  # a value: file names (complete -o default)
    ("floe submit ''", ""),  # a positional without choices: file names
    ("floe --ver", "--version"),
]


@pytest.mark.parametrize(("line", "offered"), BASH_CASES)
def test_bash_completes_commands_options_and_choices(line, offered, capsys, tmp_path):
    (tmp_path / "floe.bash").write_text(script("bash", capsys))
    driver = (f". {tmp_path / 'floe.bash'}\n"
              f"COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n"
              "_floe; echo \"${COMPREPLY[*]}\"\n"
              "complete -p floe\n")
    done = subprocess.run(["bash", "--norc", "-c", driver], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    reply, registered = done.stdout.splitlines()
    assert reply == offered
    assert registered == "complete -o default -F _floe floe"


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_the_same_words(capsys, tmp_path):
    (tmp_path / "floe.zsh").write_text(script("zsh", capsys))
    driver = (f"compdef() {{ print -r -- \"compdef $*\"; }}\n"
              f". {tmp_path / 'floe.zsh'}\n"
              "compadd() { shift; print -r -- \"$*\"; (( $# )); }\n"
              "_files() { print -r -- files; }\n"
              "t() { words=(\"$@\"); CURRENT=${#words}; PREFIX=${words[CURRENT]}; _floe; }\n"
              "t floe user ''\n"
              "t floe user add --a\n"
              "t floe factory --log-level ''\n"
              "t floe submit ''\n")
    done = subprocess.run(["zsh", "-f", "-c", driver], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "compdef _floe floe",
        "add token share",
        "-h --help --admin --share --db --json",  # compadd itself keeps those with the prefix
        "debug info warning",
        "", "files",  # nothing but file names for a dataset config
    ]

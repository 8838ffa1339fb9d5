"""The pilot's command line: `--probe` JSON for site admins, through `floe pilot` and directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from floe.cli.main import main as floe
from floe.pilot.main import main
from floe.pilot.online import seconds_argument
from floe.pilot.slot import SAFETY_MARGIN

ROOT = Path(__file__).resolve().parents[2]


def test_probe_prints_the_slot_and_where_each_number_came_from(tmp_path, capsys):
    assert main(["--probe", "--site", "uw-madison", "--lifetime", "2h",
                 "--scratch", str(tmp_path)]) == 0
    probe = json.loads(capsys.readouterr().out)
    assert probe["site"] == "uw-madison"
    assert probe["scratch"] == str(tmp_path)
    assert 7200 - SAFETY_MARGIN - 5 <= probe["seconds_left"] <= 7200 - SAFETY_MARGIN
    assert probe["cpus"] >= 1 and probe["memory"] > 0 and probe["disk"] > 0
    assert set(probe["sources"]) >= {"cpus", "memory", "disk", "gpus", "seconds"}
    assert probe["limits"]["cpus"][probe["sources"]["cpus"]] == probe["cpus"]
    assert "linux" in probe["os"]


def test_floe_pilot_takes_the_same_options(tmp_path, capsys):
    assert floe(["pilot", "--probe", "--site", "here", "--scratch", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["site"] == "here"


def test_probe_reads_the_batch_systems_variables_of_its_process(tmp_path):
    env = {**os.environ, "SLURM_JOB_ID": "4242", "SLURM_CPUS_ON_NODE": "1",
           "SLURM_MEM_PER_NODE": "256", "FLOE_SITE": "from-env"}
    done = subprocess.run([sys.executable, "-m", "floe.pilot.main", "--probe"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    probe = json.loads(done.stdout)
    assert (probe["batch_system"], probe["batch_job_id"]) == ("slurm", "4242")
    assert (probe["cpus"], probe["memory"]) == (1, 256 * 2**20)
    assert probe["site"] == "from-env"


def test_a_bad_lifetime_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--probe", "--lifetime", "soon"])
    assert exit.value.code == 2
    assert "expected a duration" in capsys.readouterr().err


@pytest.mark.parametrize("horizon", ["-1", "soon", "inf"])
def test_a_bad_prefetch_horizon_is_refused_by_the_parser(horizon, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--probe", "--prefetch-horizon", horizon])
    assert exit.value.code == 2
    assert "is not a number of seconds (0 or more) nor a duration" in capsys.readouterr().err


@pytest.mark.parametrize("horizon, seconds", [("0", 0.0), ("0.5", 0.5), ("0.5s", 0.5),
                                              ("2s", 2.0), ("1m", 60.0)])
def test_the_prefetch_horizon_is_seconds_or_a_duration(horizon, seconds):
    assert seconds_argument(horizon) == seconds


def test_without_a_mode_the_pilot_says_what_it_can_do(capsys):
    assert main([]) == 2
    assert "--probe, or --run CONFIG.json --job N" in capsys.readouterr().err


def test_run_mode_needs_a_job(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "x.json")]) == 2
    assert "--run needs --job N" in capsys.readouterr().err


def test_the_online_pilot_needs_a_token(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FLOE_PILOT_TOKEN", raising=False)
    assert main(["--matchmaker", "http://127.0.0.1:9", "--scratch", str(tmp_path)]) == 2
    assert "no pilot token: give --token-file FILE" in capsys.readouterr().err


def test_the_online_pilot_refuses_a_token_in_its_environment(tmp_path, capsys, monkeypatch):
    (tmp_path / "token").write_text("floe_p_x\n")
    monkeypatch.setenv("FLOE_PILOT_TOKEN", "floe_p_x")
    assert main(["--matchmaker", "http://127.0.0.1:9", "--token-file",
                 str(tmp_path / "token")]) == 2
    assert "FLOE_PILOT_TOKEN is set: a token in the environment can be read by every task" in \
        capsys.readouterr().err


def test_the_online_pilot_refuses_an_empty_token_file(tmp_path, capsys):
    (tmp_path / "token").write_text("\n")
    assert main(["--matchmaker", "http://127.0.0.1:9", "--token-file",
                 str(tmp_path / "token")]) == 2
    assert f"--token-file {tmp_path / 'token'} is empty" in capsys.readouterr().err


def test_the_online_pilot_refuses_a_matchmaker_that_is_not_a_url(tmp_path, capsys):
    (tmp_path / "token").write_text("floe_p_x\n")
    assert main(["--matchmaker", "floe.example.org", "--token-file",
                 str(tmp_path / "token")]) == 2
    assert "expected an http:// or https:// URL" in capsys.readouterr().err


def test_a_token_transferred_as_a_file_is_read_and_taken_out_of_the_tasks_reach(
        tmp_path, monkeypatch):
    from floe.pilot.online import read_token

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOE_PILOT_TOKEN", raising=False)
    (tmp_path / "pilot.token").write_text("floe_p_secret\n")
    assert read_token(Path("pilot.token")) == "floe_p_secret"
    assert not (tmp_path / "pilot.token").exists()


def test_a_token_file_that_holds_no_pilot_token_alone_is_refused_and_left_alone(
        tmp_path, monkeypatch):
    from floe.pilot.online import read_token

    monkeypatch.delenv("FLOE_PILOT_TOKEN", raising=False)
    token_file = tmp_path / "pilot.token"
    for text, said in (("pilot token of site s1 (shown only now):\nfloe_p_secret\n",
                        "holds more than the token (the file must hold the token alone)"),
                       ("floe_u_mine\n", "holds a user token, not a pilot token"),
                       ("floe_s_site\n", "holds a site token, not a pilot token"),
                       ("secret\n", "holds no floe token")):
        token_file.write_text(text)
        with pytest.raises(ValueError) as refused:
            read_token(token_file)
        assert said in str(refused.value) and "floe site pilot-token SITE > FILE" in \
            str(refused.value)
        assert token_file.read_text() == text  # not used up: it is left where it was

"""`floe run CONFIG.json --job N`: a job's tasks run here, in order, in the pilot's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from floe.cli.main import main as floe
from floe.config.expressions import evaluate


def write_config(tmp_path: Path, *, fail_generate: bool = False) -> Path:
    outdir = tmp_path / "archive"
    generate = ("echo seed=$SEED energy=$0 > gen.txt; echo '{\"events\": 5}' > $FLOE_STATS"
                + ("; exit 4" if fail_generate else ""))
    config = {
        "jobs": 5,
        "steering": {"seed_base": 1000, "energies": [10, 20, 30, 40],
                     "outdir": f"file://{outdir}/$args(dataset)"},
        "tasks": [
            {"name": "generate",
             "env": {"SEED": "$eval($steering(seed_base) + $args(job))"},
             "outputs": [{"local": "gen.txt",
                          "url": "$steering(outdir)/gen_$sprintf(\"%03d\", $args(job)).txt"}],
             "modules": [{"command": ["sh", "-c", generate, "$choice($steering(energies))"]}]},
            {"name": "reco", "depends": ["generate"],
             "inputs": [{"url": "$steering(outdir)/gen_$sprintf(\"%03d\", $args(job)).txt",
                         "local": "in.txt"}],
             "modules": [{"command": "cat in.txt; echo site=$system(site_name)"}]},
        ],
    }
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(config))
    return path


def kept(tmp_path: Path, production: Path) -> Path:
    """Where `floe run` keeps an output that production stores at the file `production`."""
    return tmp_path / "work" / "outputs" / "file" / production.relative_to("/")


def test_a_job_runs_its_tasks_in_order_keeping_outputs_out_of_production(tmp_path, capsys):
    config = write_config(tmp_path)
    code = floe(["run", str(config), "--job", "3", "--dataset", "12", "--system",
                 "site_name=uw", "--workdir", str(tmp_path / "work")])
    out = capsys.readouterr().out
    assert code == 0, out
    energy = evaluate("$choice($steering(energies))", steering={"energies": [10, 20, 30, 40]},
                      args={"job": 3, "dataset": 12})
    production = tmp_path / "archive" / "12" / "gen_003.txt"
    assert not production.exists()  # trying a job out writes nothing of production's
    assert kept(tmp_path, production).read_text() == f"seed=1003 energy={energy}\n"
    assert (f"output gen.txt kept in {kept(tmp_path, production)} (production stores it at "
            f"file://{production}; --store-outputs does too)") in out
    reco_log = tmp_path / "work" / "job3" / "reco" / "floe.stdout.log"  # it read what was kept
    assert reco_log.read_text() == f"seed=1003 energy={energy}\nsite=uw\n"
    assert out.index("generate: ok") < out.index("reco: ok")
    assert 'statistics: {"events": 5}' in out
    assert str(reco_log) in out


def test_store_outputs_stores_them_where_production_does(tmp_path, capsys):
    config = write_config(tmp_path)
    work = str(tmp_path / "work")
    assert floe(["run", str(config), "--job", "3", "--task", "generate", "--workdir", work]) == 0
    production = tmp_path / "archive" / "0" / "gen_003.txt"
    assert kept(tmp_path, production).exists() and not production.exists()
    assert floe(["run", str(config), "--job", "3", "--store-outputs", "--system",
                 "site_name=uw", "--workdir", work]) == 0
    assert production.read_text().startswith("seed=1003 energy=")
    assert not kept(tmp_path, production).exists()  # it would be read, stale, from now on
    reco_log = tmp_path / "work" / "job3" / "reco" / "floe.stdout.log"
    assert reco_log.read_text() == production.read_text() + "site=uw\n"


def test_a_failed_task_fails_the_run_and_its_dependents_do_not_run(tmp_path, capsys):
    config = write_config(tmp_path, fail_generate=True)
    code = floe(["run", str(config), "--job", "0", "--workdir", str(tmp_path / "work")])
    out = capsys.readouterr().out
    assert code == 1
    assert "generate: FAILED, task_error (exit 4): module module0 exited with code 4" in out
    assert "reco: not run, because generate failed" in out
    assert not (tmp_path / "work" / "job0" / "reco").exists()


def test_one_named_task_runs_alone_and_says_its_dependencies_are_not_run(tmp_path, capsys):
    config = write_config(tmp_path)
    work = str(tmp_path / "work")
    assert floe(["run", str(config), "--job", "1", "--task", "generate", "--workdir", work]) == 0
    capsys.readouterr()
    code = floe(["run", str(config), "--job", "1", "--task", "reco", "--system", "site_name=x",
                 "--workdir", work])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("running only task reco; its dependencies (generate) are not run")
    assert "generate: ok" not in out
    production = tmp_path / "archive" / "0" / "gen_001.txt"
    assert (f"warning: input in.txt: read from {kept(tmp_path, production)}, kept by an "
            f"earlier floe run, not from file://{production}") in out


def test_json_output_carries_each_task_result(tmp_path, capsys):
    config = write_config(tmp_path)
    code = floe(["run", str(config), "--job", "2", "--task", "generate", "--json",
                 "--workdir", str(tmp_path / "work")])
    results = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [r["task"] for r in results] == ["generate"]
    assert results[0]["statistics"] == {"events": 5}
    assert results[0]["outputs"][0]["url"].endswith("/archive/0/gen_002.txt")
    assert results[0]["outputs"][0]["kept"] == str(
        kept(tmp_path, tmp_path / "archive" / "0" / "gen_002.txt"))


def test_running_again_starts_from_an_empty_scratch_directory(tmp_path, capsys):
    config = write_config(tmp_path)
    work = tmp_path / "work"
    args = ["run", str(config), "--job", "4", "--task", "generate", "--workdir", str(work)]
    assert floe(args) == 0
    (work / "job4" / "generate" / "stale.txt").write_text("from before")
    assert floe(args) == 0
    assert not (work / "job4" / "generate" / "stale.txt").exists()


def test_a_directory_not_made_by_floe_run_is_left_alone(tmp_path, capsys):
    config = write_config(tmp_path)
    precious = tmp_path / "work" / "job0" / "generate"
    precious.mkdir(parents=True)
    (precious / "thesis.tex").write_text("keep me")
    code = floe(["run", str(config), "--job", "0", "--workdir", str(tmp_path / "work")])
    assert code == 2
    assert "exists and was not made by floe run" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "keep me"


@pytest.mark.parametrize(("extra", "message"), [
    (["--job", "5"], "--job 5 is out of range: the dataset has jobs 0 to 4"),
    (["--job", "0", "--task", "nope"], "--task nope: the dataset has no such task"),
    (["--job", "0", "--system", "novalue"], "--system 'novalue': expected KEY=VALUE"),
])
def test_requests_the_config_cannot_serve_are_refused_with_a_reason(tmp_path, capsys, extra,
                                                                    message):
    config = write_config(tmp_path)
    assert floe(["run", str(config), *extra, "--workdir", str(tmp_path / "w")]) == 2
    assert message in capsys.readouterr().err


def test_an_invalid_config_is_refused_with_its_problems(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"jobs": 0, "tasks": []}))
    assert floe(["run", str(path), "--job", "0", "--workdir", str(tmp_path / "w")]) == 2
    assert "jobs" in capsys.readouterr().err

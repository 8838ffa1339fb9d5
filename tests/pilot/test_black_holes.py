"""A black-hole host, with real pilots against a real matchmaker: a node where every task fails
at once is kept out after `black_hole_failures` (5) failures of different tasks, across its
pilots, while a good node runs the dataset to the end; the next pilot on the bad node gets no
work and is told why, and `floe sites` lists the host."""

from __future__ import annotations

import urllib.request

from .live import LiveMatchmaker, wait_for

FLAKY_NODE = {"description": "fails on a broken node", "jobs": 40, "max_retries": 3, "tasks": [{
    "name": "work", "requirements": {"walltime": "1m"},
    "modules": [{"command": ["sh", "-c", 'test -z "$BROKEN" && sleep 0.2']}]}]}


def test_a_black_hole_is_kept_out_across_its_pilots_within_five_failures(
        matchmaker: LiveMatchmaker, tmp_path, capsys):
    from floe.cli.main import main as floe

    dataset = matchmaker.submit(FLAKY_NODE)
    (tmp_path / "good").mkdir()
    good = matchmaker.start_pilot(tmp_path / "good", "--idle-timeout", "3s",
                                  env={"FLOE_HOST": "good-node"}, log_name="good.log")
    wait_for(lambda: "complete" in matchmaker.states(dataset), 60, "a first task done")
    bad_env = {"FLOE_HOST": "bad-node", "BROKEN": "1"}
    for number in (1, 2):
        (tmp_path / f"bad{number}").mkdir()
        bad = matchmaker.start_pilot(tmp_path / f"bad{number}", "--idle-timeout", "2s",
                                     env=bad_env, log_name=f"bad{number}.log")
        bad.wait(60)
    assert good.wait(120) == 0
    assert matchmaker.states(dataset) == ["complete"] * 40
    [site] = matchmaker.get("/sites")["sites"]
    [hole] = site["black_holes"]
    assert hole["host"] == "bad-node" and hole["until"] - hole["since"] == 3600
    # Marked at its fifth failure; nothing was given to the host after that, and the second
    # pilot there ran nothing (attempts already running there when it was marked may have
    # failed after).
    on_bad = [a for a in matchmaker.attempts(dataset) if a["host"] == "bad-node"]
    failed = [a for a in on_bad if a["state"] == "failed"]
    # (its reports come in bulk: a sixth that ran beside the fifth may end in the same moment)
    assert len([a for a in failed if a["ended"] < hole["since"]]) <= 4
    assert len([a for a in failed if a["ended"] <= hole["since"]]) >= 5
    assert all(a["started"] <= hole["since"] for a in on_bad)
    assert len({a["pilot_id"] for a in on_bad}) == 1
    second = (tmp_path / "bad2.log").read_text()
    assert "this host (bad-node) gets no work for" in second, second[-3000:]
    assert "it looks like a black hole: 5 different tasks failed here within 2m of their " \
           "start, none succeeded" in second

    assert floe(["sites", "--url", matchmaker.url, "--token", matchmaker.user_token]) == 0
    out = capsys.readouterr().out
    assert "hosts that get no work (black holes):" in out and "bad-node" in out
    request = urllib.request.Request(f"{matchmaker.url}/metrics")
    request.add_header("Authorization", f"Bearer {matchmaker.user_token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        metrics = answer.read().decode()
    assert 'floe_black_hole_hosts{site="site-a"} 1' in metrics
    assert "floe_black_holes_found_total 1" in metrics

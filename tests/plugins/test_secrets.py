"""The factory's secrets stay in the factory: its site token (and any user or pilot token in its
environment) reaches neither the batch commands nor the pilots, while the pilot token it is
given reaches its pilot as a private file (through the private submit script), never in an
environment.

The batch system here is the worst kind: a fake submit command (first of `commands_dir`) that,
as Slurm's qsub wrapper or `qsub -V` would, hands the submitter's whole environment to the job.
It records that environment and the script it got, then runs the script as the job, whose
pilot records its own environment. The pilot's own code also drops these variables before any
task runs (pilot/online.py), so only a test at this level sees a leak from the factory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from floe.plugins import create_plugin
from floe.plugins.base import PilotShape, PluginSettings
from floe.plugins.jobs import PilotJob
from tests.plugins.pilots import fake_command

SITE_TOKEN = "floe_s_site-secret-of-the-factory"
USER_TOKEN = "floe_u_user-secret-of-the-admin"
STRAY_PILOT_TOKEN = "floe_p_left-in-the-factorys-environment"
PILOT_TOKEN = "floe_p_given-to-these-pilots"
SUBMIT_COMMANDS = {"slurm": "sbatch", "sge": "qsub", "pbs": "qsub"}
# Records what it got, then runs the job (its script, the last argument) with its own whole
# environment, and answers with a job id every plugin reads.
EXPORTING_SUBMIT = """
out={out}
eval script=\\"\\${{$#}}\\"
env > "$out/submit.env"
cp "$script" "$out/script.sh"
stat -c %a "$script" > "$out/script.mode"
/bin/sh "$script" >"$out/job.log" 2>&1
echo 101
"""
# Runs what the launcher runs with -c (writing the pilot and its token), and stands for the
# pilot otherwise: records its environment, its token file and that file's mode.
RECORDING_PYTHON = """
if [ "$1" = -c ] || [ "$1" = -I ]; then exec /usr/bin/env python3 "$@"; fi
env > {out}/job.env
cat "$3" > {out}/token.seen
stat -c %a "$3" > {out}/token.mode
"""


@pytest.mark.parametrize("system", sorted(SUBMIT_COMMANDS))
def test_the_site_token_reaches_neither_the_batch_command_nor_the_pilot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system: str) -> None:
    monkeypatch.setenv("FLOE_SITE_TOKEN", SITE_TOKEN)
    monkeypatch.setenv("FLOE_TOKEN", USER_TOKEN)
    monkeypatch.setenv("FLOE_PILOT_TOKEN", STRAY_PILOT_TOKEN)
    monkeypatch.setenv("FLOE_TEST_ORDINARY", "passed-on")
    out = tmp_path / "seen"
    out.mkdir()
    bin_dir = fake_command(tmp_path / "bin", SUBMIT_COMMANDS[system],
                           EXPORTING_SUBMIT.format(out=out))
    workdir = tmp_path / "factory"
    plugin = create_plugin(system, PluginSettings(factory_id="f1", workdir=workdir,
                                                  commands_dir=bin_dir))
    # A Python that runs the launcher's own snippets, and records what the pilot would get.
    python = fake_command(tmp_path / "python", "python3", RECORDING_PYTHON.format(out=out))
    job = PilotJob(b"not a real pilot", ["--site", "s"], [PILOT_TOKEN],
                   python=str(python / "python3"))

    assert plugin.submit(PilotShape("small"), job) == ["101"]

    submit_env = (out / "submit.env").read_text().splitlines()
    script = (out / "script.sh").read_text()
    job_env = (out / "job.env").read_text().splitlines()
    # The fake passes the factory's environment on: what is missing was kept from it.
    assert "FLOE_TEST_ORDINARY=passed-on" in submit_env
    assert "FLOE_TEST_ORDINARY=passed-on" in job_env
    for secret in (SITE_TOKEN, USER_TOKEN, STRAY_PILOT_TOKEN):
        assert not any(secret in line for line in submit_env), f"{secret} reached {system}"
        assert secret not in script
        assert not any(secret in line for line in job_env), f"{secret} reached the pilot"
    assert not any(line.startswith(("FLOE_SITE_TOKEN=", "FLOE_TOKEN=")) for line in job_env)
    # The pilot token travels in the script, which only this user can read, and reaches the
    # pilot as a file of its own, in no environment.
    assert PILOT_TOKEN in script
    assert (out / "token.seen").read_text() == PILOT_TOKEN
    assert (out / "token.mode").read_text().strip() == "600"
    assert not any(PILOT_TOKEN in line for line in submit_env + job_env)
    # Only this user could read the script while the batch system took it; none is kept.
    assert int((out / "script.mode").read_text(), 8) & 0o077 == 0
    assert not list((workdir / "scripts").glob("*.sh"))

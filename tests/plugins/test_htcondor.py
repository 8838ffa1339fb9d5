"""The HTCondor plugin: the submit description it builds through the htcondor2 bindings, the
pilots it reads from real ClassAds, and its handling of the bindings' errors when no schedd
answers, or one that never answers (no HTCondor daemons can be installed on the test machines,
so nothing here submits for real)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import classad2
import htcondor2
import pytest

from floe.config.resources import GIB, MIB
from floe.plugins.base import (
    BatchError,
    PilotInfo,
    PilotShape,
    PilotState,
    PluginConfigError,
    PluginSettings,
)
from floe.plugins.hosts import FACTORY_SECRETS
from floe.plugins.htcondor import HTCondorPlugin, pilots_from_ads, quote_argument
from floe.plugins.jobs import BUNDLE_NAME, CommandJob, PilotJob

SHAPE = PilotShape("pair", cpus=2, memory=512 * MIB, disk=GIB, gpus=1, walltime=600)


def make_plugin(workdir: Path, command_timeout: float = 60.0,
                **options: object) -> HTCondorPlugin:
    return HTCondorPlugin(PluginSettings(factory_id="f1", workdir=workdir,
                                         command_timeout=command_timeout, options=options))


@pytest.fixture
def silent_collector() -> Iterator[socket.socket]:
    """A port that takes connections and never says a word: the bindings, asked to find a
    schedd there, wait 60 s for HTCondor's own timeout, holding Python's global lock."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server


PILOT = b"the one-file pilot"
JOB = PilotJob(PILOT, ["--site", "wisc"], ["floe_p_first", "floe_p_second"],
               {"FLOE_SITE": "wisc"})


def rendered(plugin: HTCondorPlugin, shape: PilotShape = SHAPE,
             job: PilotJob | CommandJob = JOB) -> dict[str, str]:
    """The submit description as the bindings render it, as command -> value."""
    text = str(plugin.description(shape, job))
    lines = [line.split(" = ", 1) for line in text.splitlines() if " = " in line]
    return {name: value for name, value in lines}


def test_the_description_asks_for_the_shape_and_carries_the_tag(tmp_path: Path) -> None:
    submit = rendered(make_plugin(tmp_path))
    assert submit["request_cpus"] == "2"
    assert submit["request_memory"] == "768"       # MiB: 512 plus the minimum headroom
    assert submit["request_disk"] == str(1024 * 1024)  # KiB
    assert submit["request_gpus"] == "1"
    assert submit["allowed_job_duration"] == "900"
    assert submit["MY.FloeFactory"] == '"f1"'
    assert submit["MY.FloeShape"] == '"pair"'
    assert submit["batch_name"] == "floe-f1-pair"
    assert submit["output"] == f"{tmp_path}/logs/floe-f1-pair-$(ClusterId).$(ProcId).out"


def test_the_job_carries_the_pilot_and_each_pilot_its_own_token(tmp_path: Path) -> None:
    """No shared filesystem: the pilot and its launcher are transferred into the job's scratch
    directory, and the output comes back; each token is in its own pilot's launcher only,
    readable by this user, never in the job ad."""
    plugin = make_plugin(tmp_path)
    submit = rendered(plugin)
    assert (submit["executable"], submit["transfer_executable"]) == ("$(script)", "true")
    assert (submit["should_transfer_files"], submit["when_to_transfer_output"]) == (
        "YES", "ON_EXIT_OR_EVICT")
    [carried] = submit["transfer_input_files"].split(",")
    assert Path(carried).name == BUNDLE_NAME and Path(carried).read_bytes() == PILOT
    assert "floe_p_" not in "".join(submit.values())
    first, second = plugin.scripts(SHAPE, JOB)
    assert first.read_text().startswith("#!/bin/sh\n")
    assert "'floe_p_first'" in first.read_text()
    assert "floe_p_first" not in second.read_text()
    assert all(path.stat().st_mode & 0o077 == 0 for path in (first, second))
    assert f"cp {BUNDLE_NAME} " in first.read_text()  # the transferred one, not a copy inside
    discarded = rendered(make_plugin(tmp_path, output="discard"))
    assert (discarded["output"], discarded["error"]) == ("/dev/null", "/dev/null")


def test_the_environment_uses_the_new_quoting(tmp_path: Path) -> None:
    submit = rendered(make_plugin(tmp_path), job=CommandJob(["true"], 1,
                                                            {"FLOE_X": "it's \"x\" /tmp/a b"}))
    environment = submit["environment"]
    assert environment.startswith('"') and environment.endswith('"')
    assert "FLOE_X='it''s \"\"x\"\" /tmp/a b'" in environment
    assert "FLOE_BATCH_ID='$(ClusterId).$(ProcId)'" in environment
    assert quote_argument("a'b\"c") == "'a''b\"\"c'"


def test_whole_slots_ask_for_everything_the_partitionable_slot_has(tmp_path: Path) -> None:
    shape = PilotShape("pair", cpus=2, memory=512 * MIB, disk=GIB, gpus=1,
                       directives=("requirements = HasSingularity",))
    submit = rendered(make_plugin(tmp_path, whole_slots=True,
                                  submit_attributes={"requirements": 'OpSys == "LINUX"'}),
                      shape=shape)
    assert submit["request_cpus"] == "ifThenElse(isUndefined(TotalSlotCpus), 2, TotalSlotCpus)"
    assert submit["request_memory"] == \
        "ifThenElse(isUndefined(TotalSlotMemory), 768, TotalSlotMemory)"
    assert submit["request_gpus"] == "ifThenElse(isUndefined(TotalSlotGPUs), 1, TotalSlotGPUs)"
    requirements = submit["requirements"]
    for part in ("(isUndefined(TotalSlotCpus) || TotalSlotCpus >= 2)", 'OpSys == "LINUX"',
                 "HasSingularity"):
        assert part in requirements


def test_site_submit_attributes_add_to_and_replace_the_defaults(tmp_path: Path) -> None:
    submit = rendered(make_plugin(tmp_path, submit_attributes={
        "+AccountingGroup": '"group_icecube.alice"', "universe": "docker"}))
    assert submit["MY.AccountingGroup"] == '"group_icecube.alice"'
    assert submit["universe"] == "docker"


def test_a_directive_that_is_not_a_submit_command_is_refused(tmp_path: Path) -> None:
    shape = PilotShape("pair", directives=("--constraint=avx2",))
    with pytest.raises(PluginConfigError, match="write it as 'name = value'"):
        make_plugin(tmp_path).description(shape, CommandJob(["/bin/true"]))


@pytest.mark.parametrize("verb", ["submit", "status", "remove", "orphans"])
def test_no_local_schedd_is_a_batch_error_not_a_crash(tmp_path: Path, verb: str) -> None:
    plugin = make_plugin(tmp_path)
    calls = {
        "submit": lambda: plugin.submit(SHAPE, CommandJob(["/bin/true"], 2, {})),
        "status": plugin.status,
        "remove": lambda: plugin.remove(["12.0"]),
        "orphans": lambda: plugin.orphans(set()),
    }
    with pytest.raises(BatchError) as caught:
        calls[verb]()
    assert caught.value.summary.startswith("HTCondor could not")
    assert "through the local schedd" in caught.value.summary
    assert "Unable to locate local daemon" in str(caught.value)
    assert multiprocessing.active_children() == []  # the call's child process is gone


def test_a_pool_whose_collector_does_not_answer_is_a_batch_error(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, pool="127.0.0.1:1", schedd="submit.example.org")
    with pytest.raises(BatchError) as caught:
        plugin.status()
    assert "through submit.example.org of pool 127.0.0.1:1." in caught.value.summary


@pytest.mark.parametrize(("verb", "call"), [("submit", "submit pilots through .*: "
                                                        "htcondor2.Schedd.submit"),
                                            ("status", "list pilots through .*: "
                                                       "htcondor2.Schedd.query")])
def test_a_collector_that_never_answers_is_a_batch_error_after_command_timeout(
        tmp_path: Path, silent_collector: socket.socket, verb: str, call: str) -> None:
    address = f"127.0.0.1:{silent_collector.getsockname()[1]}"
    plugin = make_plugin(tmp_path, command_timeout=3, pool=address)
    calls = {"submit": lambda: plugin.submit(SHAPE, CommandJob(["/bin/true"], 2, {})),
             "status": plugin.status}
    started = time.monotonic()
    with pytest.raises(BatchError, match=call) as caught:
        calls[verb]()
    assert time.monotonic() - started < 15  # the bindings alone wait 60 s
    assert f"through the local schedd of pool {address}" in caught.value.summary
    assert "did not answer within 3 s (command_timeout)" in caught.value.summary
    silent_collector.settimeout(0)
    silent_collector.accept()[0].close()  # the call did reach the collector before it hung
    assert multiprocessing.active_children() == []  # the hung call was ended, not abandoned


def test_a_call_whose_process_is_killed_is_a_batch_error(
        tmp_path: Path, silent_collector: socket.socket) -> None:
    address = f"127.0.0.1:{silent_collector.getsockname()[1]}"
    plugin = make_plugin(tmp_path, pool=address)

    def kill_the_call_once_it_waits() -> None:  # as the kernel's out-of-memory killer would
        silent_collector.accept()[0].close()
        [child] = multiprocessing.active_children()
        os.kill(child.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_call_once_it_waits)
    killer.start()
    started = time.monotonic()
    with pytest.raises(BatchError) as caught:
        plugin.status()
    killer.join()
    assert time.monotonic() - started < 15
    assert caught.value.summary == (
        f"HTCondor could not list pilots through the local schedd of pool {address}: "
        "htcondor2.Schedd.query was killed by signal 9 without answering.")


def _environment_of_the_call(schedd: object) -> dict[str, str]:
    """A call's work that reads its process's environment instead of asking a schedd."""
    return dict(os.environ)


def test_the_bindings_run_without_the_factorys_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FACTORY_SECRETS:
        monkeypatch.setenv(name, f"secret-{name}")
    monkeypatch.setenv("FLOE_HARMLESS", "kept")
    plugin = make_plugin(tmp_path)
    seen = plugin._call("query", "read its environment", _environment_of_the_call)
    assert seen["FLOE_HARMLESS"] == "kept"
    assert not [name for name in FACTORY_SECRETS if name in seen]
    assert os.environ[FACTORY_SECRETS[0]].startswith("secret-")  # the factory keeps its own


def test_job_ads_read_as_pilots_in_their_states() -> None:
    ads = [classad2.ClassAd(text) for text in (
        '[ClusterId = 7; ProcId = 0; JobStatus = 1; FloeShape = "pair"; QDate = 1700000000]',
        '[ClusterId = 7; ProcId = 1; JobStatus = 2; FloeShape = "pair"; QDate = 1700000000; '
        'JobCurrentStartDate = 1700000100]',
        '[ClusterId = 8; ProcId = 0; JobStatus = 5; FloeShape = "big"; QDate = 1700000000; '
        'HoldReason = "Job has gone over memory limit of 768 megabytes."]',
        "[ClusterId = 9; ProcId = 0; JobStatus = 3]",
        "[ClusterId = 9; ProcId = 1; JobStatus = 4; JobCurrentStartDate = undefined]",
        "[ClusterId = 9; ProcId = 2; JobStatus = 6]",
        "[ClusterId = 9; ProcId = 3; JobStatus = 7]",
        "[ClusterId = 9; ProcId = 4; JobStatus = 42]",
    )]
    pilots = pilots_from_ads(ads)
    assert pilots["7.0"] == PilotInfo("7.0", PilotState.QUEUED, "pair", submitted=1700000000.0,
                                      detail="JobStatus 1")
    assert pilots["7.1"] == PilotInfo("7.1", PilotState.RUNNING, "pair", submitted=1700000000.0,
                                      started=1700000100.0, detail="JobStatus 2")
    assert pilots["8.0"].state is PilotState.HELD
    assert pilots["8.0"].detail == "Job has gone over memory limit of 768 megabytes."
    assert {batch_id: info.state for batch_id, info in pilots.items()
            if batch_id.startswith("9.")} == {
        "9.0": PilotState.FINISHED, "9.1": PilotState.FINISHED, "9.2": PilotState.RUNNING,
        "9.3": PilotState.HELD, "9.4": PilotState.UNKNOWN}
    assert pilots["9.1"].started is None
    assert (pilots["9.4"].shape, pilots["9.4"].detail) == ("", "JobStatus 42")


@pytest.mark.parametrize(("ad", "problem"), [
    ("[ProcId = 0; JobStatus = 2]", "it has no ClusterId"),
    ("[ClusterId = 7; JobStatus = 2]", "it has no ProcId"),
    ("[ClusterId = 7; ProcId = 0]", "it has no JobStatus"),
    ('[ClusterId = 7; ProcId = 0; JobStatus = "running"]', 'JobStatus = "running" is not an '
                                                           "integer"),
    ('[ClusterId = "7"; ProcId = 0; JobStatus = 2]', 'ClusterId = "7" is not an integer'),
    ("[ClusterId = 7; ProcId = true; JobStatus = 2]", "ProcId = true is not an integer"),
    ('[ClusterId = 7; ProcId = 0; JobStatus = 2; QDate = "today"]', 'QDate = "today" is not a '
                                                                    "time in seconds"),
])
def test_a_job_ad_that_cannot_be_read_is_a_batch_error_naming_what(ad: str, problem: str) -> None:
    good = classad2.ClassAd("[ClusterId = 1; ProcId = 0; JobStatus = 1]")
    with pytest.raises(BatchError) as caught:
        pilots_from_ads([good, classad2.ClassAd(ad)])
    assert caught.value.summary.startswith(
        "htcondor2.Schedd.query returned a job ad that the htcondor plugin cannot read "
        f"({problem}): ")
    assert caught.value.command == ["htcondor2.Schedd.query"]


def test_what_crosses_from_the_call_process_reads_back_the_same(tmp_path: Path) -> None:
    """The child process sends the query's ads pickled, and gets the description as text."""
    ads = [classad2.ClassAd('[ClusterId = 7; ProcId = 0; JobStatus = 5; QDate = 1700000000; '
                            'FloeShape = "pair"; HoldReason = "held by the admin"]')]
    assert pilots_from_ads(pickle.loads(pickle.dumps(ads))) == pilots_from_ads(ads)
    description = make_plugin(tmp_path).description(SHAPE, JOB)
    assert str(htcondor2.Submit(str(description))) == str(description)


def test_hosts_kept_out_as_black_holes_join_the_requirements(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, submit_attributes={"requirements": 'OpSysMajorVer == 9'})
    plugin.avoid(["wn042.example.org"])
    submit = rendered(plugin)
    assert submit["requirements"] == ('(OpSysMajorVer == 9) && '
                                      '(Machine =!= "wn042.example.org")')


def test_without_the_bindings_the_plugin_says_which_extra_to_install(tmp_path):
    """The bindings are the extra floe[htcondor] (no macOS wheels): a factory without them gets
    one sentence naming it, when a site asks for the htcondor plugin, and not before."""
    code = ("import sys\n"
            "sys.modules['htcondor2'] = sys.modules['classad2'] = None\n"
            "from floe.plugins import PluginConfigError, PluginSettings, create_plugin\n"
            "create_plugin('local', PluginSettings(factory_id='f1', workdir=sys.argv[1]))\n"
            "try:\n"
            "    create_plugin('htcondor', PluginSettings(factory_id='f1', workdir=sys.argv[1]))\n"
            "except PluginConfigError as exc:\n"
            "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, check=True)
    said = done.stdout.strip()
    assert said.startswith("the htcondor plugin needs HTCondor's Python bindings"), said
    assert said.endswith("pip install 'floe[htcondor]'"), said

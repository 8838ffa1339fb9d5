"""The task runner with real subprocesses and files: environment, modules, staging, statistics,
limits (memory, walltime, headroom shared between tasks), and killing whole process trees."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from floe.config.protocol import MAX_STATISTICS, MAX_WARNINGS
from floe.config.resources import GIB, MIB
from floe.config.states import ErrorClass
from floe.pilot.environment import (
    SECRET_PREFIXES,
    SLOT_GPU_VARIABLES,
    STATS_LIMIT_BYTES,
    STATS_NAME_LENGTH,
    task_environment,
)
from floe.pilot.gpus import Gpu
from floe.pilot.reports import report_of
from floe.pilot.runner import (
    EXTERNAL_SIGNAL_GRACE,
    STATS_NAME,
    Assignment,
    RunnerSettings,
    TaskRun,
    run_task,
)
from floe.pilot.supervisor import Supervisor

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
FAST = RunnerSettings(sample_interval=0.05, kill_grace=0.5, transfer_retries=0)
DUMP_ENV = [PY, "-c", "import json, os; json.dump(dict(os.environ), open('env.json', 'w'))"]
HOG = ("import time\n"
       "block = bytearray({mb} * 2**20)\n"
       "for i in range(0, len(block), 4096):\n"
       "    block[i] = 1\n"
       "time.sleep({hold})\n")


def task(modules, **fields):
    return {"name": fields.pop("name", "t"), "modules": modules, **fields}


def run(tmp_path, raw, *, settings=FAST, steering=None, job=3, **options):
    assignment = Assignment(task=raw, steering=steering or {},
                            args={"job": job, "dataset": 12, "jobs_submitted": 10,
                                  "task": raw["name"], "attempt": 5})
    return TaskRun(assignment, tmp_path / "scratch", settings=settings, **options).run()


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


# ---------------------------------------------------------------- environment


def test_a_cpu_task_sees_its_thread_counts_and_floe_variables_but_no_gpus_or_secrets(tmp_path):
    pilot_env = {**os.environ, "FLOE_TOKEN": "user-secret", "FLOE_PASSKEY_7": "attempt-secret",
                 "FLOE_PILOT_TOKEN": "floe_p_pilot-secret",
                 "CUDA_VISIBLE_DEVICES": "0,1", "_CONDOR_AssignedGPUs": "GPU-aa,GPU-bb",
                 "FLOE_SITE": "uw"}
    settings = RunnerSettings(sample_interval=0.05, environ=pilot_env)
    raw = task([{"command": DUMP_ENV}], requirements={"cpus": 3})
    result = run(tmp_path, raw, settings=settings)
    assert result.ok, result.error_message
    env = json.loads((tmp_path / "scratch" / "env.json").read_text())
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "NUMEXPR_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "JULIA_NUM_THREADS"):
        assert env[name] == "3"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert "_CONDOR_AssignedGPUs" not in env
    assert not [name for name in env if name.startswith(("FLOE_TOKEN", "FLOE_PASSKEY",
                                                         "FLOE_PILOT_TOKEN"))]
    scratch = str(tmp_path / "scratch")
    assert (env["FLOE_SCRATCH"], env["TMPDIR"]) == (scratch, scratch)
    assert env["FLOE_STATS"] == f"{scratch}/floe.stats.json"
    assert (env["FLOE_JOB"], env["FLOE_TASK"], env["FLOE_DATASET"]) == ("3", "t", "12")
    assert env["FLOE_SITE"] == "uw"


def test_every_variable_the_pilot_sets_for_a_task_and_the_statistics_limits_are_documented(
        tmp_path):
    doc = (ROOT / "docs" / "tasks.md").read_text()
    env = task_environment({}, scratch=tmp_path, cpus=2, gpus=(), stats_file=tmp_path / "s",
                           args={"job": 1}, task_env={}, module_env={})
    assert set(re.findall(r"^ *\| `(\w+)` \|", doc, re.M)) == set(env)
    for fact in [*SECRET_PREFIXES, *SLOT_GPU_VARIABLES, f"$FLOE_SCRATCH/{STATS_NAME}",
                 f"{STATS_LIMIT_BYTES} bytes", f"{MAX_STATISTICS} names",
                 f"1 to {STATS_NAME_LENGTH} characters"]:
        assert fact in doc, fact


def test_a_gpu_task_sees_exactly_its_claimed_gpus(tmp_path):
    claimed = Gpu(1, "GPU-bbbb2222-0000-0000-0000-000000000000", "NVIDIA H100", 80 * GIB)
    raw = task([{"command": DUMP_ENV}], requirements={"gpus": 1})
    assert run(tmp_path, raw, gpus=[claimed]).ok
    env = json.loads((tmp_path / "scratch" / "env.json").read_text())
    assert env["CUDA_VISIBLE_DEVICES"] == claimed.uuid
    assert env["FLOE_GPUS"] == "1"


def test_task_and_module_env_are_evaluated_and_layered(tmp_path):
    raw = task([{"command": DUMP_ENV, "env": {"LEVEL": "module", "JOBNAME": "j$args(job)"}}],
               env={"LEVEL": "task", "SEED": "$eval($steering(seed_base) + $args(job))",
                    "OMP_NUM_THREADS": "1", "FLOE_TASK": "forged"})
    assert run(tmp_path, raw, steering={"seed_base": 1000}).ok
    env = json.loads((tmp_path / "scratch" / "env.json").read_text())
    assert (env["LEVEL"], env["SEED"], env["JOBNAME"]) == ("module", "1003", "j3")
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["FLOE_TASK"] == "t"


# ---------------------------------------------------------------- modules


def test_modules_run_in_order_in_the_scratch_directory_with_logs_appended(tmp_path):
    raw = task([{"command": "echo first; echo oops >&2; pwd > where.txt"},
                {"command": ["sh", "-c", "echo second"]}])
    result = run(tmp_path, raw)
    assert result.ok
    assert result.exit_code == 0
    assert result.stdout_tail == "first\nsecond\n"
    assert result.stderr_tail == "oops\n"
    assert Path(result.stdout_path).read_text() == "first\nsecond\n"
    assert (tmp_path / "scratch" / "where.txt").read_text().strip() == str(tmp_path / "scratch")


def test_the_first_failing_module_stops_the_task_and_keeps_its_exit_code(tmp_path):
    raw = task([{"name": "gen", "command": "exit 3"}, {"command": "touch later"}])
    result = run(tmp_path, raw)
    assert result.error_class is ErrorClass.TASK_ERROR
    assert result.exit_code == 3
    assert result.error_message == "module gen exited with code 3"
    assert not (tmp_path / "scratch" / "later").exists()


def test_a_module_killed_by_a_signal_has_a_negative_exit_code(tmp_path):
    crash = [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    result = run(tmp_path, task([{"name": "crash", "command": crash}]))
    assert result.exit_code == -11
    assert result.error_message == "module crash was killed by signal 11 (SIGSEGV)"


def test_a_command_that_does_not_exist_is_a_task_error(tmp_path):
    result = run(tmp_path, task([{"command": ["no-such-program-floe"]}]))
    assert result.error_class is ErrorClass.TASK_ERROR
    assert result.exit_code == 127
    assert "cannot run 'no-such-program-floe'" in result.error_message


def test_an_argument_that_holds_a_nul_once_evaluated_is_a_task_error(tmp_path):
    result = run(tmp_path, task([{"command": ["echo", "$steering(word)"]}]),
                 steering={"word": "a\0b"})
    assert result.error_class is ErrorClass.TASK_ERROR
    assert result.exit_code == 126
    assert result.error_message == "module module0: cannot run 'echo': embedded null byte"


def test_an_expression_that_cannot_be_evaluated_is_a_task_error(tmp_path):
    result = run(tmp_path, task([{"command": "echo $steering(missing)"}]))
    assert result.error_class is ErrorClass.TASK_ERROR
    assert 'no steering parameter "missing"' in result.error_message


def test_log_tails_keep_only_the_last_bytes(tmp_path):
    settings = RunnerSettings(sample_interval=0.05, tail_bytes=1000)
    result = run(tmp_path, task([{"command": [PY, "-c", "print('x' * 5000 + 'END')"]}]),
                 settings=settings)
    assert len(result.stdout_tail) == 1000
    assert result.stdout_tail.endswith("END\n")


@pytest.mark.parametrize(("character", "tail_bytes"), [("€", 1000), ("😀", 1003)])
def test_a_log_tail_starts_at_the_first_whole_character(tmp_path, character, tail_bytes):
    """The cut falls inside a character (after 2 of the euro sign's 3 bytes, after 1 of the
    emoji's 4): what is left of it is dropped, not sent as replacement characters."""
    settings = RunnerSettings(sample_interval=0.05, tail_bytes=tail_bytes)
    write = f"import sys; sys.stdout.buffer.write({character!r}.encode() * 2000)"
    result = run(tmp_path, task([{"command": [PY, "-c", write]}]), settings=settings)
    width = len(character.encode())
    assert result.stdout_tail == character * (tail_bytes // width)


def test_a_log_shorter_than_its_tail_is_kept_whole_even_when_it_is_not_utf8(tmp_path):
    write = "import sys; sys.stdout.buffer.write(bytes([0x80]) + b'after')"
    result = run(tmp_path, task([{"command": [PY, "-c", write]}]))
    assert result.stdout_tail == "\ufffdafter"


def test_cpu_time_and_wall_time_are_measured(tmp_path):
    burn = [PY, "-c", "x = 0\nfor i in range(4_000_000): x += i"]
    result = run(tmp_path, task([{"command": burn}, {"command": burn}]))
    assert result.usage.cpu_time >= 0.2
    assert result.usage.wall_time >= result.usage.cpu_time / 2
    assert result.end_time >= result.start_time


# ---------------------------------------------------------------- statistics


def test_usage_so_far_can_be_read_while_the_task_runs(tmp_path):
    raw = task([{"command": [PY, "-c", HOG.format(mb=64, hold=5)]}])
    runner = TaskRun(Assignment(task=raw), tmp_path / "scratch", settings=FAST)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while runner.usage().peak_memory < 64 * MIB and time.monotonic() < deadline:
            time.sleep(0.02)
        usage = runner.usage()
        assert usage.peak_memory >= 64 * MIB
        assert usage.wall_time > 0
    finally:
        runner.stop(ErrorClass.PILOT_LOST, "the test is over")
        thread.join()


def test_statistics_from_every_module_are_merged(tmp_path):
    write = "echo '{\"events\": %s, \"%s\": 1.5}' > $FLOE_STATS"
    raw = task([{"command": write % (10, "gen_s")}, {"command": write % (20, "reco_s")}])
    result = run(tmp_path, raw)
    assert result.statistics == {"events": 20, "gen_s": 1.5, "reco_s": 1.5}


def test_more_statistics_than_one_report_carries_are_left_out_with_a_warning(tmp_path):
    write = (f"{PY} -c \"import json, os; json.dump({{'%s' + str(i): i for i in range(600)}}, "
             "open(os.environ['FLOE_STATS'], 'w'))\"")
    raw = task([{"name": "gen", "command": write % "a"}, {"name": "reco", "command": write % "b"}])
    result = run(tmp_path, raw)
    assert result.ok, result.error_message
    assert len(result.statistics) == 1000  # all of gen's, reco's first 400: one report's worth
    assert result.warnings == [
        "module reco: the statistics file FLOE_STATS: 200 statistics left out: a task's modules "
        "report 1000 at most together"]


@pytest.mark.parametrize(("content", "problem"), [
    ("[1, 2]", "holds a JSON list: all of it left out"),
    ('{"events": "many", "kept": 2}', "'events' is \"many\", not a number"),
    ('{"ok": true, "kept": 2}', "'ok' is true, not a number"),
    ('{"big": 1e300, "kept": 2}', "'big' is 1e+300, not a number from -1e+100 to 1e+100"),
    ("not json", "is not JSON"),
])
def test_a_bad_statistics_file_loses_the_statistics_not_the_work(tmp_path, content, problem):
    """A GPU task that wrote {"name": "NVIDIA H200"} among its numbers had its finished work
    failed and retried: a statistic that is not a number is now left out, with a warning."""
    raw = task([{"name": "gen", "command": f"echo '{content}' > $FLOE_STATS; echo done"}])
    result = run(tmp_path, raw)
    assert result.ok and result.exit_code == 0, result.error_message
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("module gen: the statistics file FLOE_STATS")
    assert problem in result.warnings[0]
    assert result.statistics == ({"kept": 2} if "kept" in content else {})
    assert report_of(result)["warnings"] == result.warnings


def test_warnings_past_the_most_one_report_carries_are_counted(tmp_path):
    bad = json.dumps({f"s{i}": "x" for i in range(30)})
    result = run(tmp_path, task([{"name": "gen", "command": f"echo '{bad}' > $FLOE_STATS"}]))
    assert result.ok
    assert len(result.warnings) == MAX_WARNINGS
    assert result.warnings[-1] == "11 more warnings like these"


# ---------------------------------------------------------------- staging


def test_inputs_are_fetched_and_outputs_stored_with_their_sha256(tmp_path, file_server):
    (file_server.directory / "gen.py").write_text("print(7)")
    archive = tmp_path / "archive"
    raw = task([{"command": "python3 gen.py > out.txt"}],
               inputs=[{"url": f"{file_server.url}/gen.py", "local": "gen.py",
                        "checksum": "sha256:" + hashlib.sha256(b"print(7)").hexdigest()}],
               outputs=[{"local": "out.txt", "url": f"file://{archive}/$args(job)/out.txt"},
                        {"local": "out.txt", "url": f"{file_server.url}/up/out_$args(job).txt"}])
    result = run(tmp_path, raw)
    assert result.ok, result.error_message
    assert (archive / "3" / "out.txt").read_text() == "7\n"
    assert (file_server.directory / "up" / "out_3.txt").read_text() == "7\n"
    sha = hashlib.sha256(b"7\n").hexdigest()
    assert result.outputs == [
        {"local": "out.txt", "url": f"file://{archive}/3/out.txt", "sha256": sha, "size": 2},
        {"local": "out.txt", "url": f"{file_server.url}/up/out_3.txt", "sha256": sha, "size": 2},
    ]


def test_an_input_checksum_mismatch_is_a_staging_error_and_nothing_runs(tmp_path):
    source = tmp_path / "calib.txt"
    source.write_text("old calibration")
    raw = task([{"command": "touch ran"}],
               inputs=[{"url": str(source), "local": "calib.txt", "checksum": "md5:" + "0" * 32}])
    result = run(tmp_path, raw)
    assert result.error_class is ErrorClass.STAGING_ERROR
    assert result.exit_code is None
    assert "md5 checksum mismatch" in result.error_message
    assert not (tmp_path / "scratch" / "ran").exists()


def test_a_missing_input_is_a_staging_error(tmp_path):
    raw = task([{"command": "true"}], inputs=[{"url": f"{tmp_path}/nope", "local": "x"}])
    result = run(tmp_path, raw)
    assert result.error_class is ErrorClass.STAGING_ERROR
    assert f"input {tmp_path}/nope" in result.error_message


def test_a_missing_output_is_a_staging_error(tmp_path):
    raw = task([{"command": "true"}], outputs=[{"local": "gen.i3", "url": f"{tmp_path}/o"}])
    result = run(tmp_path, raw)
    assert result.error_class is ErrorClass.STAGING_ERROR
    assert result.error_message == ("output gen.i3 was not written by the task, so it cannot "
                                    "be stored")


def test_an_output_with_the_wrong_checksum_is_not_stored(tmp_path):
    raw = task([{"command": "echo data > gen.i3"}],
               outputs=[{"local": "gen.i3", "url": f"file://{tmp_path}/o/gen.i3",
                         "checksum": "sha256:" + "1" * 64}])
    result = run(tmp_path, raw)
    assert result.error_class is ErrorClass.STAGING_ERROR
    assert "output gen.i3: sha256 checksum mismatch" in result.error_message
    assert not (tmp_path / "o").exists()


def test_a_failed_upload_is_a_staging_error(tmp_path):
    raw = task([{"command": "echo data > gen.i3"}],
               outputs=[{"local": "gen.i3", "url": "http://127.0.0.1:9/gen.i3"}])
    result = run(tmp_path, raw)
    assert result.error_class is ErrorClass.STAGING_ERROR
    assert result.error_message.startswith("output http://127.0.0.1:9/gen.i3:")


# ---------------------------------------------------------------- limits


def test_a_memory_hog_beyond_the_slot_is_killed_with_its_peak(tmp_path):
    raw = task([{"command": [PY, "-c", HOG.format(mb=300, hold=60)]}],
               requirements={"memory": 100 * MIB})
    result = run(tmp_path, raw, supervisor=Supervisor(memory=100 * MIB, disk=GIB))
    assert result.error_class is ErrorClass.RESOURCE_OVERUSE
    assert result.overuse.resource == "memory"
    assert result.overuse.requested == 100 * MIB
    assert result.overuse.peak >= 100 * MIB
    assert result.usage.peak_memory >= result.overuse.peak
    assert result.exit_code < 0
    assert result.error_message.startswith("used ")


def test_a_task_may_use_more_than_its_request_while_the_slot_has_room(tmp_path):
    raw = task([{"command": [PY, "-c", HOG.format(mb=300, hold=0.5)]}],
               requirements={"memory": 100 * MIB})
    result = run(tmp_path, raw, supervisor=Supervisor(memory=4 * GIB, disk=GIB))
    assert result.ok, result.error_message
    assert result.usage.peak_memory >= 250 * MIB


def test_a_disk_filler_beyond_the_slot_is_killed(tmp_path):
    fill = [PY, "-c", "import os, time\n"
                      "with open('big', 'wb') as f:\n"
                      "    f.write(os.urandom(30 * 2**20)); f.flush(); os.fsync(f.fileno())\n"
                      "time.sleep(60)\n"]
    raw = task([{"command": fill}], requirements={"disk": 10 * MIB})
    result = run(tmp_path, raw, supervisor=Supervisor(memory=4 * GIB, disk=10 * MIB))
    assert result.error_class is ErrorClass.RESOURCE_OVERUSE
    assert result.overuse.resource == "disk"
    assert result.overuse.peak > 10 * MIB


def test_the_task_over_its_request_is_killed_and_its_neighbour_finishes(tmp_path):
    slot = Supervisor(memory=600 * MIB, disk=10 * GIB)
    hog = TaskRun(Assignment(task(
        [{"command": [PY, "-c", HOG.format(mb=400, hold=60)]}], name="hog",
        requirements={"memory": 100 * MIB})), tmp_path / "hog", settings=FAST, supervisor=slot)
    quiet = TaskRun(Assignment(task(
        [{"command": [PY, "-c", HOG.format(mb=50, hold=2)]}], name="quiet",
        requirements={"memory": 500 * MIB})), tmp_path / "quiet", settings=FAST, supervisor=slot)
    results = {}
    threads = [threading.Thread(target=lambda r=r: results.update({r: r.run()}))
               for r in (hog, quiet)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[hog].error_class is ErrorClass.RESOURCE_OVERUSE
    assert results[hog].overuse.resource == "memory"
    assert results[quiet].ok, results[quiet].error_message


def test_a_walltime_overrun_is_killed_with_its_whole_tree(tmp_path):
    # A child, a grandchild under a subshell, and the shell itself ("$$$$": in a task config
    # "$$" stands for a literal "$").
    family = ("sleep 300 & echo $! >> pids; "
              "sh -c 'sleep 300 & echo $! >> pids; wait' & echo $! >> pids; "
              "echo $$$$ >> pids; wait")
    raw = task([{"command": family}], requirements={"walltime": 1})
    result = run(tmp_path, raw, supervisor=Supervisor(memory=GIB, disk=GIB, walltime_grace=0))
    assert result.error_class is ErrorClass.RESOURCE_OVERUSE
    assert result.overuse.resource == "walltime"
    assert result.overuse.requested == 1
    assert result.overuse.peak >= 1
    pids = [int(p) for p in (tmp_path / "scratch" / "pids").read_text().split()]
    assert len(pids) == 4
    assert all(gone(pid) for pid in pids)


def test_background_processes_left_by_a_successful_module_are_ended(tmp_path):
    raw = task([{"command": "sleep 300 > /dev/null 2>&1 & echo $! > bg.pid"}])
    result = run(tmp_path, raw)
    assert result.ok
    assert gone(int((tmp_path / "scratch" / "bg.pid").read_text()))


def test_a_process_left_in_a_group_of_its_own_is_ended_too(tmp_path):
    # Still in the module's session, though no longer in its process group.
    leave = ("import os\n"
             "pid = os.fork()\n"
             "if pid == 0:\n"
             "    os.setpgid(0, 0)\n"
             "    os.execvp('sleep', ['sleep', '300'])\n"
             "while os.getpgid(pid) != pid:\n"
             "    pass\n"
             "open('bg.pid', 'w').write(str(pid))\n")
    result = run(tmp_path, task([{"command": [PY, "-c", leave]}]))
    assert result.ok
    assert gone(int((tmp_path / "scratch" / "bg.pid").read_text()))


@pytest.mark.parametrize("then", ["", "; sleep 1.2"])  # looked for in the pids since, or all
def test_a_process_left_in_a_session_of_its_own_is_ended_with_its_module(tmp_path, then):
    """Out of the module's tree (its session, its group, its parent gone), it is known by
    the attempt's FLOE_SCRATCH and FLOE_ATTEMPT in its environment; the result says so. One that
    cleared its environment is beyond the pilot's reach."""
    # `$$$$` is the shell's `$$` (a task's commands write a literal `$` as `$$`).
    # The kept one runs three threads (a window probed pid by pid finds them too): one process.
    threads = ("import threading, time; [threading.Thread(target=time.sleep, args=(300,), "
               "daemon=True).start() for _ in range(3)]; open('threads', 'w').close(); "
               "time.sleep(300)")
    escape = (f"(setsid {PY} -c \"{threads}\" > /dev/null 2>&1 & echo $! > kept.pid); "
              "(setsid env -i sleep 300 > /dev/null 2>&1 & echo $! > cleared.pid); "
              "while [ ! -e threads ]; do sleep 0.01; done; "
              "for f in kept.pid cleared.pid; do "
              "while [ \"$(ps -o sid= -p $(cat $f))\" = \"$(ps -o sid= -p $$$$)\" ]; "
              "do sleep 0.01; done; done" + then)
    result = run(tmp_path, task([{"name": "start", "command": escape},
                                 {"name": "after", "command": "true"}]))
    kept = int((tmp_path / "scratch" / "kept.pid").read_text())
    cleared = int((tmp_path / "scratch" / "cleared.pid").read_text())
    try:
        assert result.ok
        assert gone(kept)
        assert result.warnings == [f"module start: ended 1 of its processes left running in "
                                   f"sessions of their own: {Path(PY).name[:15]} (pid {kept})"]
        assert not gone(cleared)
    finally:  # nothing left behind, whatever failed
        for pid in (kept, cleared):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_stopping_a_run_from_another_thread_ends_it_with_that_error(tmp_path):
    started = tmp_path / "scratch" / "started"
    raw = task([{"command": "touch started; sleep 300"}])
    taskrun = TaskRun(Assignment(raw), tmp_path / "scratch", settings=FAST)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=taskrun.run()))
    thread.start()
    while not started.exists() and thread.is_alive():
        thread.join(0.02)
    taskrun.stop(ErrorClass.PILOT_LOST, "the pilot is draining")
    thread.join()
    result = outcome["result"]
    assert result.error_class is ErrorClass.PILOT_LOST
    assert result.error_message == "the pilot is draining"
    assert result.exit_code == -15


def test_run_task_accepts_the_assignment_as_a_dict(tmp_path):
    result = run_task({"task": task([{"command": "echo $args(task) $steering(x)"}]),
                       "steering": {"x": "ok"}, "args": {"task": "t"}}, tmp_path / "s")
    assert result.ok
    assert result.stdout_tail == "t ok\n"
    assert result.to_dict()["error_class"] is None


def test_a_scratch_directory_that_cannot_be_made_is_a_staging_error(tmp_path):
    (tmp_path / "file").write_text("in the way")
    result = run_task({"task": task([{"command": "true"}])}, tmp_path / "file" / "scratch")
    assert result.error_class is ErrorClass.STAGING_ERROR
    assert result.error_message.startswith(f"cannot prepare the scratch directory {tmp_path}")


def test_a_module_terminated_from_outside_is_a_task_error_once_no_stop_follows(tmp_path):
    term = [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    started = time.monotonic()
    result = run(tmp_path, task([{"name": "term", "command": term}]))
    assert result.error_class is ErrorClass.TASK_ERROR
    assert result.error_message == "module term was killed by signal 15 (SIGTERM)"
    assert time.monotonic() - started >= EXTERNAL_SIGNAL_GRACE  # waited for a pilot stop

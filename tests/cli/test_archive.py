"""Full logs in the log store, then a dataset archived and deleted, through the command line with
a real pilot and server: the logs leave the database, the archive is read as the database was
(across a restart), archived attempt ids are never given out again, and only ended datasets
leave."""

from __future__ import annotations

import sqlite3
import zipfile
from pathlib import Path

from tests.cli.support import as_user, run, run_json
from tests.pilot.live import LiveMatchmaker, wait_for

LINES = 30_000  # seq's output: about 170 KB, beyond the 64 KiB tail a report carries
TALKING = {"description": "long logs", "jobs": 3, "max_retries": 0, "tasks": [{
    "name": "talk", "requirements": {"walltime": "1m", "memory": "64MiB", "disk": "1MiB"},
    "modules": [{"command": ["sh", "-c", f"seq 1 {LINES}; echo end of job $FLOE_JOB; "
                             "test $FLOE_JOB != 2"]}]}]}
ONE = {"description": "after the archive", "jobs": 1, "tasks": [{
    "name": "step", "requirements": {"walltime": "1m", "memory": "64MiB", "disk": "1MiB"},
    "modules": [{"command": ["true"]}]}]}


def _rows(db: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def _run_to_end(matchmaker: LiveMatchmaker, directory: Path, dataset: int) -> None:
    directory.mkdir()
    pilot = matchmaker.start_pilot(directory, "--idle-timeout", "2s")
    wait_for(lambda: matchmaker.get(f"/datasets/{dataset}")["status"] in ("complete", "failed"),
             60, "the dataset to end")
    assert pilot.wait(60) == 0


def test_logs_leave_the_database_and_an_archived_dataset_reads_as_before(
        matchmaker: LiveMatchmaker, tmp_path: Path, capsys):
    user = as_user(matchmaker)
    dataset = matchmaker.submit(TALKING)
    _run_to_end(matchmaker, tmp_path / "pilot", dataset)
    tasks = matchmaker.tasks(dataset)
    expected = "".join(f"{n}\n" for n in range(1, LINES + 1))
    before = {}
    for task in tasks:
        status, out, err = run(capsys, "logs", str(task["task_id"]), *user)
        assert status == 0, err
        assert out == f"{expected}end of job {task['job']}\n"
        before[task["task_id"]] = (out, task["attempts"])
    # The full logs are gzip files of the log store; the database keeps only the tails.
    store = Path(f"{matchmaker.db}.logs") / str(dataset)
    assert len(list(store.rglob("*.stdout.gz"))) == 3
    assert _rows(matchmaker.db, "SELECT count(*) FROM logs") == [(0,)]
    # A backup copies the log store beside the database's copy.
    copy = tmp_path / "copy.sqlite"
    answer = run_json(capsys, "db", "backup", str(copy), "--db", str(matchmaker.db))
    assert answer["log_and_archive_files"] == 3
    assert sorted(p.name for p in Path(f"{copy}.logs").rglob("*.gz")) == sorted(
        p.name for p in store.rglob("*.gz"))

    status, out, err = run(capsys, "archive", str(dataset), *user)
    assert status == 0, err
    archive = Path(f"{matchmaker.db}.archive") / f"{dataset}.zip"
    assert out.startswith(f"dataset {dataset} archived: its 3 attempts and logs left the "
                          f"database for {archive} (")
    wait_for(lambda: not _rows(matchmaker.db, "SELECT count(*) FROM attempts WHERE "
                               "dataset_id = ?", dataset)[0][0] and not store.exists(), 30,
             "the archived rows and logs to be removed")
    with zipfile.ZipFile(archive) as zipped:
        assert zipped.testzip() is None
        assert {"dataset.json", "index", "attempts/0.json"} <= set(zipped.namelist())
    answer = run_json(capsys, "db", "backup", str(copy), "--db", str(matchmaker.db), "--force")
    assert (Path(f"{copy}.archive") / archive.name).read_bytes() == archive.read_bytes()
    # Read as before, by task, by attempt, and the whole log; also after a restart.
    for restarted in (False, True):
        if restarted:
            matchmaker.stop()
            matchmaker.start()
        for task in matchmaker.tasks(dataset):
            text, attempts = before[task["task_id"]]
            assert task["attempts"] == attempts
            status, out, err = run(capsys, "logs", str(task["task_id"]), *user)
            assert (status, out) == (0, text), err
            attempt = matchmaker.get(f"/attempts/{attempts[0]['attempt_id']}")
            assert attempt["stdout_tail"].endswith(f"end of job {task['job']}\n")
        summary = matchmaker.get(f"/datasets/{dataset}")
        assert summary["archived"]["attempts"] == 3 and summary["archived"]["path"] == \
            str(archive)
        status, out, _ = run(capsys, "datasets", *user)
        assert "failed, archived" in out
    # An archived dataset is not run again, and its attempt ids stay taken.
    status, _, err = run(capsys, "reset", str(dataset), "--all", *user)
    assert status == 1 and f"dataset {dataset} is archived" in err
    highest = max(a["attempt_id"] for _, attempts in before.values() for a in attempts)
    _rows(matchmaker.db, "SELECT 1")  # the file is readable while the server runs
    newer = matchmaker.submit(ONE)
    _run_to_end(matchmaker, tmp_path / "pilot2", newer)
    [fresh] = matchmaker.attempts(newer)
    assert fresh["attempt_id"] > highest

    # Deleting asks for --yes, then removes everything, its archive too.
    status, _, err = run(capsys, "delete", str(dataset), *user)
    assert status == 1 and "run again with --yes" in err
    answer = run_json(capsys, "delete", str(dataset), "--yes", *user)
    assert answer["deleted"]["attempts"] == 3
    status, answer = matchmaker.api("GET", f"/datasets/{dataset}")
    assert status == 404
    assert answer["error"].startswith(f"there is no dataset {dataset}: it was deleted by alice "
                                      "at 20")
    wait_for(lambda: not archive.exists(), 30, "the archive to be removed")
    for table in ("tasks", "jobs", "statistics"):
        wait_for(lambda table=table: _rows(matchmaker.db, f"SELECT count(*) FROM {table} WHERE"
                                           " dataset_id = ?", dataset) == [(0,)], 30,
                 f"the dataset's {table} to be removed")
    assert _rows(matchmaker.db, "SELECT action FROM events WHERE dataset_id = ? ORDER BY "
                 "event_id DESC LIMIT 2", dataset) == [("delete",), ("archive",)]
    # The dataset that ran after it is untouched.
    assert matchmaker.get(f"/datasets/{newer}")["tasks"]["complete"] == 1


def test_only_an_ended_dataset_leaves_and_only_its_owner_or_an_admin_removes_it(
        matchmaker: LiveMatchmaker, capsys):
    dataset = matchmaker.submit(ONE)  # no pilot: it stays processing
    for verb, extra in (("archive", []), ("delete", ["--yes"]), ("delete", [])):
        status, _, err = run(capsys, verb, str(dataset), *extra, *as_user(matchmaker))
        assert status == 1
        assert f"dataset {dataset} is processing: only an ended dataset can be" in err
        assert f"abort it first (floe abort {dataset})" in err
    bob = matchmaker._floe("user", "add", "bob")["token"]
    status, answer = matchmaker.api("DELETE", f"/datasets/{dataset}", token=bob)
    assert status == 403, answer
    assert matchmaker.get(f"/datasets/{dataset}")["status"] == "processing"

"""`floe db backup` against a real matchmaker that keeps committing: the copy is consistent, a
server started on it has everything the copy holds, and wrong input is one sentence."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from floe.cli.main import main as floe
from tests.pilot.live import LiveMatchmaker
from tests.pilot.scripted import ScriptedPilot

CONFIG = {"description": "backed up", "jobs": 200,
          "tasks": [{"name": "count", "modules": [{"command": ["true"]}]}]}


def test_a_backup_taken_while_pilots_report_restores_into_a_working_server(
        matchmaker: LiveMatchmaker, tmp_path: Path, capsys):
    dataset = matchmaker.submit(CONFIG)
    stop = threading.Event()

    def work() -> None:  # commits go on while the copy is made
        pilot = ScriptedPilot(matchmaker, "node1")
        while not stop.is_set() and pilot.run_one():
            pass

    worker = threading.Thread(target=work)
    worker.start()
    try:
        copies = [tmp_path / f"copy{n}.sqlite" for n in range(3)]
        for copy in copies:
            assert floe(["db", "backup", str(copy), "--db", str(matchmaker.db)]) == 0
    finally:
        stop.set()
        worker.join(60)
    said = capsys.readouterr().out
    assert f"{copies[0]}: a copy of {matchmaker.db}" in said and "to restore it, stop the " \
                                                               "server" in said
    for copy in copies:
        assert copy.stat().st_mode & 0o777 == 0o600  # readable by the server's user only
        with sqlite3.connect(copy) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            # Consistent: every complete task has its complete attempt, and the other way.
            done = conn.execute("SELECT count(*) FROM tasks WHERE state = 'complete'"
                                ).fetchone()[0]
            attempts = conn.execute("SELECT count(*) FROM attempts WHERE state = 'complete'"
                                    ).fetchone()[0]
            assert done == attempts
    # Restored as README says: the server stopped, the copy put where --db points (the old
    # file's -wal and -shm removed), the server started: it serves what the copy holds.
    with sqlite3.connect(copies[-1]) as conn:
        expected = conn.execute("SELECT count(*) FROM tasks WHERE state = 'complete'"
                                ).fetchone()[0]
    matchmaker.stop()
    for suffix in ("-wal", "-shm"):
        Path(f"{matchmaker.db}{suffix}").unlink(missing_ok=True)
    matchmaker.db.write_bytes(copies[-1].read_bytes())
    matchmaker.start()
    states = matchmaker.states(dataset)
    assert states.count("complete") == expected and len(states) == 200


def test_wrong_input_is_one_sentence(tmp_path: Path, capsys):
    missing = tmp_path / "nothing.sqlite"
    assert floe(["db", "backup", str(tmp_path / "x.sqlite"), "--db", str(missing)]) == 1
    assert capsys.readouterr().err == (f"floe db backup: {missing} does not exist: give --db "
                                       "the file `floe server` uses\n")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    nowhere = tmp_path / "no-such-folder" / "copy.sqlite"
    assert floe(["db", "backup", str(nowhere), "--db", str(other)]) == 1
    assert capsys.readouterr().err == (f"floe db backup: {nowhere.parent} is not a folder: make "
                                       "it first, or choose another place for the copy\n")
    assert floe(["db", "backup", str(tmp_path / "y.sqlite"), "--db", str(other)]) == 1
    assert "is not a floe matchmaker database" in capsys.readouterr().err
    existing = tmp_path / "exists.sqlite"
    existing.write_text("keep me")
    assert floe(["db", "backup", str(existing), "--db", str(other)]) == 1
    assert "exists already: choose another name, or --force" in capsys.readouterr().err
    assert existing.read_text() == "keep me"

"""The pilot's guardian: a small process that ends the pilot's tasks when the pilot dies.

On SIGTERM the pilot stops its tasks itself; a SIGKILL (or the OOM killer, or a crash of the
interpreter) gives it no chance, and every module runs in a session of its own, which the batch
system's signal to the pilot's process group does not reach: its processes would live on,
adopted by init, in a slot that is no longer anyone's. So the pilot starts one guardian, in a
session of its own too, that reads a pipe from it: the pilot writes the leader of every module
it starts and releases it once the module's tree is gone, a few bytes per module and no work in
the child (unlike PR_SET_PDEATHSIG, which needs code to run between fork and exec, and reaches
only the direct child, not the processes the module starts). The guardian needs no signal to
learn of the pilot's death: the kernel closes the pilot's end of the pipe however it dies, and
the guardian reads end-of-file. It then does what the pilot does to a task it stops: SIGTERM to
each watched module's whole tree (its session, its process group and their descendants), SIGKILL
to what is left after the grace, and it exits.

A module the pilot was starting as it died is not watched yet. Its process holds a copy of the
pilot's end of the pipe until it runs the module's program, so when the guardian reads
end-of-file the module runs with its environment, whose FLOE_SCRATCH names a directory under
this pilot's own tasks' directory: on Linux the guardian also looks for such processes in /proc
(for half a second, in case the module's program is only starting) and ends their trees too.

When the pilot leaves normally it says so (a "." line) before it closes the pipe; the guardian
then ends what is still watched (nothing, when every lane was stopped) and, looking in /proc
once, any process whose FLOE_SCRATCH lies under the pilot's tasks' directory: one that a task
started in a session of its own and that its module's end missed (it ends those it finds
carrying the attempt's variables, see `ProcessTree.end`). Then it exits.
The guardian runs the same way everywhere; where there is neither /proc nor psutil it finds no
trees, and signals to each watched module's process group are all that it sends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import floe
from floe.pilot.proctree import ProcessTable, environ_has, family, kill_all, same

log = logging.getLogger("floe.pilot")

SPAWN_WAIT = 0.5
"""Seconds the guardian of a dead pilot keeps looking for a module that was being started."""
READ_PAUSE = 0.05
"""Seconds the guardian waits after reading before it reads again (the pipe holds 64 KiB)."""
_FAREWELL = b".\n"
_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(floe.__file__)))
"""The directory (or pilot.pyz) that holds the floe package, for the guardian's interpreter."""
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); from floe.pilot.guardian import main; "
         "sys.exit(main(sys.argv[2:]))")


class Guardian:
    """The pilot's end: `watch()` each module's process as it starts, `release()` it once its
    tree is gone, `close()` when the pilot leaves. Any thread may call them."""

    def __init__(self, process: subprocess.Popen, pipe: int) -> None:
        self.process = process
        self._pipe = pipe
        self._lock = threading.Lock()

    @classmethod
    def start(cls, tasks_dir: str | Path, grace: float) -> Guardian:
        """A guardian for the tasks that run under `tasks_dir` (their FLOE_SCRATCH), stopped
        with `grace` seconds between SIGTERM and SIGKILL. Raises OSError."""
        if not sys.executable:
            raise OSError("no Python interpreter to run the guardian with (sys.executable is "
                          "empty)")
        read, write = os.pipe()
        # The guardian starts with the job's ending signals blocked (a blocked mask survives
        # exec), so that one sent while its interpreter starts waits until it ignores them;
        # here they are only held back for a moment, not lost.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _ENDING_SIGNALS)
        try:
            # -I: none of the user's PYTHON* variables or site directory; the guardian needs
            # only the standard library and the pilot's own modules.
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, _ROOT, str(os.getpid()),
                 os.fspath(tasks_dir), repr(grace)],
                stdin=read, stdout=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return cls(process, write)

    def watch(self, leader: int) -> None:
        """The module whose process (a session leader) is `leader` has started."""
        self._say(b"+%d\n" % leader)

    def release(self, leader: int) -> None:
        """The tree of the module led by `leader` is gone (so its pid may be reused)."""
        self._say(b"-%d\n" % leader)

    def close(self) -> None:
        """Tell the guardian the pilot is leaving, and wait for it to exit (it first ends
        whatever is still watched)."""
        self._say(_FAREWELL)
        with self._lock:
            if self._pipe >= 0:
                os.close(self._pipe)
                self._pipe = -1
        self.process.wait()

    def _say(self, line: bytes) -> None:
        # The lock keeps a lane's write from racing the close: the number of a closed
        # descriptor may already name another file.
        with self._lock:
            if self._pipe < 0:
                return
            try:
                os.write(self._pipe, line)
            except OSError as err:
                log.warning("the guardian (pid %s) is gone (%s): tasks will not be ended if "
                            "the pilot is killed", self.process.pid, err.strerror or err)
                os.close(self._pipe)
                self._pipe = -1


# ------------------------------------------------------------ the guardian process


def main(argv: Sequence[str]) -> int:
    """The guardian: `pilot_pid tasks_dir grace`, the pilot's pipe on standard input."""
    pilot, tasks_dir, grace = int(argv[0]), os.fsencode(argv[1]), float(argv[2])
    # A signal meant for the whole batch job (SLURM signals every process it tracks) must not
    # take the guardian before the pilot: it ends when the pipe says so, and only then.
    for signum in _ENDING_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _ENDING_SIGNALS)
    watched, farewell = listen(0)
    if farewell:
        ended = end_tasks(watched, grace, tasks_dir=tasks_dir, spawn_wait=0.0)
        if ended:
            print(f"floe guardian: the pilot (pid {pilot}) left; ended {len(ended)} processes "
                  "that its tasks left running", file=sys.stderr, flush=True)
        return 0
    ended = end_tasks(watched, grace, tasks_dir=tasks_dir)
    if ended:
        print(f"floe guardian: the pilot (pid {pilot}) died; ended {len(ended)} processes of "
              "its tasks", file=sys.stderr, flush=True)
    return 0


def listen(fd: int) -> tuple[set[int], bool]:
    """Read the pilot's lines until end-of-file: the leaders still watched then, and whether
    the pilot said farewell (left normally)."""
    watched: set[int] = set()
    rest = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            return watched, False
        *lines, rest = (rest + data).split(b"\n")
        for line in lines:
            if line == _FAREWELL[:-1]:
                return watched, True
            if line[:1] == b"+":
                watched.add(int(line[1:]))
            elif line[:1] == b"-":
                watched.discard(int(line[1:]))
        # A busy pilot's lines are read in batches: a pilot running a thousand short tasks a
        # second writes two thousand, which then wake the guardian twenty times, not 2,000.
        time.sleep(READ_PAUSE)


def end_tasks(leaders: set[int], grace: float, tasks_dir: bytes | None = None,
              spawn_wait: float = SPAWN_WAIT) -> set[int]:
    """SIGTERM to the trees of `leaders` (their sessions, process groups and descendants) and,
    given `tasks_dir`, of every process whose FLOE_SCRATCH lies under it (looked for once, and
    again for `spawn_wait` seconds); SIGKILL to what is left after `grace` seconds. Returns the
    pids it signalled."""
    table = ProcessTable()
    marker = None if tasks_dir is None else b"\0FLOE_SCRATCH=" + tasks_dir.rstrip(b"/") + b"/"
    look_until = time.monotonic() + (spawn_wait if marker is not None else 0.0)
    marked: dict[int, int] = {}  # pid: when it started, so that a reused pid is not taken
    seen: dict[int, int | None] = {}  # each leader's start when first looked (None: gone)
    me = os.getpid()
    looked = False

    def find() -> set[int]:
        nonlocal looked
        snapshot = table.get(fresh=True)
        if marker is not None and (not looked or time.monotonic() < look_until):
            looked = True
            marked.update((pid, info.started) for pid, info in snapshot.items()
                          if pid != me and not info.zombie and environ_has(pid, marker))
        for pid in leaders:
            seen.setdefault(pid, snapshot[pid].started if pid in snapshot else None)
        # A leader gone still names its session and group while they have members; a new
        # process given its pid (it can be only once they have none) is none of its tree.
        ours = {pid for pid in leaders if pid not in snapshot
                or (seen[pid] is not None and same({pid: seen[pid]}, snapshot))}
        roots = {pid for pid, info in snapshot.items()
                 if pid in ours or info.sid in ours or info.pgid in ours}
        return {pid for pid, info in family(snapshot, roots | same(marked, snapshot)).items()
                if not info.zombie}

    if not table.get():
        # No /proc and no psutil: the modules' process groups are all that can be signalled.
        return _end_groups(leaders, grace)
    signalled = kill_all(find, grace, table)
    while time.monotonic() < look_until:
        time.sleep(0.05)
        signalled |= kill_all(find, grace, table)
    return signalled


def _end_groups(leaders: set[int], grace: float) -> set[int]:
    deadline = time.monotonic() + grace
    groups = [leader for leader in leaders if _signal_group(leader, signal.SIGTERM)]
    while groups and time.monotonic() < deadline:
        time.sleep(0.05)
        groups = [leader for leader in groups if _signal_group(leader, 0)]
    for leader in groups:
        _signal_group(leader, signal.SIGKILL)
    return set(leaders)


def _signal_group(leader: int, signum: int) -> bool:
    """Send `signum` to the process group `leader`; whether it exists."""
    with contextlib.suppress(PermissionError):
        try:
            os.killpg(leader, signum)
        except ProcessLookupError:
            return False
    return True

"""The process tree of one running module: find it, measure it, and kill all of it.

Every module starts as the leader of a new session, so its tree is every process of that session
or its process group, plus their descendants (which catches children that moved to a session of
their own while their parent lives). One that moved out and whose parent then died is no longer
in the tree: when the module ends (`end`), such processes are known by the attempt's variables
in their environment, read only for processes started since the leader.

The table of processes comes from /proc where there is one (one read of /proc/<pid>/stat gives
family, memory and CPU: measured 1.5 ms for 100 processes against 8.7 ms through psutil, whose
children() reads the same files) and from psutil elsewhere; one table serves every tree of the
pilot for a short while, so that tasks running side by side do not each scan the node.

A young tree needs no table of the node. Linux hands out pids in increasing order, wrapping at
pid_max, and /proc/loadavg names the last one it handed out. Every process of the tree is
the leader or was forked after it (a session or group can only be entered by forking from it;
setsid() makes a session named by its caller's own pid), so its pids lie in the window
(leader, last pid] -- as long as fewer pids than the whole range were handed out since the
leader started, which `WINDOW_SECONDS` bounds: a tree younger than that is found by reading the
stat files of the pids of that window alone. For a null task that is a handful of files instead
of every process of the node, and a busy node makes the window longer but never the scan longer
than a full one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable

try:
    import psutil
except ImportError:
    psutil = None

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_ZOMBIE = (b"Z", b"X")

WINDOW_SECONDS = 1.0
"""A tree younger than this is found in its window of pids (see above). Wrapping around the
whole pid range in that time takes at least 32,768 new processes or threads in a second
(pid_max is 32768 at the least, 4194304 on most systems), and a window wider than half the
range is not trusted either; older trees are found in a table of the whole node."""
PROBE_WINDOW = 64
"""A window of at most this many pids is probed pid by pid (a missing pid costs one failed
open) instead of listing /proc."""


@dataclass(frozen=True)
class ProcessInfo:
    """One process: its family, its resident memory, and the CPU seconds of it and of its
    children it has waited for."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    rss: int
    cpu_time: float
    zombie: bool
    started: int = 0
    """When it started, in clock ticks since the boot (0: not known)."""


@dataclass(frozen=True)
class TreeSample:
    pids: frozenset[int]
    rss: int
    cpu_time: float


def read_stat(pid: int, proc: str = "/proc") -> ProcessInfo | None:
    """One process from /proc/<pid>/stat; None when it is gone (or unreadable)."""
    try:
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None  # it exited while we looked
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name is in parentheses and may hold spaces or ")": split after the last.
    fields = data[data.rfind(b")") + 2:].split(None, 22)
    if len(fields) < 22:
        return None
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ProcessInfo(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]),
                       rss=int(fields[21]) * _PAGE_SIZE, cpu_time=ticks / _CLOCK_TICKS,
                       zombie=fields[0] in _ZOMBIE, started=int(fields[19]))


def proc_table(proc: str = "/proc") -> dict[int, ProcessInfo]:
    """Every process of the node from /proc/<pid>/stat (one read per process)."""
    try:
        names = os.listdir(proc)
    except OSError:
        return {}
    return _read_all((int(name) for name in names if name.isdigit()), proc)


def _read_all(pids: Iterable[int], proc: str) -> dict[int, ProcessInfo]:
    table = {}
    for pid in pids:
        info = read_stat(pid, proc)
        if info is not None:
            table[pid] = info
    return table


def last_pid(proc: str = "/proc") -> int | None:
    """The pid the kernel handed out last (in this pid namespace), from /proc/loadavg."""
    try:
        fd = os.open(f"{proc}/loadavg", os.O_RDONLY)
        try:
            data = os.read(fd, 256)
        finally:
            os.close(fd)
        return int(data.split()[4])
    except (OSError, IndexError, ValueError):
        return None


def _pid_max(proc: str = "/proc") -> int | None:
    try:
        with open(f"{proc}/sys/kernel/pid_max", "rb") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def psutil_table() -> dict[int, ProcessInfo]:
    """Every process of the node through psutil."""
    table = {}
    for process in psutil.process_iter(["ppid", "memory_info", "cpu_times", "status"]):
        info = process.info
        try:
            pgid, sid = os.getpgid(process.pid), os.getsid(process.pid)
        except OSError:
            continue
        times = info["cpu_times"]
        cpu = 0.0
        if times is not None:
            cpu = (times.user + times.system + getattr(times, "children_user", 0.0)
                   + getattr(times, "children_system", 0.0))
        memory = info["memory_info"]
        table[process.pid] = ProcessInfo(
            pid=process.pid, ppid=info["ppid"] or 0, pgid=pgid, sid=sid,
            rss=memory.rss if memory is not None else 0, cpu_time=cpu,
            zombie=info["status"] == psutil.STATUS_ZOMBIE,
        )
    return table


def default_scan() -> Callable[[], dict[int, ProcessInfo]]:
    """/proc where the node has it, else psutil, else /proc (which then finds nothing)."""
    if os.path.exists("/proc/self/stat") or psutil is None:
        return proc_table
    return psutil_table


class ProcessTable:
    """A node-wide process table shared by all trees, rescanned when older than `max_age`.

    With /proc as its source it also finds young trees in their window of pids."""

    def __init__(self, scan: Callable[[], dict[int, ProcessInfo]] | None = None,
                 max_age: float = 0.2) -> None:
        self.scan = scan or default_scan()
        self.max_age = max_age
        self._lock = threading.Lock()
        self._taken = -1e9
        self._table: dict[int, ProcessInfo] = {}
        self.pid_max = _pid_max() if self.scan is proc_table else None

    def window(self, leader: int, started: float | None) -> list[range] | None:
        """The pids forked after `leader` (started at `started`, monotonic), as ranges; None
        when its tree must be found in the whole table instead."""
        if (self.pid_max is None or started is None
                or time.monotonic() - started >= WINDOW_SECONDS):
            return None
        last = last_pid()
        if last is None or not 0 < leader < self.pid_max or not 0 < last < self.pid_max:
            return None
        if (last - leader) % self.pid_max >= self.pid_max // 2:
            return None
        if last >= leader:
            return [range(leader + 1, last + 1)]
        return [range(leader + 1, self.pid_max), range(1, last + 1)]  # wrapped at pid_max

    def in_window(self, window: list[range]) -> dict[int, ProcessInfo]:
        """The processes (not threads: /proc lists thread group leaders only) whose pids lie in
        the window."""
        try:
            names = os.listdir("/proc")
        except OSError:
            return {}
        return _read_all((pid for pid in map(int, filter(str.isdigit, names))
                          if any(pid in part for part in window)), "/proc")

    def processes_in(self, window: list[range]) -> dict[int, ProcessInfo]:
        """The processes whose pids lie in the window: a small window pid by pid (a probed pid
        may name a thread, which /proc finds though it lists none: as good a sign of its
        process's session), a larger one from the listing of /proc."""
        if sum(map(len, window)) > PROBE_WINDOW:
            return self.in_window(window)
        return _read_all((pid for part in window for pid in part), "/proc")

    def get(self, fresh: bool = False) -> dict[int, ProcessInfo]:
        with self._lock:
            now = time.monotonic()
            if fresh or now - self._taken > self.max_age:
                self._table = self.scan()
                self._taken = now
            return self._table


SHARED_TABLE = ProcessTable()


class ProcessTree:
    """The processes started by one session leader (a module's process), found anew each time.

    `started` is when (time.monotonic()) the leader was started, no later: given it, a young
    tree is found in its window of pids (see above) instead of a table of the node."""

    def __init__(self, leader: int, table: ProcessTable = SHARED_TABLE,
                 started: float | None = None) -> None:
        self.leader = leader
        self.table = table
        self.started = started
        self.peak_cpu_time = 0.0
        self.reaped = False
        """The leader has been waited for (`end`): its pid may be another process's now."""

    def members(self, fresh: bool = False) -> dict[int, ProcessInfo]:
        window = self.table.window(self.leader, self.started)
        if window is not None:
            table = self.table.in_window(window)
            leader = read_stat(self.leader)
            if leader is not None:
                table[self.leader] = leader
        else:
            table = self.table.get(fresh)
        if self.reaped and self.leader in table:
            # Its pid went to another process, which the system allows only once no session
            # or group is named by it: the tree is gone, and that process is not of it.
            return {}
        return family(table, {pid for pid, info in table.items()
                              if info.sid == self.leader or info.pgid == self.leader})

    def sample(self) -> TreeSample:
        """The tree's resident memory now, and its CPU seconds so far (never decreasing: a child
        reaped by a process outside the tree takes its CPU time with it)."""
        members = self.members()
        cpu = sum(info.cpu_time for info in members.values())
        self.peak_cpu_time = max(self.peak_cpu_time, cpu)
        return TreeSample(pids=frozenset(members),
                          rss=sum(info.rss for info in members.values() if not info.zombie),
                          cpu_time=self.peak_cpu_time)

    def alive(self) -> set[int]:
        return _live(self.members(fresh=True))

    def any_alive(self) -> bool:
        """Whether anything of the tree is still alive: `bool(alive())`, quicker. Once the
        leader has exited and been reaped, the tree's live processes are those of its session
        (a descendant outside it is found only through a parent inside it, and a dead parent
        has no children). An empty process group answers a signal 0 with ESRCH at once (a group
        that answers may hold only zombies: then `alive()` looks), and a young tree's window
        tells for the rest of the session."""
        return self._any_alive(self.table.window(self.leader, self.started), None)

    def _any_alive(self, window: list[range] | None,
                   found: dict[int, ProcessInfo] | None) -> bool:
        """`any_alive`, given the tree's window and, when looked at already, its processes."""
        try:
            os.killpg(self.leader, 0)
            return bool(self.alive())
        except PermissionError:
            return bool(self.alive())
        except OSError:
            pass
        if window is None or _exists(self.leader):
            return bool(self.alive())
        return _any_in(self.leader, found if found is not None else
                       self.table.processes_in(window))

    def kill(self, grace: float) -> None:
        """SIGTERM to the whole tree, then SIGKILL to whatever is left after `grace` seconds,
        until nothing of it is left. Every process seen in the tree stays a target even when
        its parent's death takes it out of the tree (a child in a session of its own)."""
        kill_all(lambda: _live(self.members()), grace, self.table, first=self.alive())

    def end(self, markers: Iterable[bytes], grace: float) -> dict[int, str]:
        """Once the leader has exited and been waited for: kill what is left of the tree, and
        what left it (a process in a session of its own, whose parent in the tree is gone) but
        still holds every one of `markers` (b"NAME=value") in its environment, all in one grace.
        Returns the latter by pid, with their names. A young tree's window is looked at once for
        both."""
        self.reaped = True
        wanted = [b"\0" + marker + b"\0" for marker in markers]
        window = self.table.window(self.leader, self.started)
        found = None if window is None else self.table.processes_in(window)
        members = self.alive() if self._any_alive(window, found) else set()
        escaped = {pid: started for pid, started in
                   self._marked(wanted, None if members else found).items() if pid not in members}
        if not members and not escaped:
            return {}
        names = {pid: process_name(pid) for pid in sorted(escaped)}

        def find() -> set[int]:
            table = self.table.get()
            return _live(self.members()) | _live(family(table, same(escaped, table)))

        kill_all(find, grace, self.table, first=members | set(escaped))
        return names

    def _marked(self, wanted: list[bytes], found: dict[int, ProcessInfo] | None
                ) -> dict[int, int]:
        """The live processes but this one, started since the leader (`found` in its window, or
        looked for there while the tree is young, else anywhere on the node), whose environment
        holds all of `wanted`, with when each started. Only those that started after the leader
        are read."""
        if found is None:  # the node's table, if needed, was just read for the tree's own
            window = self.table.window(self.leader, self.started)
            found = self.table.get() if window is None else self.table.processes_in(window)
        since = _boot_ticks(self.started)
        me = os.getpid()
        return {pid: info.started for pid, info in found.items()
                if pid != me and not info.zombie and info.started >= since
                and environ_has(pid, *wanted) and _is_process(pid)}


def family(table: dict[int, ProcessInfo], roots: set[int]) -> dict[int, ProcessInfo]:
    """The processes of `roots` (pids of `table`) and all their descendants in `table`."""
    found = {pid: table[pid] for pid in roots if pid in table}
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    pending = list(found)
    while pending:
        for child in children.get(pending.pop(), ()):
            if child not in found:
                found[child] = table[child]
                pending.append(child)
    return found


def kill_all(find: Callable[[], set[int]], grace: float, table: ProcessTable,
             first: set[int] | None = None) -> set[int]:
    """SIGTERM to the live processes `first` names (default: `find()`), then SIGKILL, once
    `grace` seconds have passed, to whatever is left of them and of what `find()` names later,
    until nothing is left. A process once named stays a target when `find()` no longer names it
    (a child in a session of its own whose parent died), but only while its pid is still that
    process's: one that exits and whose pid goes to a new process meanwhile (the pids wrap
    around within seconds on a node of many cores starting short tasks, where pid_max is
    32768) is not signalled again. Returns every pid it signalled."""
    # A handful of targets are looked up one by one where /proc allows.
    snapshot = table.get(fresh=True) if table.pid_max is None else None
    born = _births(find() if first is None else first, snapshot)
    signalled = set(born)
    _send(born, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for _ in range(1000):
        snapshot = table.get(fresh=True) if table.pid_max is None else None
        named = find()
        kept = {pid: first_seen for pid, first_seen in born.items() if pid not in named
                and _alike(_started(pid, snapshot), first_seen)}
        born = {**_births(named, snapshot), **kept}
        if not born:
            break
        if time.monotonic() >= deadline:
            _send(born, signal.SIGKILL)
            signalled |= set(born)
        time.sleep(0.01)
    return signalled


def same(born: dict[int, int], table: dict[int, ProcessInfo]) -> set[int]:
    """The pids of `born` (pid: when it started, as first seen) that are still those processes
    in `table`, not new ones given a pid that had ended (a start of 0 is not known: kept)."""
    return {pid for pid, started in born.items()
            if pid in table and _alike(table[pid].started, started)}


def _alike(started: int | None, first_seen: int) -> bool:
    """Whether a process that started at `started` (None: gone) is the one first seen to have
    started at `first_seen` (0 for either: not known, so taken to be)."""
    return started is not None and (started == first_seen or 0 in (started, first_seen))


def _boot_ticks(started: float | None) -> int:
    """Clock ticks since the boot at the monotonic moment `started`, less a tick for rounding
    (0 where that is not known: every process is looked at)."""
    if started is None or not hasattr(time, "CLOCK_BOOTTIME"):
        return 0
    boot = time.clock_gettime(time.CLOCK_BOOTTIME) - (time.monotonic() - started)
    return max(0, int(boot * _CLOCK_TICKS) - 1)


def _is_process(pid: int) -> bool:
    """Whether `pid` is a process, not another thread of one (a window probed pid by pid finds
    threads too)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1]) == pid
    except (OSError, ValueError, IndexError):
        pass
    return True


def process_name(pid: int) -> str:
    """The name of process `pid` (its command, as ps shows it), or "?" once it is gone."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as handle:
            return handle.read().strip().decode(errors="replace") or "?"
    except OSError:
        return "?"


def environ_has(pid: int, *markers: bytes) -> bool:
    """Whether the environment process `pid` started with holds every one of `markers`
    (b"\\0NAME=value", with a NUL after the value for an exact one); False when it cannot be
    read (gone, or another user's)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = b"\0" + handle.read()
    except OSError:
        return False
    return all(marker in environ for marker in markers)


def _any_in(session: int, processes: dict[int, ProcessInfo]) -> bool:
    return any(not info.zombie and info.sid == session for info in processes.values())


def _started(pid: int, table: dict[int, ProcessInfo] | None) -> int | None:
    """When the live process `pid` started (0: not known), from `table` or else its stat file;
    None when it is gone or a zombie."""
    info = read_stat(pid) if table is None else table.get(pid)
    return None if info is None or info.zombie else info.started


def _births(pids: Iterable[int], table: dict[int, ProcessInfo] | None) -> dict[int, int]:
    """When each live process of `pids` started (see `_started`); the others left out."""
    return {pid: started for pid in pids if (started := _started(pid, table)) is not None}


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _live(members: dict[int, ProcessInfo]) -> set[int]:
    return {pid for pid, info in members.items() if not info.zombie}


def _send(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


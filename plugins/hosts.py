"""Where a plugin's batch commands run and its files live: on this machine (`LocalHost`), or on
a site's login node reached over OpenSSH (`SshHost`), BOSCO-style, where the factory has only
an account and a key.

Both give the plugins the same verbs: `run` a batch command in the plugin's working directory
on that host, `put` a file there (readable by that account only), read the `tail` of a pilot's
log, and `remove` files. `SshHost` runs every command through one multiplexed connection
(OpenSSH's ControlMaster: one login, then a few milliseconds a command), opened again when it
drops; a host that cannot be reached is tried again after a back-off, and each failure comes
back as a BatchError that says so, which the factory reports and backs off like any failing
batch system.

A command whose outcome must survive a dropped connection (a submission) runs with `once=KEY`:
on the login node it starts detached from the connection, at most once for that key, and
leaves its output in `submits/KEY.d` until the plugin has read it. When the connection drops in
the middle, the BatchError says the outcome is in doubt, and `settle(KEY)` later reads what the
command did (or learns that it never started), so that a pilot is neither lost nor submitted
twice.
"""

from __future__ import annotations

import abc
import contextlib
import getpass
import hashlib
import math
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from floe.config.factory import SITE_TOKEN_VARIABLE

FACTORY_SECRETS = (SITE_TOKEN_VARIABLE, "FLOE_TOKEN", "FLOE_PILOT_TOKEN")
"""Variables of the factory's own environment that never reach a batch command (or a job)."""
SSH_FAILED = 255
"""ssh's exit status when it could not reach the host, or lost the connection."""
NOT_STARTED = 75
"""The exit status of `settle` for a key whose command never started on the host."""
_BACKOFF_FIRST = 5.0
_BACKOFF_MAX = 60.0  # a login node back up is found within a minute
_STDERR_LIMIT = 2000

# Runs "$@" at most once for the key directory "$2" (relative to the working dir), detached
# from the connection (it ignores SIGHUP, its output goes to files), and prints what it printed
# and exits with its status once it has ended. Mode "settle" starts nothing: it only waits for
# and reads a command that was started, or exits NOT_STARTED.
_ONCE = f"""\
umask 077
mode=$1 key=$2; shift 2
if mkdir -p submits && mkdir "$key" 2>/dev/null; then
    if [ "$mode" = settle ]; then rmdir "$key"; echo "floe: never started" >&2; \
exit {NOT_STARTED}; fi
    ( trap '' HUP INT TERM PIPE
      "$@" >"$key/out" 2>"$key/err" </dev/null
      echo $? >"$key/rc.part" && mv "$key/rc.part" "$key/rc" ) </dev/null >/dev/null 2>&1 &
    wait $!
fi
while [ ! -f "$key/rc" ]; do sleep 1; done
cat "$key/out"; cat "$key/err" >&2; exit "$(cat "$key/rc")"
"""


class HostError(Exception):
    """A command could not be run on the host, or failed there. `in_doubt`: the connection
    dropped while a `once` command may have run."""

    def __init__(self, summary: str, argv: Sequence[str] = (), returncode: int | None = None,
                 stderr: str = "", stdout: str | None = None, in_doubt: bool = False) -> None:
        super().__init__(summary)
        self.summary = summary
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        self.in_doubt = in_doubt


@dataclass(frozen=True)
class SshSettings:
    """A login node to run the batch commands on (the site's `ssh` table)."""

    host: str
    """`user@host` (or a name of the factory account's ~/.ssh/config)."""
    port: int = 22
    identity: str = ""
    known_hosts: str = ""
    workdir: str = ""
    """The factory's directory there (relative: to the account's home; empty: floe/<id>)."""
    options: tuple[str, ...] = field(default_factory=tuple)
    """Extra OpenSSH options, as `-o` takes them ("ProxyJump=bastion")."""
    connect_timeout: int = 15


def make_private(path: Path) -> None:
    """`path` made, with those of its parents that are missing, readable by this account only
    (mkdir's `parents` would give the parents the umask's mode: the factory's workdir holds
    pilot scripts, each with its token)."""
    missing = []
    for directory in (path, *path.parents):
        if directory.is_dir():
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir():  # a file in the way: said by the caller
                raise


class Host(abc.ABC):
    """The machine a plugin's batch commands run on."""

    where: str
    """How messages name it: "this machine", or user@host."""

    @abc.abstractmethod
    def workdir(self) -> PurePosixPath:
        """The plugin's working directory on the host (absolute), made if missing, with its
        `logs` directory, where the batch system writes the pilots' output."""

    @abc.abstractmethod
    def user(self) -> str:
        """The account the batch commands run as, whose jobs are the factory's."""

    @abc.abstractmethod
    def run(self, argv: Sequence[str], timeout: float, once: str = "") -> str:
        """Runs `argv` in the working directory and returns its standard output; raises
        HostError. With `once`, see the module's description."""

    @abc.abstractmethod
    def settle(self, once: str, timeout: float) -> str | None:
        """What the `once` command of that key printed (waiting for it to end), or None when it
        never started; raises HostError (a failed command, or an unreachable host)."""

    @abc.abstractmethod
    def put(self, path: PurePosixPath, data: bytes) -> None:
        """Writes `data` to `path` (made readable by the host account only)."""

    @abc.abstractmethod
    def tail(self, pattern: PurePosixPath, nbytes: int) -> bytes | None:
        """The last `nbytes` of the first file matching the glob `pattern`, or None."""

    @abc.abstractmethod
    def remove(self, paths: Iterable[PurePosixPath]) -> None:
        """Deletes these files and directories (those already gone are no error)."""

    @abc.abstractmethod
    def stale(self, directory: PurePosixPath, seconds: float) -> list[PurePosixPath]:
        """The files directly in `directory` last written more than `seconds` ago (none where
        there is no such directory)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Lets go of any connection to the host (a later command opens one again)."""


class LocalHost(Host):
    """This machine: the commands run as subprocesses, in the plugin's working directory."""

    where = "this machine"

    def __init__(self, workdir: Path) -> None:
        self._workdir = Path(workdir)

    def workdir(self) -> PurePosixPath:
        make_private(self._workdir / "logs")
        return self._workdir.absolute()

    def user(self) -> str:
        return getpass.getuser()

    def run(self, argv: Sequence[str], timeout: float, once: str = "") -> str:
        name = PurePosixPath(argv[0]).name
        cwd = self.workdir()
        try:
            # In the working dir, so that whatever a batch system writes relative to the
            # submit directory lands there, not wherever the factory was started.
            done = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd,
                                  env=command_environment(), timeout=timeout, check=False)
        except FileNotFoundError:
            raise HostError(f"{name} was not found", argv) from None
        except subprocess.TimeoutExpired as exc:
            raise HostError(f"{name} did not answer within {timeout:g} s", argv,
                            stderr=_text(exc.stderr)) from None
        except OSError as exc:
            raise HostError(f"{name} could not be run: {exc}", argv) from None
        if done.returncode != 0:
            raise HostError(f"{name} failed with exit code {done.returncode}", argv,
                            done.returncode, done.stderr, done.stdout)
        return done.stdout

    def settle(self, once: str, timeout: float) -> str | None:
        return None  # a local command's outcome is never in doubt: nothing was started

    def put(self, path: PurePosixPath, data: bytes) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        partial.touch(mode=0o700)
        partial.chmod(0o700)
        partial.write_bytes(data)
        partial.replace(target)

    def tail(self, pattern: PurePosixPath, nbytes: int) -> bytes | None:
        for path in sorted(Path(pattern.parent).glob(pattern.name)):
            try:
                with open(path, "rb") as log:
                    log.seek(0, os.SEEK_END)
                    log.seek(max(0, log.tell() - nbytes))
                    return log.read()
            except OSError:
                continue
        return None

    def close(self) -> None:
        return  # nothing is held open on this machine

    def stale(self, directory: PurePosixPath, seconds: float) -> list[PurePosixPath]:
        before = time.time() - seconds
        found = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        if entry.is_file(follow_symlinks=False) \
                                and entry.stat(follow_symlinks=False).st_mtime < before:
                            found.append(PurePosixPath(entry.path))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HostError(f"cannot list {directory}: {exc.strerror or exc}",
                            ["ls", str(directory)]) from None
        return found

    def remove(self, paths: Iterable[PurePosixPath]) -> None:
        for path in paths:
            target = Path(path)
            if target.is_dir():
                for child in target.iterdir():
                    child.unlink(missing_ok=True)
                target.rmdir()
            else:
                target.unlink(missing_ok=True)


class SshHost(Host):
    """A login node reached with OpenSSH as the site's account, through one multiplexed
    connection that is opened again when it drops."""

    def __init__(self, settings: SshSettings, factory_id: str) -> None:
        self.settings = settings
        self.where = settings.host + (f" (port {settings.port})" if settings.port != 22 else "")
        self._relative = settings.workdir or f"floe/{factory_id}"
        self._absolute: PurePosixPath | None = None
        self._user = ""
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: HostError | None = None
        # The master's socket: short (sun_path holds ~100 bytes), private, one per factory,
        # login node and way of logging in (a new key or known_hosts opens a connection of its
        # own instead of riding on one opened with the old).
        key = hashlib.sha256("\0".join([factory_id, settings.host, str(settings.port),
                                        settings.identity, settings.known_hosts,
                                        *settings.options]).encode())
        self.control_dir = Path(tempfile.gettempdir()) / f"floe-ssh-{os.getuid()}"
        self.control_path = self.control_dir / key.hexdigest()[:16]

    def ssh_argv(self, remote: str, shared: bool = True) -> list[str]:
        """The ssh command line that runs the shell command `remote` on the login node:
        through the shared connection, or (not `shared`) through a login of its own."""
        s = self.settings
        argv = ["ssh", "-p", str(s.port),
                "-o", "BatchMode=yes",            # never ask for a password or a passphrase
                "-o", f"ConnectTimeout={s.connect_timeout}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
                "-o", "LogLevel=ERROR"]
        if shared:
            argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path}",
                     "-o", "ControlPersist=600"]
        else:
            argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        if s.identity:
            argv += ["-i", os.path.expanduser(s.identity), "-o", "IdentitiesOnly=yes"]
        if s.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={os.path.expanduser(s.known_hosts)}",
                     "-o", "StrictHostKeyChecking=yes"]
        for option in s.options:
            argv += ["-o", option]
        return [*argv, "--", s.host, remote]

    def workdir(self) -> PurePosixPath:
        if self._absolute is None:
            quoted = shlex.quote(self._relative)
            answer = self._ssh(f"umask 077 && mkdir -p {quoted}/logs && cd {quoted} && id -un "
                               "&& pwd", ["mkdir", "-p", self._relative], timeout=60.0)
            lines = answer.strip().splitlines()
            if len(lines) < 2 or not lines[-1].startswith("/"):
                raise HostError(f"the working directory {self._relative} on {self.where} "
                                f"cannot be read back (id -un; pwd printed "
                                f"{answer.strip()[-80:]!r})")
            self._user, self._absolute = lines[-2].strip(), PurePosixPath(lines[-1])
        return self._absolute

    def user(self) -> str:
        self.workdir()
        return self._user

    def known_workdir(self) -> str:
        """The working directory as far as it is known without asking the host."""
        return str(self._absolute or self._relative)

    def run(self, argv: Sequence[str], timeout: float, once: str = "") -> str:
        cd = f"cd {shlex.quote(str(self.workdir()))} && "
        if once:
            remote = cd + shlex.join(["sh", "-c", _ONCE, "floe-once", "run",
                                      f"submits/{once}.d", *argv])
        else:
            remote = cd + shlex.join(argv)
        return self._ssh(remote, argv, timeout, in_doubt=bool(once))

    def settle(self, once: str, timeout: float) -> str | None:
        remote = f"cd {shlex.quote(str(self.workdir()))} && " + shlex.join(
            ["sh", "-c", _ONCE, "floe-once", "settle", f"submits/{once}.d"])
        try:
            return self._ssh(remote, ["settle", once], timeout)
        except HostError as exc:
            if exc.returncode == NOT_STARTED and "floe: never started" in exc.stderr:
                return None
            raise

    def put(self, path: PurePosixPath, data: bytes) -> None:
        quoted = shlex.quote(str(path))
        part = shlex.quote(f"{path}.part")
        self._ssh(f"umask 077 && mkdir -p {shlex.quote(str(path.parent))} && cat > {part} && "
                  f"chmod 700 {part} && mv {part} {quoted}", ["put", str(path)], 60.0, data=data)

    def tail(self, pattern: PurePosixPath, nbytes: int) -> bytes | None:
        remote = (f"for f in {shlex.quote(str(pattern.parent))}/{_glob_quote(pattern.name)}; "
                  f"do [ -f \"$f\" ] && exec tail -c {int(nbytes)} \"$f\"; done; exit 3")
        try:
            return self._ssh(remote, ["tail", str(pattern)], 60.0, binary=True)
        except HostError as exc:
            if exc.returncode == 3:
                return None
            raise

    def stale(self, directory: PurePosixPath, seconds: float) -> list[PurePosixPath]:
        where = shlex.quote(str(directory))
        minutes = max(1, math.ceil(seconds / 60))  # find's -mmin +N: more than N minutes
        listed = self._ssh(f"[ -d {where} ] || exit 0; exec find {where} -maxdepth 1 -type f "
                           f"-mmin +{minutes}", ["find", str(directory), "-mmin", f"+{minutes}"],
                           60.0)
        return [PurePosixPath(line) for line in listed.splitlines() if line]

    def remove(self, paths: Iterable[PurePosixPath]) -> None:
        names = [str(p) for p in paths]
        if names:  # on stdin: any number of them in one round trip, no command line to outgrow
            shown = ["xargs", "-0", "rm", "-rf", *names[:3], *(["..."] if len(names) > 3 else [])]
            self._ssh("xargs -0 rm -rf --", shown, 60.0 + len(names) / 1000,
                      data=b"\0".join(name.encode() for name in names))

    def close(self) -> None:
        if not self.control_path.exists():
            return
        subprocess.run(["ssh", "-o", f"ControlPath={self.control_path}", "-O", "exit",
                        self.settings.host], capture_output=True, timeout=30, check=False)

    def login(self, timeout: float) -> None:
        """Logs in afresh, riding on no connection already open (`floe factory --check`: what
        it says holds for the settings as they are now); HostError with ssh's words if not."""
        self._ssh("true", ["ssh", self.settings.host, "true"], timeout, shared=False)

    def _ssh(self, remote: str, argv: Sequence[str], timeout: float, data: bytes | None = None,
             in_doubt: bool = False, binary: bool = False, shared: bool = True) -> Any:
        now = time.monotonic()
        if shared and now < self._retry_at and self._last_error is not None:
            raise HostError(f"{self._last_error.summary}; not tried again for another "
                            f"{math.ceil(self._retry_at - now)} s", argv, SSH_FAILED,
                            self._last_error.stderr)
        _private(self.control_dir)
        command = self.ssh_argv(remote, shared)
        try:
            done = subprocess.run(command, input=data if data is not None else b"",
                                  capture_output=True, timeout=timeout, check=False,
                                  env=command_environment())
        except FileNotFoundError:
            raise HostError("ssh was not found: install the OpenSSH client (Debian: "
                            "openssh-client)", argv) from None
        except subprocess.TimeoutExpired as exc:
            raise HostError(f"{PurePosixPath(argv[0]).name} on {self.where} did not answer "
                            f"within {timeout:g} s", argv, stderr=_text(exc.stderr),
                            in_doubt=in_doubt) from None
        stderr = done.stderr.decode(errors="replace")
        if done.returncode == SSH_FAILED:
            self._failures += 1
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._failures - 1))
            error = HostError(f"cannot reach {self.where} over ssh", argv, SSH_FAILED,
                              stderr.strip()[-_STDERR_LIMIT:], in_doubt=in_doubt)
            self._retry_at, self._last_error = time.monotonic() + delay, error
            raise error
        self._failures, self._retry_at, self._last_error = 0, 0.0, None
        stdout = done.stdout if binary else done.stdout.decode(errors="replace")
        if done.returncode != 0:
            raise HostError(f"{PurePosixPath(argv[0]).name} failed on {self.where} with exit "
                            f"code {done.returncode}", argv, done.returncode, stderr,
                            None if binary else stdout)
        return stdout


def _private(directory: Path) -> None:
    """Makes `directory` (this account's, mode 0700) or refuses one that another account could
    have put a socket in."""
    directory.mkdir(mode=0o700, exist_ok=True)
    found = directory.lstat()
    if found.st_uid != os.getuid() or found.st_mode & 0o077 or not directory.is_dir():
        raise HostError(f"{directory} (for the ssh connection's socket) is not this account's "
                        "private directory: remove it, or set TMPDIR elsewhere")


def command_environment() -> dict[str, str]:
    """The factory's environment less its secrets, for the batch commands (and ssh): some
    submit commands hand the submitter's whole environment to the job (Slurm's qsub wrapper
    does), and no task may ever see the site's token."""
    return {name: value for name, value in os.environ.items() if name not in FACTORY_SECRETS}


def _glob_quote(name: str) -> str:
    """`name` for a shell glob: every character quoted but `*` and `?`."""
    return "".join(c if c in "*?" else shlex.quote(c) if not c.isalnum() else c for c in name)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data

"""What a plugin submits: jobs whose scripts carry everything the pilot needs, so that no worker
node reads anything of the factory's (its workdir may sit on a disk no node mounts).

A `Job` is `count` pilots, each a POSIX shell script body of its own (`script(index)`), which the
plugin wraps (in its template, as an HTCondor executable, or run by the local plugin), with an
environment that every pilot gets and that holds no secret.

A `PilotJob`'s script is the launcher:

- it makes a private directory of its own (under $TMPDIR, else /tmp: the node's local disk, or
  the batch system's scratch) and removes it when the pilot ends; a launcher killed outright
  cannot, and the next pilot of this user that starts beside it does (`--launch-dir`, see
  `floe.pilot.launchdir`);
- it finds a Python 3.9 or newer: the site's `python` when one is set, else the newest
  `python3.X` on the PATH, else `python3`. With none it ends at once with exit status 97 and one
  line on stderr naming the host and what it found (`floe pilot: no Python 3.9 or newer ...`),
  which the factory reads back from the pilot's log where it can, and reports;
- it writes the pilot (`pilot.pyz`, carried in the script as base64, or beside it where the
  batch system transfers files: HTCondor), the CA certificate to trust, and its own pilot token
  into that directory, readable by this user only: the token never enters an environment, and
  the pilot reads and deletes its file before it runs any task. Where the worker nodes read the
  factory's workdir (a site's `shared_filesystem`), the job carries no pilot and starts the
  workdir's instead;
- it runs the pilot and passes SIGTERM, SIGINT and SIGHUP on to it (a batch system's stop).

`CommandJob` runs a plain command instead, for the plugins' own tests and tools.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

MIN_PYTHON = (3, 9)
LAUNCH_FAILED = 97
"""The exit status of a launcher that could not start the pilot (no Python it can run it with,
no directory to put it in)."""
BUNDLE_NAME = "pilot.pyz"
_NEWEST_MINOR = 20  # python3.20 down to python3.9 are looked for, newest first
_TOKEN = re.compile(r"[A-Za-z0-9_.-]+")


class Job(Protocol):
    """`count` pilots to submit: each a shell script body, and their shared environment."""

    count: int
    environment: Mapping[str, str]

    def script(self, index: int, bundle_beside: bool = False) -> str:
        """The POSIX shell lines that start pilot `index` (0 <= index < count). With
        `bundle_beside`, the pilot is not carried in the script but transferred into the job's
        working directory as `BUNDLE_NAME` (`files()`)."""

    def files(self) -> Mapping[str, bytes]:
        """Files a batch system that transfers files may carry beside the script, by name."""


@dataclass(frozen=True)
class CommandJob:
    """`count` pilots that each run `command` (no pilot carried): for tests and tools."""

    command: Sequence[str]
    count: int = 1
    environment: Mapping[str, str] = field(default_factory=dict)

    def script(self, index: int, bundle_beside: bool = False) -> str:
        return "exec " + shlex.join(self.command)

    def files(self) -> Mapping[str, bytes]:
        return {}


@dataclass(frozen=True)
class PilotJob:
    """Pilots that each carry the one-file pilot (`bundle`) and start it with `arguments`, one
    pilot token each (`tokens`: the job is one pilot per token)."""

    bundle: bytes
    arguments: Sequence[str]
    tokens: Sequence[str]
    environment: Mapping[str, str] = field(default_factory=dict)
    python: str = ""
    """The site's Python; empty: the newest python3.X on the worker's PATH, else python3."""
    cacert: bytes = b""
    """A PEM certificate the pilot trusts for the matchmaker (passed as --cacert)."""
    bundle_path: str = ""
    """Where every worker node reads the pilot (a shared filesystem): then the job carries no
    pilot, and `bundle` is not used."""

    @property
    def count(self) -> int:
        return len(self.tokens)

    def files(self) -> Mapping[str, bytes]:
        return {} if self.bundle_path else {BUNDLE_NAME: self.bundle}

    def script(self, index: int, bundle_beside: bool = False) -> str:
        lines = [_PREAMBLE, _finder(self.python)]
        pilot = f'"$floe_dir/{BUNDLE_NAME}"'
        if self.bundle_path:
            pilot = shlex.quote(self.bundle_path)
            lines.append(f'[ -r {pilot} ] || floe_fail "cannot read the pilot at {pilot}: is the '
                         "factory's workdir on a filesystem this node reads? If not, set the "
                         'site\'s shared_filesystem to false"')
        elif bundle_beside:
            lines.append(f'cp {BUNDLE_NAME} "$floe_dir/{BUNDLE_NAME}" || '
                         f'floe_fail "no {BUNDLE_NAME} was transferred into $(pwd)"')
        else:
            lines.append(_file(BUNDLE_NAME, self.bundle))
        lines.append(_token(self.tokens[index]))
        words = [shlex.quote(argument) for argument in self.arguments]
        if self.cacert:
            lines.append(_text("ca.pem", self.cacert.decode("ascii")))
            words.append('--cacert "$floe_dir/ca.pem"')
        lines.append(_RUN.replace("PILOT", pilot).replace("ARGUMENTS", " ".join(words)))
        return "\n".join(lines)


def _finder(python: str) -> str:
    candidates = [python] if python else [f"python3.{minor}" for minor in
                                          range(_NEWEST_MINOR, MIN_PYTHON[1] - 1, -1)] + ["python3"]
    return (_FIND.replace("CANDIDATES", " ".join(shlex.quote(c) for c in candidates))
            .replace("WANTED_TUPLE", f"{MIN_PYTHON[0]}, {MIN_PYTHON[1]}")
            .replace("WANTED", f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}")
            .replace("NONE", f"{python} was not found" if python else "no python3 on the PATH")
            .replace("SETTING", "set the site's python setting to one" if not python else
                     "set the site's python setting to a Python 3.9 or newer on the nodes"))


def _token(token: str) -> str:
    """The line that writes the pilot's token into the launcher's directory: with the shell's
    own printf, so that the token is in no process's arguments."""
    if not _TOKEN.fullmatch(token):
        raise ValueError("a pilot token holds only letters, digits, '_', '-' and '.'")
    return (f"printf '%s' '{token}' > \"$floe_dir/token\" || "
            f'floe_fail "cannot write $floe_dir/token"')


def _text(name: str, text: str) -> str:
    """Lines that write `text` (a PEM certificate) to `name` in the launcher's directory."""
    marker = "FLOE_END_OF_FILE"
    return (f'cat > "$floe_dir/{name}" <<\'{marker}\' || floe_fail "cannot write '
            f'$floe_dir/{name}"\n{text.rstrip()}\n{marker}')


def _file(name: str, content: bytes) -> str:
    """Lines that write `content` to `name` in the launcher's directory (base64, decoded by the
    Python found, the same everywhere)."""
    encoded = base64.encodebytes(content).decode()
    marker = "FLOE_END_OF_FILE"
    return (f'"$floe_python" -c "import base64, sys; open(sys.argv[1], \'wb\').write('
            f'base64.decodebytes(sys.stdin.buffer.read()))" "$floe_dir/{name}" <<\'{marker}\' '
            f'|| floe_fail "cannot write $floe_dir/{name}"\n{encoded}{marker}')


_PREAMBLE = f"""\
# The floe pilot's launcher: a private directory, a Python, the pilot, its token.
floe_umask=$(umask)
umask 077
floe_fail() {{
    echo "floe pilot: $* (on $(hostname 2>/dev/null || uname -n))" >&2
    exit {LAUNCH_FAILED}
}}
floe_dir=$(mktemp -d "${{TMPDIR:-/tmp}}/floe-pilot.XXXXXX") || \\
    floe_fail "cannot make a directory under ${{TMPDIR:-/tmp}}"
trap 'rm -rf "$floe_dir"' EXIT"""

_FIND = """\
floe_python=
floe_found=
for floe_candidate in CANDIDATES; do
    command -v "$floe_candidate" >/dev/null 2>&1 || continue
    if floe_version=$("$floe_candidate" -c 'import sys
print("%d.%d" % sys.version_info[:2])
sys.exit(sys.version_info < (WANTED_TUPLE))' 2>/dev/null) && [ -n "$floe_version" ]; then
        floe_python=$floe_candidate
        break
    fi
    floe_found="$floe_found, $floe_candidate (${floe_version:-not a Python: it printed no version})"
done
if [ -z "$floe_python" ]; then
    floe_found=${floe_found#, }
    floe_fail "no Python WANTED or newer to run the pilot: ${floe_found:-NONE}; SETTING"
fi"""

_RUN = """\
umask "$floe_umask"  # the pilot and its tasks make files as the account's own umask says
"$floe_python" PILOT --token-file "$floe_dir/token" --launch-dir "$floe_dir" ARGUMENTS &
floe_pilot=$!
trap 'kill -TERM "$floe_pilot" 2>/dev/null' TERM INT HUP
while :; do
    wait "$floe_pilot"
    floe_status=$?
    kill -0 "$floe_pilot" 2>/dev/null || break
done
exit "$floe_status\""""

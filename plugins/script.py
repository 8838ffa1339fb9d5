"""What the batch systems that take a shell script share (SLURM, SGE, PBS): the plugin renders
its template (templates/<system>.sh, a string.Template) with the submit options in header lines
(`#SBATCH ...`), the environment as `export` lines and the pilot command, and submits the one
script `count` times. Scripts and logs go under the factory's working dir.
"""

from __future__ import annotations

import abc
import secrets
import shlex
import string
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import ClassVar

from plugins.base import (
    BatchError,
    BatchPlugin,
    PilotShape,
    PluginConfigError,
    check_environment_name,
)


class ScriptPlugin(BatchPlugin):
    """A batch system that takes a shell script with its options in header lines (SLURM, SGE,
    PBS): the plugin renders its template beside the module and submits it `count` times."""

    template: ClassVar[str]
    directive_prefix: ClassVar[str]

    @abc.abstractmethod
    def directives(self, shape: PilotShape, log_stem: Path) -> list[str]:
        """The submit options (without the `#SBATCH`-style prefix) for one pilot of `shape`."""

    @abc.abstractmethod
    def submit_one(self, script: Path, shape: PilotShape, log_stem: Path, index: int) -> str:
        """Submits the script for the `index`-th pilot of one submit call; returns its batch id."""

    def submit(self, shape: PilotShape, count: int, command: list[str],
               env: dict[str, str]) -> list[str]:
        if count <= 0:
            return []
        if not command:
            raise PluginConfigError("the pilot command is empty: give the program and arguments")
        # One script per submit call, named uniquely: floe-f1-small-<ms>-<random>.
        stem = f"{self.tag(shape)}-{time.time_ns() // 1_000_000}-{secrets.token_hex(3)}"
        log_stem = self.pilot_dir("logs") / stem
        script = self.pilot_dir("scripts") / f"{stem}.sh"
        # The script holds the pilot token: readable by this user only.
        script.touch(mode=0o700)
        script.chmod(0o700)
        script.write_text(self.render(shape, log_stem, command, env))
        batch_ids: list[str] = []
        for index in range(count):
            try:
                batch_ids.append(self.submit_one(script, shape, log_stem, index))
            except BatchError as exc:
                raise exc.with_submitted(batch_ids) from exc
        return batch_ids

    def render(self, shape: PilotShape, log_stem: Path, command: Sequence[str],
               env: Mapping[str, str]) -> str:
        """The submit script for one pilot of `shape` running `command` with `env`."""
        prefix = self.directive_prefix
        header = [f"{prefix} {line}" for line in self.directives(shape, log_stem)]
        header += [f"{prefix} {line}" for line in shape.directives]
        source = resources.files("plugins.templates").joinpath(self.template).read_text()
        return string.Template(source).substitute(
            directives="\n".join(header),
            environment=environment_lines({**self.pilot_environment(shape), **env}),
            command=shlex.join(command),
            tag=self.tag(shape),
        )


def environment_lines(env: Mapping[str, str]) -> str:
    """`export NAME='value'` lines for a POSIX shell script."""
    lines = []
    for name, value in sorted(env.items()):
        check_environment_name(name)
        lines.append(f"export {name}={shlex.quote(str(value))}")
    return "\n".join(lines)

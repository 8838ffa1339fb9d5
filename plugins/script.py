"""What the batch systems that take a shell script share (SLURM, SGE, PBS): the plugin renders
its template (templates/<system>.sh, a string.Template) with the submit options in header lines
(`#SBATCH ...`), the environment as `export` lines and the pilot's script (`plugins.jobs`: it
carries the pilot itself, so the batch system's copy of the script is all a worker node needs),
and submits one script per pilot (each holds that pilot's own token). Scripts and logs go under
the working dir on the plugin's host (this machine, or the login node over ssh); each script is
deleted once the batch system has taken its copy.
"""

from __future__ import annotations

import abc
import contextlib
import secrets
import shlex
import string
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import PurePosixPath
from typing import ClassVar

from floe.plugins.base import (
    BatchError,
    CommandSubmitter,
    PilotShape,
    check_environment_name,
)
from floe.plugins.hosts import HostError
from floe.plugins.jobs import CommandJob, Job


class ScriptPlugin(CommandSubmitter):
    """A batch system that takes a shell script with its options in header lines (SLURM, SGE,
    PBS): the plugin renders its template beside the module and submits it `count` times."""

    template: ClassVar[str]
    directive_prefix: ClassVar[str]

    @abc.abstractmethod
    def directives(self, shape: PilotShape, log_stem: PurePosixPath) -> list[str]:
        """The submit options (without the `#SBATCH`-style prefix) for one pilot of `shape`."""

    @abc.abstractmethod
    def submit_argv(self, script: PurePosixPath, log: str) -> list[str]:
        """The command that submits `script`, whose pilot's output files are `log`.out and
        `log`.err where the batch system lets the command choose them."""

    @abc.abstractmethod
    def parse_submitted(self, argv: Sequence[str], output: str, log: str) -> list[str]:
        """The batch id (one) in what the submit command printed."""

    def test_argv(self, script: PurePosixPath) -> list[str] | None:
        """The command that asks whether `script` would be taken, submitting nothing; None
        where the batch system has none."""
        return None

    def try_shape(self, shape: PilotShape) -> str | None:
        script = self.pilot_dir("scripts") / f"check-{self.tag(shape)}-{secrets.token_hex(3)}.sh"
        argv = self.test_argv(script)
        if argv is None:
            return None
        try:
            self.host.put(script, self.render(shape, self.pilot_dir("logs") / "check",
                                              CommandJob(["true"]), 0).encode())
            self.run(argv)
        except HostError as exc:
            raise self._batch_error(exc, ["put", str(script)]) from exc
        except BatchError as exc:
            raise BatchError(f"shape {shape.name}: {exc.summary}", exc.command, exc.returncode,
                             exc.stderr, stdout=exc.stdout) from exc
        finally:
            with contextlib.suppress(HostError):
                self.host.remove([script])
        return (f"{shlex.join(argv[:2])} says it would take a pilot of shape {shape.name} "
                "(nothing was queued)")

    def submit(self, shape: PilotShape, job: Job) -> list[str]:
        if job.count <= 0:
            return []
        # One script per pilot, named uniquely: floe-f1-small-<ms>-<random>-<index>.
        stem = f"{self.tag(shape)}-{time.time_ns() // 1_000_000}-{secrets.token_hex(3)}"
        scripts, log_stem = self.pilot_dir("scripts"), self.pilot_dir("logs") / stem
        batch_ids: list[str] = []
        taken: list[PurePosixPath] = []  # scripts (each holds its token) and submit records
        try:
            for index in range(job.count):
                key = f"{stem}-{index}"
                script, log = scripts / f"{key}.sh", f"{log_stem}-{index}"
                leftovers = [script, scripts.parent / "submits" / f"{key}.d"]
                argv = self.submit_argv(script, log)
                try:
                    self.host.put(script, self.render(shape, log_stem, job, index).encode())
                    output = self.run(argv, once=key)
                except HostError as exc:
                    taken += leftovers
                    raise self._batch_error(exc, ["put", str(script)]).with_submitted(
                        batch_ids) from exc
                except BatchError as exc:
                    if exc.in_doubt:  # kept until the next cycle learns what became of it
                        self.doubt(key, shape, argv, log, leftovers)
                    else:  # refused: its script, and the token in it, go too
                        taken += leftovers
                    raise exc.with_submitted(batch_ids, exc.in_doubt) from exc
                batch_ids += self.parse_submitted(argv, output, log)
                taken += leftovers
        finally:
            with contextlib.suppress(HostError):  # unreachable: left in the private workdir
                self.host.remove(taken)
        return batch_ids

    def render(self, shape: PilotShape, log_stem: PurePosixPath, job: Job, index: int) -> str:
        """The submit script of pilot `index` of `job`, of `shape`."""
        prefix = self.directive_prefix
        header = [f"{prefix} {line}" for line in self.directives(shape, log_stem)]
        header += [f"{prefix} {line}" for line in shape.directives]
        source = resources.files("floe.plugins.templates").joinpath(self.template).read_text()
        return string.Template(source).substitute(
            directives="\n".join(header),
            environment=environment_lines({**self.pilot_environment(shape), **job.environment}),
            body=job.script(index),
            tag=self.tag(shape),
        )


def environment_lines(env: Mapping[str, str]) -> str:
    """`export NAME='value'` lines for a POSIX shell script."""
    lines = []
    for name, value in sorted(env.items()):
        check_environment_name(name)
        lines.append(f"export {name}={shlex.quote(str(value))}")
    return "\n".join(lines)

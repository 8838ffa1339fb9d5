"""Retry rules: what a dataset does with a failed attempt, by its error class, exit code and
what it wrote to stderr.

A dataset config may list `retry_rules`; the first rule that matches a failure decides it: how
many failed attempts the task may have before it is failed (`retries`, 0: fail it now), and by
what factor its memory and walltime grow for the next attempt. A failure no rule matches is
retried up to the dataset's `max_retries`, as before. Only failures that are the task's own are
decided here (task_error, resource_overuse, staging_error); a lost pilot is never the task's
fault. The matchmaker decides (`matchmaker.lifecycle`); this module is the schema and the
matching, shared with the documentation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from floe.config.schema import OMIT, Duration, Enum, Field, Float, Integer, ListOf, Object, String
from floe.config.states import COUNTS_AS_FAILURE, ErrorClass

MAX_RULES = 20
"""The most retry rules one dataset may have."""
MAX_GROWTH = 16.0
"""The largest factor one failure may grow a requirement by."""
MAX_RULE_RETRIES = 100
MAX_STDERR_TEXT = 200
"""The longest text a rule looks for in stderr."""

RULE = Object([
    Field("error_class", ListOf(Enum(sorted(c.value for c in COUNTS_AS_FAILURE))),
          "The error classes the rule is for; empty means all three.", default=[],
          example=["task_error"]),
    Field("exit_code", ListOf(Integer(-255, 255)),
          "The exit codes it is for (a process killed by a signal has minus the signal's "
          "number); empty means any.", default=[], example=[137, -9]),
    Field("stderr", String(min_length=1, rule=lambda text: None if len(text) <= MAX_STDERR_TEXT
                           else f"must be at most {MAX_STDERR_TEXT} characters"),
          "Text the end of the attempt's stderr (its tail) or its error message must contain; "
          "case matters.", default=OMIT, example="Killed"),
    Field("retries", Integer(0, MAX_RULE_RETRIES),
          "Failed attempts the task may have before it is failed, when this rule decides; 0 "
          "fails it at once.", example=2),
    Field("grow_memory", Float(1.0, MAX_GROWTH),
          "Factor the task's memory grows by for its next attempt.", default=1.0, example=2),
    Field("grow_walltime", Float(1.0, MAX_GROWTH),
          "Factor the task's walltime grows by for its next attempt.", default=1.0),
], doc="One retry rule: which failures it is for, and what becomes of them.")

FIELD = Field(
    "retry_rules", ListOf(RULE, max_length=MAX_RULES),
    "How failures are retried, by error class, exit code and stderr: the first rule that "
    "matches decides; a failure none matches is retried up to `max_retries`.", default=[],
    example=[{"exit_code": [2], "retries": 0},
             {"error_class": ["task_error"], "stderr": "std::bad_alloc", "retries": 3,
              "grow_memory": 2}],
    details="A rule with `retries` 0 fails the task at its first matching failure (a bad "
            "argument will not get better); `grow_memory` and `grow_walltime` multiply the "
            "task's requirement for the next attempt, up to the largest a task may ask for. "
            "Overused resources grow anyway (see `max_retries`).")


MAX_DELAY = 86400
"""The longest a retry waits (a day), however many failures came before it."""

DELAY_FIELD = Field(
    "retry_delay", Duration(0, MAX_DELAY),
    "How long a failed task waits before its first retry; each later retry waits twice as long "
    "as the one before, up to a day. 0 retries at once.", default="0s", example="1m",
    details="A failure that depends on the moment (a busy file server, a full disk that gets "
            "cleaned) gets time to go away. `floe tasks` and the dataset page say when a task "
            "that backs off may run again.")
ELSEWHERE_FIELD = Field(
    "retry_elsewhere", Duration(0, MAX_DELAY),
    "For this long after a failure, the task is not given to pilots on the host where it "
    "failed, while pilots run on more than one host. 0 lets it go back there at once.",
    default="10m",
    details="A node with a broken library, a full scratch disk or a bad GPU fails every task "
            "it runs; the retry goes to another node. Where all the pilots run on one host (a "
            "single machine, `floe demo`), the retry goes back to it at once.")


def retry_delay(first: int, failures: int) -> int:
    """Seconds the retry after the `failures`-th failure waits: `first` doubled for each
    failure before it, at most MAX_DELAY."""
    if first <= 0 or failures <= 0:
        return 0
    return min(MAX_DELAY, first * 2 ** min(failures - 1, 17))


@dataclass(frozen=True)
class RetryRule:
    """One rule, as `FIELD`'s schema normalized it."""

    number: int
    error_classes: frozenset[ErrorClass]
    exit_codes: frozenset[int]
    stderr: str | None
    retries: int
    grow_memory: float
    grow_walltime: float

    @classmethod
    def from_dict(cls, number: int, data: Mapping[str, Any]) -> RetryRule:
        return cls(number=number,
                   error_classes=frozenset(ErrorClass(c) for c in data.get("error_class") or ()),
                   exit_codes=frozenset(data.get("exit_code") or ()),
                   stderr=data.get("stderr"), retries=int(data["retries"]),
                   grow_memory=float(data.get("grow_memory", 1.0)),
                   grow_walltime=float(data.get("grow_walltime", 1.0)))

    def matches(self, error: ErrorClass, exit_code: int | None, stderr: str,
                message: str) -> bool:
        if error not in COUNTS_AS_FAILURE:
            return False
        if self.error_classes and error not in self.error_classes:
            return False
        if self.exit_codes and exit_code not in self.exit_codes:
            return False
        return self.stderr is None or self.stderr in stderr or self.stderr in message

    def describe(self) -> str:
        """The rule as its reason names it: `rule 2 (exit code 137, stderr "Killed")`."""
        said = []
        if self.error_classes:
            said.append("/".join(sorted(c.value for c in self.error_classes)))
        if self.exit_codes:
            codes = ", ".join(str(c) for c in sorted(self.exit_codes))
            said.append(f"exit code {codes}")
        if self.stderr is not None:
            said.append(f"stderr {self.stderr!r}")
        return f"retry rule {self.number}" + (f" ({', '.join(said)})" if said else "")


def rules_of(raw: Sequence[Mapping[str, Any]]) -> tuple[RetryRule, ...]:
    """The rules of a normalized config, numbered from 1."""
    return tuple(RetryRule.from_dict(number, rule) for number, rule in enumerate(raw, 1))


def first_match(rules: Sequence[RetryRule], error: ErrorClass, exit_code: int | None,
                stderr: str, message: str) -> RetryRule | None:
    """The rule that decides a failure, or None when none matches."""
    for rule in rules:
        if rule.matches(error, exit_code, stderr, message):
            return rule
    return None

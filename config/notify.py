"""Notifications a dataset's owner asks for: webhooks called when the dataset completes, fails,
or its failure rate crosses a threshold. This module is the schema (`FIELD`, part of the dataset
config) and what a notification means; the matchmaker delivers them (`matchmaker.notify`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from floe.config.schema import Enum, Field, Float, ListOf, Object, String

EVENTS = ("complete", "failed", "failure_rate")
MAX_HOOKS = 5
"""The most webhooks one dataset may have."""
MIN_ENDED = 20
"""Attempts that must have ended before a failure rate is judged (a first failure of two
attempts is not a rate)."""


def _url_problem(text: str) -> str | None:
    if not text.startswith(("http://", "https://")) or len(text) > 2000:
        return "must be an http:// or https:// URL of at most 2,000 characters"
    return None


HOOK = Object([
    Field("url", String(min_length=1, rule=_url_problem), "Where the notification is POSTed.",
          example="https://example.org/hooks/floe"),
    Field("on", ListOf(Enum(EVENTS), min_length=1), "What it is sent for: the dataset "
          "completing, failing (it ended with failed tasks, or was aborted), or its failure "
          "rate crossing `failure_rate`.", default=["complete", "failed"],
          example=["complete", "failed", "failure_rate"]),
    Field("failure_rate", Float(0, 1, above=True), "The fraction of ended attempts that "
          "failed above which `failure_rate` is sent (once), judged from the 20th ended "
          "attempt on.", default=0.5, example=0.2),
], doc="A webhook: a POST of a JSON body, signed by the matchmaker (Ed25519), retried with "
       "back-off until the receiver answers 2xx.")

FIELD = Field(
    "notify", ListOf(HOOK, max_length=MAX_HOOKS),
    "Webhooks to call when the dataset completes, fails or fails too often.", default=[],
    example=[{"url": "https://example.org/hooks/floe", "on": ["failed", "failure_rate"],
              "failure_rate": 0.2}],
    details="Each call is a POST of `{\"event\", \"dataset\", \"description\", \"owner\", "
            "\"status\", \"tasks\", \"failure_rate\", \"time\"}` with the headers "
            "`X-Floe-Event`, `X-Floe-Timestamp` and `X-Floe-Signature` (`ed25519=` and the "
            "base64 signature of the timestamp, a dot and the body), which a receiver checks "
            "with the matchmaker's public key from `GET /api/v1/notifications/key`. A "
            "receiver that does not answer 2xx is tried again after 1 s, 10 s, 1 min and "
            "10 min; each delivery, and a give-up, is in the dataset's history.")


@dataclass(frozen=True)
class Hook:
    """One webhook of a dataset, as the schema normalized it."""

    url: str
    on: frozenset[str]
    failure_rate: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Hook:
        return cls(str(data["url"]), frozenset(data.get("on") or ("complete", "failed")),
                   float(data.get("failure_rate", 0.5)))


def hooks_of(raw: Sequence[Mapping[str, Any]]) -> tuple[Hook, ...]:
    return tuple(Hook.from_dict(hook) for hook in raw)

"""What the factory asks the matchmaker, over HTTP with the site's token: the demand for each
pilot shape, what became of its pilots' batch jobs (it tells which ended, and asks which of its
pilots registered), short-lived pilot tokens for the pilots it submits, and, when it stops,
that the pilots it said it had queued no longer count.

Each pilot gets a pilot token of its own (it registers that pilot and nothing else), asked for
with a lifetime that covers the pilot's walltime plus its time in the queue (the site's
`queue_allowance`); the site's own token never leaves the factory.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from floe.config.connecting import unreachable_hint

WITHDRAW_TIMEOUT = 5.0
"""Seconds a stopping factory waits for the matchmaker to take its withdrawal."""


class MatchmakerError(RuntimeError):
    """The matchmaker could not be asked, or refused; the message says which and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SiteClient:
    """The matchmaker as one site's factory sees it."""

    def __init__(self, url: str, site: str, token: str, *, cacert: str = "",
                 factory: str = "default", timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.site = site
        self.factory = factory
        self.timeout = timeout
        self._token = token
        self._context = ssl.create_default_context(cafile=cacert) if cacert else None

    def _post(self, path: str, body: Mapping[str, Any] | None, method: str = "POST",
              timeout: float | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path, data=None if body is None else json.dumps(body).encode(),
            method=method, headers={"Content-Type": "application/json",
                                    "Authorization": f"Bearer {self._token}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout,
                                        context=self._context) as reply:
                return json.loads(reply.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text.strip()[:300] or exc.reason
            hint = (" (check the site's token_file or FLOE_SITE_TOKEN)"
                    if exc.code in (401, 403) else "")
            raise MatchmakerError(f"the matchmaker refused {path}: {message}{hint}",
                                  exc.code) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            said = (unreachable_hint(self.url, exc, "`cacert` in the factory's config")
                    or getattr(exc, "reason", exc))
            raise MatchmakerError(f"cannot reach the matchmaker at {self.url}: {said}") from None

    def demand(self, shapes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The demand answer for these shapes (each with its `queued` count)."""
        quoted = urllib.parse.quote(self.site, safe="")
        return self._post(f"/api/v1/sites/{quoted}/demand",
                          {"shapes": list(shapes), "factory": self.factory})

    def withdraw(self) -> int:
        """Withdraw what this factory said it has queued (it stops): other factories' demand
        no longer counts those pilots. Returns how many they were."""
        quoted = urllib.parse.quote(self.site, safe="")
        factory = urllib.parse.quote(self.factory, safe="")
        answer = self._post(f"/api/v1/sites/{quoted}/demand?factory={factory}", None, "DELETE",
                            timeout=WITHDRAW_TIMEOUT)
        return int(answer["withdrawn"])

    def batch_jobs(self, batch_system: str, *, pilots: Sequence[str] = (),
                   ended: Sequence[str] = ()) -> dict[str, Any]:
        """Tell the matchmaker which of this factory's pilots' batch jobs (of `batch_system`)
        ended, and ask which of `pilots` registered (at most MAX_BATCH_IDS of each): the answer's
        `registered` lists those that registered, and `lost` the ended ones whose pilots the
        matchmaker still counted running and has now ended as lost."""
        quoted = urllib.parse.quote(self.site, safe="")
        return self._post(f"/api/v1/sites/{quoted}/batch-jobs",
                          {"batch_system": batch_system, "factory": self.factory,
                           "pilots": list(pilots), "ended": list(ended)})

    def pilot_tokens(self, count: int, needed: float) -> list[str]:
        """`count` pilot tokens (each registers one pilot) valid for at least `needed` more
        seconds."""
        quoted = urllib.parse.quote(self.site, safe="")
        path = f"/api/v1/sites/{quoted}/pilot-tokens"
        try:
            answer = self._post(path, {"lifetime": int(needed) + 60, "count": count})
        except MatchmakerError as exc:
            if exc.status == 400 and "lifetime" in str(exc):
                raise MatchmakerError(f"{exc}: the matchmaker's pilot_token_max_lifetime must "
                                      "cover the site's longest shape walltime, "
                                      "walltime_overhead and queue_allowance together",
                                      exc.status) from None
            raise
        return list(answer["tokens"])

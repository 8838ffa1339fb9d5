"""Recording how attempts ended: one flow for every report, whether a pilot sends one (the attempt
route, proved by its passkey alone), many at once (its bulk report, proved by its token and each
attempt's passkey), or the server ends an attempt itself (a lost pilot, a heartbeat timeout, an
answer that never reached its pilot). A report of one is a bulk report of one.

Every recording goes the same way, in one order:

1. each report is checked on its own (its passkey; in a bulk report, that the attempt is the
   pilot's). One for an attempt that is no longer in flight is answered from the stored attempt:
   a repeated report is acknowledged as a duplicate (so a pilot that lost the first answer never
   records twice), one of a void attempt is refused with the reason;
2. the jobs of the others are locked together, and each outcome is planned (`lifecycle.plan`)
   and applied to memory at once with its undo (`applying`);
3. an ask riding on the reports is decided from what they leave (the resources they free, the
   dependents they make ready), as a separate ask right after them would be;
4. everything is written in one group commit, a batch per outcome and one for the ask, before
   anything is answered: a batch that fails is undone in memory, one that commits releases its
   attempt (and voids its passkey, for an attempt reset).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from floe.config.resources import Usage
from floe.config.states import AttemptState, ErrorClass

from . import applying, dispatch, passkeys
from .auth import not_its_key
from .engine import ActiveAttempt, Engine, Pilot
from .errors import ApiError, BadRequest, Conflict, Forbidden, NotFound
from .lifecycle import Outcome, Plan
from .storage import queries
from .storage.database import Batch, StaleWrite

Next = dispatch.Answer | ApiError
"""What an ask riding on reports is answered: the ask route's answer, or why it was refused."""


@dataclass
class Report:
    """One attempt's end to record. `passkey` None: the server's own (nothing to check), and
    then `expect` names the attempt in flight it is about (it is left alone if that one ended)."""

    attempt_id: int
    outcome: Outcome
    passkey: str | None = None
    expect: ActiveAttempt | None = None


@dataclass
class Asking:
    """An ask riding on reports: the pilot that asks, the pilot the caller's key speaks for
    (None: a pilot token, which speaks for no registered pilot), and the ask (the ask route's
    body, which `dispatch.Offer` parses)."""

    pilot_id: int
    speaker: int | None
    ask: Mapping[str, Any]


Answered = dict[str, Any] | ApiError | None
"""What one report is answered: its record, or why it cannot be made (None: a report of the
server's own about an attempt that ended meanwhile)."""


async def record(engine: Engine, reports: Sequence[Report], *, owner: int | None = None,
                 asking: Asking | None = None) -> tuple[list[Answered], Next | None]:
    """Record `reports` (see the module docstring); with `owner`, each must be of an attempt
    given to that pilot. What each is answered, in order, and the ask's answer (None without
    `asking`)."""
    results: list[Answered] = [None] * len(reports)
    fresh: list[tuple[int, ActiveAttempt]] = []
    stale: list[int] = []
    taken: set[int] = set()
    for index, report in enumerate(reports):
        active = engine.active.get(report.attempt_id)
        if active is None or report.attempt_id in taken or \
                (report.expect is not None and active is not report.expect):
            stale.append(index)
            continue
        try:
            if report.passkey is not None:
                passkeys.check(active.attempt_id, active.passkey_hash, report.passkey)
            if owner is not None:
                _check_owner(active.attempt_id, active.pilot_id, owner)
        except ApiError as refused:
            results[index] = refused
            continue
        taken.add(report.attempt_id)
        fresh.append((index, active))
    datasets = engine.datasets
    locks = engine.job_locks(
        (a.dataset_id, datasets[a.dataset_id].locate(a.task_id)[0]) for _, a in fresh)
    async with locks:
        following, asker, offer = _ask_of(engine, asking)
        now = engine.clock()
        batches: list[Batch] = []
        applied: list[tuple[int, Plan]] = []
        for index, active in fresh:
            if engine.active.get(active.attempt_id) is not active:  # ended while we waited
                stale.append(index)
                continue
            batch, decided = applying.outcome(engine, active, reports[index].outcome, now)
            batches.append(batch)
            applied.append((index, decided))
        asked = Batch()
        if offer is not None:
            following = dispatch.reserve_offer(engine, asker, offer, asked)
        refusals = await engine.db.write_each([*batches, asked])
    for refused in refusals:
        if refused is not None and not isinstance(refused, StaleWrite):
            raise refused
    ask_refused = refusals.pop()
    for (index, decided), refused in zip(applied, refusals, strict=True):
        if refused is None:
            results[index] = recorded(decided)
        else:  # ended meanwhile on the server's side: the stored attempt says how
            stale.append(index)
    for index in sorted(stale):
        report = reports[index]
        if report.passkey is not None:
            try:
                results[index] = (await _stale(engine, report.attempt_id, report.passkey,
                                               owner))[0]
            except ApiError as refused:
                results[index] = refused
    if offer is not None and ask_refused is not None:
        following = await ask_for(engine, asking)
    return results, following


def _ask_of(engine: Engine, asking: Asking | None
            ) -> tuple[Next | None, Pilot | None, dispatch.Offer | None]:
    """The pilot that asks and its offer, or why it may not ask (under the jobs' locks: the
    pilot may have ended while they were taken)."""
    if asking is None:
        return None, None, None
    pilot = _asker(engine, asking)
    if isinstance(pilot, ApiError):
        return pilot, None, None
    try:
        return None, pilot, dispatch.Offer.from_dict(asking.ask, pilot.site.name)
    except (KeyError, TypeError, ValueError) as exc:
        return BadRequest(f"ask: {exc}"), None, None


def _asker(engine: Engine, asking: Asking) -> Pilot | ApiError:
    refusal = not_its_key(asking.speaker, asking.pilot_id)
    if refusal is not None:
        return Forbidden(refusal)
    return engine.pilots.get(asking.pilot_id) or dispatch.pilot_ended(asking.pilot_id)


async def ask_for(engine: Engine, asking: Asking) -> Next:
    """An ask on its own, for the pilot `asking` names (when the one riding on reports could
    not be made with them)."""
    following, pilot, offer = _ask_of(engine, asking)
    if pilot is None:
        return following
    try:
        return await dispatch.ask(engine, pilot, offer)
    except ApiError as refused:  # the pilot ended while the ask waited
        return refused


def _check_owner(attempt_id: int, given_to: int, pilot_id: int) -> None:
    if given_to != pilot_id:
        raise Forbidden(f"attempt {attempt_id} was given to pilot {given_to}, not to pilot "
                        f"{pilot_id}: report it in that pilot's reports")


def recorded(decided: Plan) -> dict[str, Any]:
    """A report's answer once its outcome is committed."""
    return {"recorded": True, "duplicate": False, "task_state": decided.moves[0][2].value,
            "reason": decided.reason or None}


async def prove_passkey(engine: Engine, attempt_id: int, passkey: str) -> None:
    """Refuse (403, or 404 for no such attempt) a passkey that is not the one attempt
    `attempt_id` was handed out with, from memory or the record: checked before a large body is
    read, so that no one without it can make the server hold that body."""
    active = engine.active.get(attempt_id)
    if active is not None:
        passkeys.check(attempt_id, active.passkey_hash, passkey)
        return
    row = await queries.ended_attempt(engine.db, attempt_id)
    if row is None:
        raise NotFound(f"there is no attempt {attempt_id}")
    passkeys.check(attempt_id, row["passkey_hash"], passkey)


async def stale_answer(engine: Engine, attempt_id: int, passkey: str) -> dict[str, Any]:
    """Answer a report, heartbeat or upload for an attempt that is no longer in flight: a
    repeated report of a recorded result is acknowledged again; anything else is refused with
    the reason."""
    return (await _stale(engine, attempt_id, passkey))[0]


async def _stale(engine: Engine, attempt_id: int, passkey: str, owner: int | None = None
                 ) -> tuple[dict[str, Any], int]:
    """`stale_answer`, with the id of the pilot the attempt was given to (which must be `owner`
    when one is given)."""
    row = await queries.ended_attempt(engine.db, attempt_id)
    if row is None:
        raise NotFound(f"there is no attempt {attempt_id}")
    passkeys.check(attempt_id, row["passkey_hash"], passkey)
    if owner is not None:
        _check_owner(attempt_id, row["pilot_id"], owner)
    if row["state"] in (AttemptState.COMPLETE.value, AttemptState.FAILED.value):
        return {"recorded": True, "duplicate": True, "state": row["state"]}, row["pilot_id"]
    reason = engine.voided.get(attempt_id) or row["error_message"] or "reset"
    raise Conflict(f"attempt {attempt_id} is void ({reason}); its passkey is no longer valid "
                   "and its result will not be recorded")


async def report(engine: Engine, attempt_id: int, passkey: str,
                 outcome: Outcome) -> dict[str, Any]:
    """A pilot's final report on one of its attempts, proved by the passkey alone."""
    (answer,), _ = await record(engine, [Report(attempt_id, outcome, passkey)])
    if isinstance(answer, ApiError):
        raise answer
    return answer


async def report_and_ask(engine: Engine, attempt_id: int, passkey: str, outcome: Outcome,
                         ask: Mapping[str, Any], speaker: int | None
                         ) -> tuple[dict[str, Any], Next]:
    """A final report that also asks, with `ask` (the ask route's body), for the next task of the
    pilot the attempt was given to, whose key the caller must hold (`speaker`): the report's
    answer, and the ask's (or why that pilot may not ask). A report the passkey cannot make is
    refused (raised) before anything is asked."""
    active = engine.active.get(attempt_id)
    if active is None:
        answer, pilot_id = await _stale(engine, attempt_id, passkey)
        return answer, await ask_for(engine, Asking(pilot_id, speaker, ask))
    passkeys.check(attempt_id, active.passkey_hash, passkey)
    (answer,), following = await record(engine, [Report(attempt_id, outcome, passkey)],
                                        asking=Asking(active.pilot_id, speaker, ask))
    if isinstance(answer, ApiError):
        raise answer
    return answer, following


async def report_many(engine: Engine, pilot_id: int, reports: Sequence[Mapping[str, Any]],
                      ask: Mapping[str, Any] | None
                      ) -> tuple[list[dict[str, Any]], Next | None]:
    """Reports of `pilot_id`'s attempts (each a report body with "attempt_id" and "passkey"),
    sent with that pilot's key, and, with `ask`, the ask of that pilot: what each report is
    answered (as the single report route answers it, or why it cannot be made:
    {"attempt_id", "error", "status"}), in order, and the ask's answer (None without `ask`)."""
    parsed: list[Report | ApiError] = []
    for item in reports:
        try:
            parsed.append(Report(item["attempt_id"], Outcome.from_dict(item), item["passkey"]))
        except ApiError as refused:
            parsed.append(refused)
    wanted = [item for item in parsed if isinstance(item, Report)]
    answers, following = await record(
        engine, wanted, owner=pilot_id,
        asking=Asking(pilot_id, pilot_id, ask) if ask is not None else None)
    given = iter(answers)
    results = []
    for item, body in zip(parsed, reports, strict=True):
        answer = item if isinstance(item, ApiError) else next(given)
        attempt_id = body["attempt_id"]
        if isinstance(answer, ApiError):
            results.append({"attempt_id": attempt_id, "error": answer.message,
                            "status": answer.status})
        else:
            results.append({"attempt_id": attempt_id, **answer})
    return results, following


async def lose(engine: Engine, active: ActiveAttempt, error: ErrorClass, reason: str) -> None:
    """End an attempt on the server's side (its pilot lost, silent, or never given it): void it
    and requeue its task, as a report of `error` would. Nothing happens if it ended meanwhile."""
    outcome = Outcome(error_class=error, error_message=reason,
                      usage=Usage.from_dict(active.usage))
    await record(engine, [Report(active.attempt_id, outcome, expect=active)])

"""Matching: which ready task a pilot's slot gets, and handing it out under a fresh passkey.

The order is fair share first (users by decayed usage / share), then, within a user, datasets
by decayed usage / priority, then continuing jobs before new ones. GPU capacity goes to GPU
tasks first: a slot with free GPUs is offered every user's GPU tasks before anyone's CPU tasks.
A task is offered only to a slot that has time left for its walltime (see `config.resources`).

The chosen task is reserved in memory at once (so no concurrent ask can take it), committed
with its new attempt in a shared group commit, and only then answered.

An ask may take several tasks at once (`Offer.max_tasks`): they are chosen one after another,
each in the fair-share order left by charging the one before, from what the slot has left: side
by side, each takes its CPUs, memory, disk and GPUs from the slot; in series, each takes its
expected runtime from the slot's time left (its learned runtime, see `runtimes`, or else its
walltime), and each one's walltime must fit what the ones before it left; the answer ends once
those given are expected to run the ask's `series_seconds` (floe's pilot sends its prefetch
horizon), without `"more": false` where other tasks are ready. So a task whose runtime is not
learned yet, expected to run its walltime, comes alone, and a pilot fresh from instant tasks
queues one 2 s task, not as many as its recent ones would have filled a second with (12 tasks of
2 s on 4 such pilots took 8.1 s, three pilots running 3 or 4 and one running 1, instead of 6).
In series, a pilot takes no more of a dataset's tasks than it leaves ready there: the last tasks
of a dataset are shared among the pilots that ask (a queue of 64 short tasks left to one pilot
kept a dataset of 2,000 going on one pilot for a tenth of its run after the other had ended).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from floe.config.resources import Slot, format_duration, format_size
from floe.config.states import TaskState

from . import passkeys
from .engine import ActiveAttempt, Engine, Pilot
from .errors import NotFound
from .fairshare import expected_runtime, weight
from .holding import shape_of
from .model import DatasetState, DatasetStatus
from .storage import writes
from .storage.database import Batch


@dataclass
class Dispatch:
    """A task handed to a pilot: everything it needs to run and report it."""

    attempt_id: int
    passkey: str
    dataset: DatasetState
    task_id: int
    expected: float
    """Seconds it is expected to run (its learned runtime, at most its walltime)."""

    def to_json(self, engine: Engine) -> bytes:
        """The answer's JSON: {"attempt": {...}} with the task, its scope and its passkey."""
        return f'{{"attempt":{self.attempt_json(engine)}}}'.encode()

    def attempt_json(self, engine: Engine) -> str:
        """The attempt's object of the answer: the task, its scope and its passkey.

        The parts every attempt of a task definition shares (its spec and the steering, often
        large) are serialized once per dataset and steering version and reused; only ids and
        the passkey vary.
        """
        dataset = self.dataset
        job_index, task_index = dataset.locate(self.task_id)
        requirements = dataset.requirements(self.task_id)
        fragments = dataset.fragments
        version = dataset.version_of(job_index)
        key = task_index if version.version == 1 else (task_index, version.version)
        shared = fragments.get(key)
        if shared is None:
            spec = dataset.config.tasks[task_index]
            shared = fragments[key] = json.dumps({
                "task": spec.name, "dataset": dataset.id, "jobs_submitted": dataset.jobs,
                "spec": spec.raw, "steering": version.steering,
                "config_version": version.version,
                "heartbeat_interval": engine.settings.heartbeat_interval,
                "heartbeat_timeout": engine.settings.heartbeat_timeout,
            }, separators=(",", ":"))[1:]
        needs = fragments.get(requirements)
        if needs is None:
            needs = fragments[requirements] = json.dumps(requirements.to_dict(),
                                                         separators=(",", ":"))
        return (f'{{"id":{self.attempt_id},"passkey":"{self.passkey}",'
                f'"task_id":{self.task_id},"job":{job_index},"requirements":{needs},'
                f'"expected_seconds":{self.expected!r},{shared}')


@dataclass
class NoWork:
    """No task fits: why, how long the pilot should wait before asking again, and the shortest
    walltime among ready tasks (a pilot with less time left than that can leave)."""

    reason: str
    wait: int
    shortest_walltime: int | None = None
    final: bool = False
    """Not to be held: work that comes would not go to this pilot (its host is a black hole)."""


@dataclass
class Given:
    """The answer to an ask in the list form (one with `max_tasks`): the tasks handed out, or,
    when none fits, why not."""

    attempts: list[Dispatch]
    nothing: NoWork | None = None
    dry: bool = False
    """Fewer were handed out than asked for: nothing more fits the ask now, or what would is
    left to other pilots (at most about half of a dataset's ready tasks go to one ask), or those
    given in series fill its `series_seconds` and no other task is ready (`_more_ready`)."""

    def to_json(self, engine: Engine) -> bytes:
        """{"attempts": [{...}, ...]}, each as the single form's "attempt", and "more": false
        when `dry`; or, with none, {"attempts": [], "wait": ..., "reason": ...,
        "shortest_walltime": ...}."""
        nothing = self.nothing
        if nothing is None:
            return ('{"attempts":[' + ",".join(d.attempt_json(engine) for d in self.attempts)
                    + ('],"more":false}' if self.dry else "]}")).encode()
        return json.dumps({"attempts": [], "wait": nothing.wait, "reason": nothing.reason,
                           "shortest_walltime": nothing.shortest_walltime},
                          separators=(",", ":")).encode()


Answer = Dispatch | NoWork | Given


@dataclass(frozen=True)
class Offer:
    """What a pilot asks with: its free slot and, for the list form of the answer, the most
    tasks it takes (`max_tasks`; None for the single form) and whether it runs them one after
    another (`in_series`) or side by side."""

    slot: Slot
    max_tasks: int | None = None
    in_series: bool = False
    series_seconds: float = math.inf
    """In series: stop handing out once the tasks given are expected to run this long."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], site: str) -> Offer:
        """From the ask route's body (already checked against its schema), at `site`."""
        most = data.get("max_tasks")
        return cls(Slot.from_dict(dict(data, site=site)), None if most is None else int(most),
                   bool(data.get("in_series", False)),
                   float(data.get("series_seconds", math.inf)))


def nothing_in(answer: Answer) -> bool:
    """Whether `answer` hands out no task."""
    return isinstance(answer, NoWork) or (isinstance(answer, Given) and not answer.attempts)


def may_hold(answer: Answer) -> bool:
    """Whether an ask answered with no task may be held until work comes."""
    nothing = answer if isinstance(answer, NoWork) else getattr(answer, "nothing", None)
    return nothing_in(answer) and not (nothing is not None and nothing.final)


def ask_again(answer: Answer) -> Answer:
    """An answer of no task that says to ask again at once (the ask was held its whole time)."""
    if isinstance(answer, NoWork):
        return dataclasses.replace(answer, wait=0)
    if isinstance(answer, Given) and answer.nothing is not None:
        return Given([], dataclasses.replace(answer.nothing, wait=0))
    return answer


def answer_json(engine: Engine, answer: Answer) -> bytes:
    """What an ask is answered, as JSON: the dispatch (or dispatches), or why nothing fits and
    how long to wait (the ask route's answer, and a report's `next`)."""
    if isinstance(answer, NoWork):
        return json.dumps({"attempt": None, "wait": answer.wait, "reason": answer.reason,
                           "shortest_walltime": answer.shortest_walltime},
                          separators=(",", ":")).encode()
    return answer.to_json(engine)


HELD = "held"
"""What `choose` answers when the only tasks that fit were retried ones held back (they back off,
or avoid the asking pilot's host): nothing now, yet the shape is not barren."""


def choose(engine: Engine, slot: Slot, misses: set[tuple[int, bool | None]] | None = None,
           shape: Slot | None = None, host: str = ""
           ) -> tuple[DatasetState, int] | str | None:
    """Pop the best ready task for `slot`, or None: users most deserving first (lowest decayed
    usage per share), and each user's datasets most deserving first (usage per priority); both
    orders are kept up to date by the ledgers, and walked in place (nothing is charged while
    we look), since this runs for every task handed out.

    `misses`, when given, collects the (dataset, GPU phase) pairs that had nothing for `slot`
    and skips those already in it: a caller asking again for a part of the same slot, with no
    await in between, need not look at them twice (nothing fits a smaller slot that did not
    fit the larger one, and no task became ready meanwhile). `host` is the asking pilot's:
    a retried task may avoid it (`model.Later`); HELD when only such tasks fitted."""
    processing = DatasetStatus.PROCESSING
    now = engine.clock()
    hosts = len(engine.hosts)
    held_any = False
    datasets = engine.datasets
    owners = engine.owners
    ranked = engine.dataset_usage.ranked
    shape = shape or shape_of(slot)
    missed = _remembered(engine.missed, shape)
    missed_users = _remembered(engine.missed_users, shape)
    seconds = slot.seconds
    for gpu_tasks in (True, False) if slot.gpus > 0 else (None,):
        for user_id in engine.user_usage.ranked():
            owner = owners.get(user_id)
            # GPU tasks are all a GPU phase takes, and they fit no other (a slot without GPUs
            # has only the phase None).
            if owner is None or not owner.ready or (
                    not owner.gpu_ready if gpu_tasks else owner.gpu_ready == owner.ready):
                continue
            user_key = (user_id, gpu_tasks)
            seen = missed_users.get(user_key)
            if seen is not None and seen[0] == owner.epoch and seconds <= seen[1]:
                continue  # none of this user's queues had anything, and none has changed
            all_missed = True
            for dataset_id in ranked(user_id):
                dataset = datasets[dataset_id]
                queue = dataset.queue
                if not queue.ready:
                    continue
                if dataset.status != processing:
                    all_missed = False  # it may have something when it is resumed
                    continue
                key = (dataset_id, gpu_tasks)
                if misses is not None and key in misses:
                    all_missed = False  # missed a larger slot: not known to miss this one
                    continue
                # A queue that had nothing for this shape with as much time left has
                # nothing now if no task became ready in it since (most asks of idle
                # pilots that fit no queued work stop here, dataset by dataset).
                seen = missed.get(key)
                if seen is not None and seen[0] == queue.epoch and seconds <= seen[1]:
                    continue
                later = dataset.later
                held = None
                if later:
                    def held(task_id: int, later: dict = later) -> bool:
                        nonlocal held_any
                        waits = later.get(task_id)
                        if waits is None or not waits.holds(host, now, hosts):
                            return False
                        held_any = True
                        return True
                before = held_any
                taken = queue.take(slot, gpu_tasks, dataset.is_ready, held)
                if taken is not None:
                    return dataset, taken[0]
                if held_any and not before:
                    all_missed = False  # it has a task for this shape, later or elsewhere
                    continue
                missed[key] = _widened(seen, queue.epoch, seconds)
                if misses is not None:
                    misses.add(key)
            if all_missed:
                missed_users[user_key] = _widened(missed_users.get(user_key), owner.epoch,
                                                  seconds)
    return HELD if held_any else None


def _remembered(by_shape: dict[Slot, dict], shape: Slot) -> dict:
    """The misses remembered for `shape` (all shapes' are forgotten past a bound)."""
    found = by_shape.get(shape)
    if found is None:
        if len(by_shape) >= MAX_REMEMBERED_SHAPES:
            by_shape.clear()
        found = by_shape[shape] = {}
    return found


def _widened(seen: tuple[int, int] | None, epoch: int, seconds: int) -> tuple[int, int]:
    """A miss at `epoch` with `seconds` left, joined with what was `seen` at the same epoch
    (nothing fitted the most time left that was looked at)."""
    if seen is None or seen[0] != epoch:
        return epoch, seconds
    return epoch, max(seconds, seen[1])


def explain(engine: Engine, slot: Slot) -> NoWork:
    """Why nothing fits `slot`, as one sentence, and a suggested wait."""
    settings = engine.settings
    ready = sum(d.queue.ready for d in engine.open.values()
                if d.status == DatasetStatus.PROCESSING)
    if not ready:
        pending = any(d.materialized < d.jobs for d in engine.open.values()
                      if d.status == DatasetStatus.PROCESSING)
        if pending:
            return NoWork("no ready task yet: new jobs are being created",
                          min(5, settings.idle_wait))
        return NoWork("no ready task in any dataset", settings.idle_wait)
    reasons: dict[str, int] = {}
    shortest = None
    for dataset in engine.open.values():
        if dataset.status != DatasetStatus.PROCESSING:
            continue
        for count, reason in dataset.queue.reasons(slot):
            reasons[reason] = reasons.get(reason, 0) + count
        for task_class in dataset.queue.classes.values():
            if task_class.ready:
                walltime = task_class.requirements.walltime
                shortest = walltime if shortest is None else min(shortest, walltime)
    common = max(reasons.items(), key=lambda item: item[1])[0] if reasons else "none fits"
    return NoWork(
        f"{ready} ready tasks, none fits this slot ({slot.cpus} CPUs, "
        f"{format_size(slot.memory)} memory, {slot.gpus} GPUs); most common: {common}",
        settings.idle_wait * 2, shortest)


def reserve(engine: Engine, pilot: Pilot, slot: Slot, batch: Batch) -> Dispatch | NoWork:
    """Choose the best task for `pilot`'s `slot` and reserve it in memory at once, adding its
    rows to `batch`, which must then be written before the dispatch is answered: if the write
    fails, the reservation is undone (an `on_failure` of the batch); once it commits, the pilot
    and the metrics count the match. No I/O here."""
    now = engine.clock()
    pilot.last_seen = now
    given = _take(engine, pilot, slot, batch, now)
    if given is None or given == HELD:
        return _no_work(engine, pilot, slot, now, held=given == HELD)
    _count_on_commit(engine, pilot, batch, 1)
    return given


def reserve_many(engine: Engine, pilot: Pilot, offer: Offer, batch: Batch) -> Given:
    """`reserve` for up to `offer.max_tasks` tasks, each chosen from what the ones before left
    of the slot (see the module docstring), in one batch."""
    now = engine.clock()
    pilot.last_seen = now
    slot = left = offer.slot
    given: list[Dispatch] = []
    most = offer.max_tasks or 1
    misses: set[tuple[int, bool | None]] = set()  # the slot only shrinks task by task
    series_left = float(slot.seconds)
    taken: dict[int, int] = {}  # in series: tasks given of each dataset
    skipped = False  # some dataset is left out of `misses`'s walk though it may fit
    held = False
    filled = False  # in series: those given are expected to run `series_seconds`
    while len(given) < most:
        one = _take(engine, pilot, left, batch, now, misses, skipped)
        if one is None or one == HELD:
            held = one == HELD
            break
        given.append(one)
        needs = one.dataset.requirements(one.task_id)
        if offer.in_series:
            # Each task's walltime must fit the time left once those before it have run their
            # expected times (learned ones where known: see `runtimes`).
            series_left -= one.expected
            left = Slot(left.cpus, left.memory, left.disk, left.gpus, int(series_left),
                        left.os, left.arch, left.site, left.gpu_kinds)
            filled = slot.seconds - series_left >= offer.series_seconds
            if left.seconds < 1 or filled:  # every walltime is at least a second
                break
            dataset = one.dataset
            taken[dataset.id] = count = taken.get(dataset.id, 0) + 1
            if count > dataset.queue.ready:
                # At most about half of what is ready in a dataset goes to one pilot's queue:
                # near its end, its last tasks are shared among the pilots that ask, instead of
                # one pilot running a full queue of them while the others have ended.
                misses.update((dataset.id, phase) for phase in (None, True, False))
                skipped = True
        else:
            left = left.less(needs)
            if left.cpus < 1:  # every task needs a CPU
                break
    if not given:
        return Given([], _no_work(engine, pilot, slot, now, held))
    _count_on_commit(engine, pilot, batch, len(given))
    return Given(given, dry=len(given) < most and not (filled and _more_ready(engine, slot)))


def _more_ready(engine: Engine, slot: Slot) -> bool:
    """Whether a ready task might fit a slot like `slot` (by the ready counts alone: any task,
    or for a slot without GPUs any CPU task): after an answer in series that filled its
    `series_seconds`, whether the pilot may find more if it asks again while those run."""
    if slot.gpus > 0:
        return any(owner.ready for owner in engine.owners.values())
    return any(owner.ready > owner.gpu_ready for owner in engine.owners.values())


def reserve_offer(engine: Engine, pilot: Pilot, offer: Offer, batch: Batch) -> Answer:
    """`reserve` or `reserve_many`, as the offer asks for the single or the list form; no task
    for a pilot on a black-hole host."""
    now = engine.clock()
    suspect = engine.black_holes.kept_out(pilot.host, now)
    if suspect is not None:
        left = max(1, int(suspect.until - now))
        nothing = NoWork(f"this host ({pilot.host}) gets no work for {format_duration(left)}: "
                         f"it looks like a black hole: {suspect.why}",
                         min(left, engine.settings.idle_wait), final=True)
        return nothing if offer.max_tasks is None else Given([], nothing)
    if offer.max_tasks is None:
        return reserve(engine, pilot, offer.slot, batch)
    return reserve_many(engine, pilot, offer, batch)


EXPLAINED_FOR = 1.0
"""Seconds one explanation of why nothing fits serves every empty ask of a slot alike (to the
minute of its time left): it looks at every dataset, and thousands of idle pilots of one
shape ask in a second."""
MAX_REMEMBERED_SHAPES = 4096
"""Slot shapes whose explanation, barrenness or missed queues are kept before all are forgotten
(idle pilots come in few shapes; this bounds what odd ones can add)."""


def explained(engine: Engine, slot: Slot, now: float) -> NoWork:
    """`explain` for `slot`, its time left rounded down to the minute, at most `EXPLAINED_FOR`
    seconds old."""
    key = dataclasses.replace(slot, seconds=slot.seconds // 60 * 60)
    cached = engine.explained.get(key)
    if cached is not None and now - cached[0] < EXPLAINED_FOR:
        return cached[1]
    if len(engine.explained) >= MAX_REMEMBERED_SHAPES:
        engine.explained.clear()
    answer = explain(engine, key)
    engine.explained[key] = (now, answer)
    return answer


def _no_work(engine: Engine, pilot: Pilot, slot: Slot, now: float,
             held: bool = False) -> NoWork:
    pilot.free, pilot.free_since = slot, now
    pilot.empty_asks += 1
    engine.metrics.asked_empty(pilot.site.name)
    if held:
        return NoWork("the ready tasks that fit this slot are retries that back off "
                      f"(retry_delay) or avoid this host, {pilot.host}, where they failed "
                      "(retry_elsewhere)", min(engine.settings.idle_wait, 10))
    return explained(engine, slot, now)


def _barren(engine: Engine, shape: Slot, seconds: int) -> bool:
    """Nothing fitted a slot of this shape, with at least `seconds` left, and no task that fits
    the shape has become ready since: nothing fits it now either (an idle pilot of a shape that
    no queued work fits asks without a walk through the datasets)."""
    seen = engine.holding.barren.get(shape)
    return seen is not None and seconds <= seen


def _found_barren(engine: Engine, shape: Slot, seconds: int) -> None:
    barren = engine.holding.barren
    if shape not in barren and len(barren) >= MAX_REMEMBERED_SHAPES:
        barren.clear()
    barren[shape] = max(barren.get(shape, 0), seconds)


def _take(engine: Engine, pilot: Pilot, slot: Slot, batch: Batch, now: float,
          misses: set[tuple[int, bool | None]] | None = None,
          skipped: bool = False) -> Dispatch | str | None:
    """Reserve the best task for `slot` (see `reserve`), or None when none fits (HELD when
    only retried tasks held back did); `misses` as `choose` takes it. `skipped`: `misses` also
    holds datasets passed over though they may fit, so none found does not make the shape
    barren."""
    shape = shape_of(slot)  # once: every check below is by shape
    if _barren(engine, shape, slot.seconds):
        return None
    picked = choose(engine, slot, misses, shape, pilot.host)
    if picked is None:
        if not skipped:
            _found_barren(engine, shape, slot.seconds)
        return None
    if picked == HELD:
        return HELD
    dataset, task_id = picked
    dataset.later.pop(task_id, None)
    requirements = dataset.requirements(task_id)
    job_index, task_index = dataset.locate(task_id)
    job_before = dataset.job_state(job_index)
    dataset.move(task_id, TaskState.PROCESSING)

    settings = engine.settings
    rate = weight(requirements.cpus, requirements.gpus, settings.gpu_weight)
    charge = rate * expected_runtime(dataset.runtimes[task_index], requirements.walltime,
                                     settings.runtime_guess)
    engine.user_usage.charge(dataset.user_id, charge, now)
    engine.dataset_usage.charge(dataset.id, charge, now)

    attempt_id = engine.next_attempt_id
    engine.next_attempt_id += 1
    passkey = passkeys.new_passkey()
    active = ActiveAttempt(attempt_id, dataset.id, task_id, pilot.pilot_id,
                           passkeys.hash_secret(passkey), now, now, requirements, charge,
                           pilot.site.name, pilot.host)
    engine.active[attempt_id] = active
    pilot.attempts.add(attempt_id)
    writes.insert_attempt(batch, attempt_id, task_id=task_id, dataset_id=dataset.id,
                          pilot_id=pilot.pilot_id, site=pilot.site.name, host=pilot.host,
                          batch_id=pilot.batch_id, passkey_hash=active.passkey_hash, now=now,
                          requirements=requirements,
                          config_version=dataset.version_of(job_index).version)
    writes.move_task(batch, task_id, TaskState.READY, TaskState.PROCESSING, now)
    if job_before != "processing":  # a job with a task processing is processing
        writes.set_job(batch, dataset.id, job_index, "processing")

    def undo() -> None:
        """Offer the task again. Only while the reservation is still this attempt's: an undone
        outcome that had made the task ready takes it back itself (and drops this attempt)."""
        pilot.attempts.discard(attempt_id)
        engine.user_usage.charge(dataset.user_id, -charge, now)
        if dataset.id in engine.datasets:  # not when its submit failed to commit as well
            engine.dataset_usage.charge(dataset.id, -charge, now)
        if engine.active.pop(attempt_id, None) is active \
                and dataset.state(task_id) == TaskState.PROCESSING:
            dataset.move(task_id, TaskState.READY)

    batch.on_failure(undo)
    return Dispatch(attempt_id, passkey, dataset, task_id,
                    dataset.expected_seconds(task_id, requirements))


def _count_on_commit(engine: Engine, pilot: Pilot, batch: Batch, matches: int) -> None:
    def committed() -> None:
        pilot.empty_asks = 0
        pilot.free = None
        pilot.dispatched += matches
        engine.metrics.matched(pilot.site.name, matches)

    batch.on_commit(committed)


def pilot_ended(pilot_id: int) -> NotFound:
    """The refusal of a request of pilot `pilot_id`, which has ended."""
    return NotFound(f"pilot {pilot_id} has ended (the matchmaker counted it lost, or it signed "
                    "off); a new pilot registers with a pilot token of its own")


async def ask(engine: Engine, pilot: Pilot, offer: Slot | Offer) -> Answer:
    """Give `pilot` the best task (or, with an offer of `max_tasks`, tasks) that fits, committed
    before this returns. Raises NotFound if the pilot ended while the ask waited its turn."""
    if engine.db.gated:
        await engine.db.turn()
        if engine.pilots.get(pilot.pilot_id) is not pilot:
            raise pilot_ended(pilot.pilot_id)
    batch = Batch()
    offer = offer if isinstance(offer, Offer) else Offer(offer)
    answer = reserve_offer(engine, pilot, offer, batch)
    if batch:
        await engine.db.write(batch)
    return answer

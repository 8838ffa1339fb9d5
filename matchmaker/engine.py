"""The matchmaker's working state and its life: loading it from SQLite, and the background loops.

`Engine` holds everything the scheduler decides from: datasets with their task states and ready
queues, users with their shares, running pilots, the attempts in flight with their passkey
hashes, and the fair-share ledgers. It is rebuilt from the database at start, so the database
stays the one durable record. The decisions themselves live in the modules that take an Engine:
`dispatch` (matching), `recording` and `applying` (how attempts ended), `liveness` (heartbeats
and sweeps), `pilots`, `actions` (what owners do to datasets) and `submission` (datasets and
their jobs).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from floe.config.dataset import MAX_JOBS, validate
from floe.config.resources import Requirements, Slot
from floe.config.settings import ServerSettings
from floe.config.states import TaskState

from .blackholes import BlackHoles
from .fairshare import Ledger
from .holding import Holding
from .metrics import Metrics
from .model import CODE, STATES, Dataset, DatasetState, DatasetStatus, SteeringVersion
from .queue import Owner
from .records import Archived
from .runtimes import Learned
from .storage import queries, writes
from .storage.archive import archive_file
from .storage.database import Batch, Database
from .storage.logstore import LogStore

log = logging.getLogger(__name__)


def deleted_by(engine: Engine, row: Any) -> str:
    """"deleted by alice at 2026-12-06 09:00 UTC", from a dataset's `retired` row."""
    user = engine.users.get(row["user_id"])
    return (f"deleted by {user.name if user else 'a removed user'} at "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(row['time']))}")


@dataclass
class User:
    user_id: int
    name: str
    role: str
    share: float

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass
class Site:
    site_id: int
    name: str


@dataclass
class Pilot:
    """A registered pilot that has not ended."""

    pilot_id: int
    site: Site
    host: str
    batch_id: str
    registered: float
    last_seen: float
    resources: dict[str, Any]
    batch_system: str = "none"
    attempts: set[int] = field(default_factory=set)
    empty_asks: int = 0
    dispatched: int = 0
    free: Slot | None = None
    """What the pilot offered when it last asked and got nothing (None once it got a task)."""
    free_since: float = 0.0
    slot: Slot | None = field(init=False, default=None)
    """Its whole slot as it registered it, time left then included (None: it registered none
    that reads as one)."""
    kind: Slot | None = field(init=False, default=None)
    """The same without the time (0): what pilots of one shape have in common."""

    def __post_init__(self) -> None:
        with contextlib.suppress(TypeError, ValueError, KeyError, AttributeError):
            self.slot = registered_slot(self.resources, self.site.name)
            self.kind = replace(self.slot, seconds=0)


def registered_slot(resources: Mapping[str, Any], site: str) -> Slot:
    """A pilot's whole slot from what it registered: floe's pilot gives its GPUs as a list
    (each with its name, memory and compute capability) and `seconds_left`, where an ask
    gives a count and `seconds`; either form is read. Raises what `Slot.from_dict` does."""
    data = {**resources, "site": site}
    gpus = data.get("gpus")
    if isinstance(gpus, list):
        data["gpus"] = len(gpus)
        data["gpu_kinds"] = [gpu for gpu in gpus if isinstance(gpu, Mapping)]
    if "seconds" not in data and data.get("seconds_left") is not None:
        data["seconds"] = data["seconds_left"]
    return Slot.from_dict(data)


@dataclass
class ActiveAttempt:
    """An attempt in flight: what it holds, who may speak for it, what it was charged."""

    attempt_id: int
    dataset_id: int
    task_id: int
    pilot_id: int
    passkey_hash: str
    started: float
    last_heartbeat: float
    requirements: Requirements
    charge: float
    site: str
    host: str
    usage: dict[str, float] = field(default_factory=dict)
    usage_dirty: bool = False


JobKey = tuple[int, int]  # (dataset id, job index)


class _JobLocks:
    """`Engine.job_lock(s)`: exclusive holds on jobs. A job held has an entry in `locks`, the
    queue of those waiting for it, dropped when the last holder lets go; taking a job nobody
    holds is a dictionary insert, no await (this is entered on every report). Several jobs are
    taken in sorted order, so that two requests that need some of the same jobs never each
    hold one that the other waits for.

    Once the jobs are held, it waits for the database's `turn`: what is decided under a job
    lock is decided from memory and written, and must not be decided while a bulk action's
    step waits to decide from what is committed (storage.database)."""

    __slots__ = ("db", "keys", "locks")

    def __init__(self, locks: dict[JobKey, collections.deque[asyncio.Future]],
                 keys: list[JobKey], db: Database) -> None:
        self.locks = locks
        self.keys = keys
        self.db = db

    async def __aenter__(self) -> None:
        locks = self.locks
        for index, key in enumerate(self.keys):
            waiters = locks.get(key)
            if waiters is None:
                locks[key] = collections.deque()
                continue
            future = asyncio.get_running_loop().create_future()
            waiters.append(future)
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled():  # handed over as we were cancelled
                    self._release(key)
                for held in self.keys[:index]:
                    self._release(held)
                raise
        if self.db.gated:
            try:
                await self.db.turn()
            except BaseException:
                for held in self.keys:
                    self._release(held)
                raise

    async def __aexit__(self, *exc_info: object) -> None:
        for key in self.keys:
            self._release(key)

    def _release(self, key: JobKey) -> None:
        waiters = self.locks[key]
        while waiters:
            future = waiters.popleft()
            if not future.done():  # a waiter that was cancelled is skipped
                future.set_result(None)
                return
        del self.locks[key]


class Engine:
    """The working state of one matchmaker process."""

    VOIDED_MEMORY = 200_000  # recent voided attempts remembered for clear 409 answers

    def __init__(self, db: Database, settings: ServerSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        now = clock()
        self.datasets: dict[int, DatasetState] = {}
        self.open: dict[int, DatasetState] = {}
        """The datasets that have not ended (processing or suspended): what submissions, idle
        asks and the creation of jobs look through, however many ended before them."""
        self.by_user: dict[int, list[DatasetState]] = {}
        self.users: dict[int, User] = {}
        self.users_by_name: dict[str, User] = {}
        self.sites: dict[int, Site] = {}
        self.pilots: dict[int, Pilot] = {}
        self.hosts: collections.Counter[str] = collections.Counter()  # running pilots by host
        self.active: dict[int, ActiveAttempt] = {}
        self.voided: collections.OrderedDict[int, str] = collections.OrderedDict()
        self.user_usage = Ledger(settings.fair_share_half_life, now, weight=self.share_of)
        self.dataset_usage = Ledger(settings.fair_share_half_life, now,
                                    weight=lambda d: self.datasets[d].priority,
                                    group=lambda d: self.datasets[d].user_id)
        self.metrics = Metrics()
        self.logs = LogStore.beside(settings.database)
        self.archived = Archived()
        """Where archived datasets keep their attempts (`records`)."""
        self.retired: set[int] = set()
        """Datasets being archived or deleted (`retiring`): every other action is refused."""
        self.deleted: dict[int, str] = {}
        """Datasets deleted: who deleted them, and when, for the answer to a later request."""
        self.retire_errors: dict[int, str] = {}
        """Why a dataset's archive, made in the background, failed (`retiring`)."""
        self.black_holes = BlackHoles(settings)
        self.notifier: Any = None
        """What sends the datasets' webhooks (`notify.Notifier`; the server sets it)."""
        self.next_attempt_id = 1
        self.next_pilot_id = 1
        self.next_task_id = 1
        self.next_dataset_id = 1
        self._job_locks: dict[JobKey, collections.deque[asyncio.Future]] = {}
        # What each factory said it has queued at each site (demand.py).
        self.queued_pilots: dict[tuple[str, str], Any] = {}
        # When pilots that never got a task ended, by site (demand.py tells factories).
        self.empty_endings: dict[str, collections.deque[float]] = {}
        self._background: list[asyncio.Task] = []
        self.materializing: asyncio.Event = asyncio.Event()
        self.holding = Holding(settings.max_held_asks)
        # Why nothing fits, by slot (its time left in whole minutes): (when, dispatch.NoWork).
        self.explained: dict[Slot, tuple[float, Any]] = {}
        # By shape, the (dataset, GPU phase) queues that had nothing for it: (the queue's
        # epoch then, the most time left that was looked at). See dispatch.choose.
        self.missed: dict[Slot, dict[tuple[int, bool | None], tuple[int, int]]] = {}
        # The same by user, for users none of whose datasets had anything for the shape (the
        # epoch of their queues together: queue.Owner).
        self.missed_users: dict[Slot, dict[tuple[int, bool | None], tuple[int, int]]] = {}
        self.owners: dict[int, Owner] = {}  # by user: the ready counts of their queues
        self.started = now
        self.stopped = False
        self.last_sweep: float | None = None
        """When the heartbeat sweep last ran (liveness.forgive_pause)."""

    # -- lookups ------------------------------------------------------------------------------
    def add_dataset(self, dataset: DatasetState) -> None:
        self.datasets[dataset.id] = dataset
        dataset.queue.on_ready = self.holding.poke
        owner = self.owners.get(dataset.user_id)
        if owner is None:
            owner = self.owners[dataset.user_id] = Owner()
        dataset.queue.adopt(owner)
        self.by_user.setdefault(dataset.user_id, []).append(dataset)
        self.user_usage.rerank(dataset.user_id)
        self.dataset_usage.rerank(dataset.id)
        dataset.on_status = self._status_changed
        self._file(dataset)
        # Each dataset keeps room for the most jobs a dataset may have, to grow into.
        self.next_task_id = max(self.next_task_id, dataset.base + MAX_JOBS * dataset.ntasks)

    def _status_changed(self, dataset: DatasetState) -> None:
        dataset.changed = self.clock()
        self._file(dataset)

    def _file(self, dataset: DatasetState) -> None:
        """Keep `open`, and the fair-share order of a user's datasets, to those not ended."""
        if dataset.ended():
            self.open.pop(dataset.id, None)
            self.dataset_usage.park(dataset.id)
        else:
            self.open[dataset.id] = dataset
            self.dataset_usage.unpark(dataset.id)

    def add_pilot(self, pilot: Pilot) -> Pilot:
        self.pilots[pilot.pilot_id] = pilot
        self.hosts[pilot.host] += 1
        return pilot

    def drop_pilot(self, pilot: Pilot) -> None:
        if self.pilots.pop(pilot.pilot_id, None) is not None:
            self.hosts[pilot.host] -= 1
            if self.hosts[pilot.host] <= 0:
                del self.hosts[pilot.host]

    def forget_dataset(self, dataset: DatasetState) -> None:
        """Take a dataset out of memory again (its submit did not commit)."""
        dataset.queue.clear()
        self.dataset_usage.forget(dataset.id)  # while its group (its user) is still known
        self.datasets.pop(dataset.id, None)
        self.open.pop(dataset.id, None)
        dataset.on_status = None
        mine = self.by_user.get(dataset.user_id, [])
        if dataset in mine:
            mine.remove(dataset)
        # Its user's counts no longer see it, whatever is still undone into its queue later.
        dataset.queue.owner.epoch += 1
        dataset.queue.adopt(Owner())

    def add_user(self, user: User) -> None:
        self.users[user.user_id] = user
        self.users_by_name[user.name] = user
        self.user_usage.rerank(user.user_id)

    def share_of(self, user_id: int) -> float:
        user = self.users.get(user_id)
        return user.share if user is not None else 1.0

    def void(self, attempt_id: int, reason: str) -> None:
        """Remember why an attempt was voided, to answer its pilot with a clear 409."""
        self.voided[attempt_id] = reason
        while len(self.voided) > self.VOIDED_MEMORY:
            self.voided.popitem(last=False)

    def job_lock(self, dataset_id: int, job_index: int) -> _JobLocks:
        """Serialize outcome decisions within one job, so two parents finishing at once both
        see each other complete and their common child becomes ready exactly once (an async
        context manager)."""
        return _JobLocks(self._job_locks, [(dataset_id, job_index)], self.db)

    def job_locks(self, keys: Iterable[JobKey]) -> _JobLocks:
        """`job_lock` for several jobs at once, given as (dataset id, job index)."""
        return _JobLocks(self._job_locks, sorted(set(keys)), self.db)

    # -- start and stop -----------------------------------------------------------------------
    async def load(self) -> None:
        """Rebuild the working state from the database."""
        db = self.db
        now = self.clock()
        await self.refresh_accounts()
        for row in await queries.retired(db):
            if row["kind"] == "deleted":
                self.deleted[row["dataset_id"]] = deleted_by(self, row)
            if row["kind"] == "archived":  # where it is now (a restored copy moves it)
                self.archived.add({**row, "path": str(archive_file(self.settings.database,
                                                                   row["dataset_id"]))})
        for row in await queries.datasets_to_load(db):
            if row["status"] == "deleted":  # its ids stay taken
                self.next_task_id = max(self.next_task_id,
                                        row["task_id_base"] + MAX_JOBS * row["tasks_per_job"])
                continue
            config = validate(json.loads(row["config"]))
            dataset = Dataset(row["dataset_id"], row["user_id"], config, row["task_id_base"],
                              row["created"])
            state = DatasetState(dataset, row["status"], row["priority"],
                                 row["jobs_materialized"])
            state.jobs = row["jobs"]  # grown, or cut by an abort, since it was submitted
            state.changed = row["updated"]
            self.add_dataset(state)
            await self._load_tasks(state)
            state.status = self.dataset_status_after(state)
        for row in await queries.steering_versions(db):
            dataset = self.datasets.get(row["dataset_id"])
            if dataset is not None:
                dataset.add_version(SteeringVersion(row["version"], row["first_job"],
                                                    json.loads(row["steering"]),
                                                    row["created"], row["user_id"]))
        for row in await queries.running_pilots(db):
            self.add_pilot(Pilot(
                row["pilot_id"], self.sites[row["site_id"]], row["host"], row["batch_id"],
                row["registered"], max(row["last_seen"], now), json.loads(row["resources"]),
                row["batch_system"]))
        await self._load_attempts(now)
        for row in await queries.usage(db):
            kind, _, key = row["entity"].partition(":")
            if kind == "user":
                self.user_usage.restore(int(key), row["value"], row["updated"])
            elif int(key) in self.datasets:
                self.dataset_usage.restore(int(key), row["value"], row["updated"])
        for row in await queries.wall_times(db):
            dataset = self.datasets.get(row["dataset_id"])
            if dataset is not None and row["task_index"] < dataset.ntasks:
                dataset.runtimes[row["task_index"]] = row["mean"]
                learned = dataset.learned[row["task_index"]] = Learned()
                learned.seed(row["mean"], math.sqrt(max(row["m2"], 0.0) / row["count"]),
                             row["max"], row["count"])
        self.next_attempt_id, self.next_pilot_id, self.next_dataset_id = \
            await queries.next_ids(db)
        for dataset in self.datasets.values():
            dataset.rebuild_queue()

    async def _load_tasks(self, dataset: DatasetState) -> None:
        expected = dataset.materialized * dataset.ntasks
        end = dataset.base + expected
        codes = await queries.task_state_codes(self.db, dataset.base, end,
                                               [state.value for state in STATES])
        if len(codes) != expected or 255 in codes:
            raise RuntimeError(
                f"dataset {dataset.id} has {len(codes)} task rows, expected {expected}"
                f"{', some in no known state' if 255 in codes else ''}: the database is "
                "inconsistent")
        dataset.states = bytearray(codes)
        for code in range(len(STATES)):
            dataset.counts[code] = dataset.states.count(code)
        for row in await queries.task_records(self.db, dataset.base, end):
            if row["failures"]:
                dataset.failures[row["task_id"]] = row["failures"]
            if row["lost"]:
                dataset.lost[row["task_id"]] = row["lost"]
            if row["requirements"]:
                dataset.overrides[row["task_id"]] = Requirements.from_dict(
                    json.loads(row["requirements"]))

    async def _load_attempts(self, now: float) -> None:
        for row in await queries.processing_attempts(self.db):
            dataset = self.datasets[row["dataset_id"]]
            # After a restart every attempt gets a full timeout to check in again.
            self.active[row["attempt_id"]] = ActiveAttempt(
                row["attempt_id"], row["dataset_id"], row["task_id"], row["pilot_id"],
                row["passkey_hash"], row["started"], max(row["last_heartbeat"], now),
                dataset.requirements(row["task_id"]), 0.0, row["site"], row["host"])
            pilot = self.pilots.get(row["pilot_id"])
            if pilot is not None:
                pilot.attempts.add(row["attempt_id"])
            if dataset.state(row["task_id"]) != TaskState.PROCESSING:
                log.warning("attempt %s is processing but its task is %s",
                            row["attempt_id"], dataset.state(row["task_id"]).value)

    def start_background(self, *loops: tuple[str, Coroutine[Any, Any, None]]) -> None:
        for name, coroutine in loops:
            self._background.append(asyncio.create_task(coroutine, name=f"floe-{name}"))

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background.clear()
        if self.notifier is not None:
            await self.notifier.close()
        await self.flush()

    async def flush(self) -> None:
        """Store what is kept in memory between commits: heartbeats, pilots' last contact, and
        the fair-share ledgers."""
        now = self.clock()
        batch = Batch()
        for attempt in self.active.values():
            if attempt.usage_dirty:
                u = attempt.usage
                writes.attempt_heartbeat(batch, attempt.attempt_id, now=attempt.last_heartbeat,
                                         used=writes.Used(
                                             u.get("cpu_time"), u.get("wall_time"),
                                             u.get("peak_memory"), u.get("peak_disk"),
                                             u.get("peak_gpu_memory")))
                attempt.usage_dirty = False
        for pilot in self.pilots.values():
            writes.pilot_seen(batch, pilot.pilot_id, pilot.last_seen)
        for key, value in self.user_usage.items(now):
            writes.save_usage(batch, f"user:{key}", value, now)
        for key, value in self.dataset_usage.items(now):
            writes.save_usage(batch, f"dataset:{key}", value, now)
        await self.db.write(batch)

    async def refresh_accounts(self) -> None:
        """Take users, shares, roles and sites from the database: `floe user` and `floe site`
        change them there, from another process, while the server runs."""
        users, sites = await queries.accounts(self.db)
        for row in users:
            user = self.users.get(row["user_id"])
            if user is None:
                self.add_user(User(row["user_id"], row["name"], row["role"], row["share"]))
            elif (user.role, user.share) != (row["role"], row["share"]):
                user.role = row["role"]
                if user.share != row["share"]:
                    user.share = row["share"]
                    self.user_usage.rerank(user.user_id)
        for row in sites:
            self.sites.setdefault(row["site_id"], Site(row["site_id"], row["name"]))

    async def flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                await self.flush()
                await self.refresh_accounts()
            except Exception:
                log.exception("flushing heartbeats failed; will retry")

    def dataset_status_after(self, dataset: DatasetState) -> str:
        """The status a dataset should have now that its tasks changed."""
        if dataset.status == DatasetStatus.SUSPENDED:
            return dataset.status
        if dataset.finished():
            return DatasetStatus.FAILED if dataset.counts[CODE[TaskState.FAILED]] else \
                DatasetStatus.COMPLETE
        return DatasetStatus.PROCESSING

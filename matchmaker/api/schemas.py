"""JSON Schemas of the API's request bodies and of its answers.

A request body's schema is used twice: to check requests (api.validation) and in the OpenAPI
document. A response's is declared for the document (tests check real answers against it); one
that answers in several shapes says so with `oneOf`, which only responses use.
"""

from __future__ import annotations

from typing import Any

from floe.config import dataset
from floe.config.factory import FACTORY_ID, LABEL
from floe.config.protocol import (
    MAX_BATCH_IDS,
    MAX_ERROR_MESSAGE,
    MAX_STATISTIC,
    MAX_TASKS,
    MAX_WARNING_LENGTH,
    MAX_WARNINGS,
)
from floe.config.states import JOB_STATES, AttemptState, ErrorClass, TaskState

from ..auth import MAX_SHARE
from ..model import DatasetStatus

BIG = 2**62


def _obj(properties: dict[str, Any], required: tuple[str, ...] = (),
         extra: bool | dict[str, Any] = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "additionalProperties": extra}
    if required:
        schema["required"] = list(required)
    return schema


def _int(minimum: int = 0, maximum: int = BIG, doc: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum, "maximum": maximum}
    if doc:
        schema["description"] = doc
    return schema


def _num(minimum: float = 0, maximum: float = 1e18) -> dict[str, Any]:
    return {"type": "number", "minimum": minimum, "maximum": maximum}


def _str(max_length: int = 256, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, **extra}


NAME = _str(64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

ERROR = _obj({"error": _str(10_000)}, ("error",))

SLOT = _obj({
    "cpus": _int(0, 4096, "free CPU cores"),
    "memory": _int(doc="free memory, bytes"),
    "disk": _int(doc="free scratch disk, bytes"),
    "gpus": _int(0, 64, "free GPUs"),
    "seconds": _int(doc="time left in the pilot's batch job, seconds"),
    "os": {"type": "array", "items": _str(64), "maxItems": 16,
           "description": "names of the node's OS, most specific first (e.g. debian12, linux)"},
    "arch": _str(32),
    "site": _str(64, description="ignored: the site comes from the pilot token"),
    "gpu_kinds": {"type": "array", "maxItems": 64, "items": _obj({
        "memory": _int(doc="bytes (0: not known)"), "name": _str(256),
        "compute_capability": _str(8, pattern=r"^(\d{1,3}(\.\d{1,3})?)?$")}),
        "description": "what each free GPU is, for tasks that ask for a GPU memory, model or "
                       "compute capability (absent: nothing is known of them)"},
}, ("cpus", "memory", "disk"))


ASK = dict(SLOT, properties=dict(
    SLOT["properties"],
    max_tasks=_int(1, MAX_TASKS, "the most tasks to hand out at once; when given, the answer "
                   "has the list form {\"attempts\": [...]}"),
    hold=_int(0, 300, "seconds the pilot can wait for an answer: an ask with nothing to give "
              "is held open that long at most (and at most the server's `hold_asks`, which "
              "its registration answered), and answered as soon as work it fits is ready"),
    in_series={"type": "boolean", "default": False,
               "description": "false: the tasks run side by side, so together they must fit "
                              "the free resources; true: one after another, so each must fit "
                              "on its own and each one's walltime must fit what `seconds` has "
                              "left once those before it have run their `expected_seconds`"},
    series_seconds=dict(_num(0.001, 86400), description=(
        "in series: about how many seconds of work to hand out (at least one task; the answer "
        "ends once the tasks given are expected to run this long, see `expected_seconds`: a "
        "task whose runtime is not learned yet counts its walltime); absent: as many as "
        "`max_tasks` and `seconds` allow")),
))

USAGE = _obj({
    "cpu_time": _num(), "wall_time": _num(), "peak_memory": _int(), "peak_disk": _int(),
    "peak_gpu_memory": _int(), "gpu_time": _num(),
})

GPU = _obj({
    "index": _int(0, 1024), "uuid": _str(128), "name": _str(256), "memory": _int(),
    "compute_capability": {"type": ["array", "null"], "items": _int(0, 1000), "maxItems": 2},
    "mig_enabled": {"type": ["boolean", "null"]}, "parent_uuid": {"type": ["string", "null"],
                                                                  "maxLength": 128},
}, extra=True)

RESOURCES = _obj({
    "cpus": _int(0, 1_000_000), "memory": _int(), "disk": _int(),
    "gpus": {"type": "array", "items": GPU, "maxItems": 1024},
    "deadline": {"type": ["number", "null"], "minimum": 0, "maximum": 1e12},
    "seconds_left": _int(), "os": {"type": "array", "items": _str(64), "maxItems": 16},
    "arch": _str(32), "python": _str(64), "host": _str(256), "site": _str(64),
    "batch_system": _str(32), "batch_job_id": _str(256), "scratch": _str(4096),
    "sources": {"type": "object", "maxProperties": 64, "additionalProperties": _str(4096)},
    "limits": {"type": "object", "maxProperties": 64, "additionalProperties": {
        "type": "object", "maxProperties": 64, "additionalProperties": {"type": "number"}}},
}, extra=True)
RESOURCES.update(maxProperties=64, description="what the pilot measured (floe pilot --probe "
                 "prints it); the pages show a stored entry only when it conforms")

REGISTER = _obj({
    "host": _str(256),
    "batch_system": _str(32),
    "batch_id": _str(256),
    "version": _str(64),
    "resources": RESOURCES,
}, ("host",))

HEARTBEAT_INTERVAL = _int(doc="seconds between the pilot's heartbeats (one for all its "
                               "attempts)")
HEARTBEAT_TIMEOUT = _int(doc="seconds without a heartbeat after which an attempt is voided "
                             "and its task requeued")

REGISTERED = _obj({
    "pilot_id": _int(1, doc="the pilot's id, in the paths of its other routes"),
    "key": _str(128, description="the pilot's own key: every later request of the pilot "
                                 "carries it (Authorization: Bearer), and it speaks for this "
                                 "pilot alone; the pilot token is used up"),
    "site": _str(64, description="the site of the pilot token, the pilot's site"),
    "heartbeat_interval": HEARTBEAT_INTERVAL,
    "heartbeat_timeout": HEARTBEAT_TIMEOUT,
    "tail_bytes": _int(1, doc="the most of each stream's end the server keeps with an "
                                 "attempt (bytes of UTF-8): a longer log goes up whole, "
                                 "through the log route"),
    "hold_asks": _int(0, 300, doc="the longest the server holds an ask (`hold`) that has "
                                  "nothing to give yet; 0: it holds none"),
    "series_seconds": {"type": "boolean", "enum": [True],
                       "description": "the server takes an ask's `series_seconds` (a pilot "
                                      "sends it only where this says so)"},
}, ("pilot_id", "key", "site", "heartbeat_interval", "heartbeat_timeout", "tail_bytes",
    "hold_asks", "series_seconds"))

_NAMES = {"type": "array", "items": {"type": "string"}}

REQUIREMENTS = _obj({
    "cpus": _int(1), "memory": _int(doc="bytes"), "disk": _int(doc="bytes"), "gpus": _int(),
    "walltime": _int(1, doc="seconds"),
    "os": dict(_NAMES, description="OS names the node must run (patterns); empty: any"),
    "arch": dict(_NAMES, description="architectures (patterns); empty: any"),
    "sites": dict(_NAMES, description="sites it may run at (patterns); empty: any"),
    "exclude_sites": dict(_NAMES, description="sites it may not run at (patterns)"),
    "gpu_memory": _int(doc="least memory of each of its GPUs, bytes (0: any)"),
    "gpu_model": _str(256, description="pattern of each of its GPUs' model names (\"\": any)"),
    "compute_capability": _str(8, description="least compute capability of each of its GPUs, "
                                              "as \"8.0\" (\"\": any)"),
}, ("cpus", "memory", "disk", "gpus", "walltime", "os", "arch", "sites", "exclude_sites"))

GIVEN_ATTEMPT = _obj({
    "id": _int(1, doc="the attempt's id: `attempt_id` in the heartbeat and report routes"),
    "passkey": _str(256, description="the attempt's passkey, for its heartbeats, report and "
                                     "logs"),
    "task_id": _int(),
    "job": _int(doc="the job's index in the dataset, from 0"),
    "requirements": REQUIREMENTS,
    "task": _str(64, description="the task's name"),
    "dataset": _int(1, doc="the dataset's id"),
    "jobs_submitted": _int(1, doc="how many jobs the dataset has"),
    "spec": {"type": "object", "description": "the task's part of the dataset config, "
                                              "normalized (docs/config.md)"},
    "steering": {"type": "object", "description": "the dataset's steering values, as the "
                                                  "job's config version has them"},
    "config_version": _int(1, doc="the config version the job runs with: 1 as submitted, "
                                  "each steering change after submission the next"),
    "heartbeat_interval": HEARTBEAT_INTERVAL,
    "heartbeat_timeout": HEARTBEAT_TIMEOUT,
    "expected_seconds": {"type": "number", "minimum": 0,
                         "description": "how long the task is expected to run: its task "
                                        "name's learned runtime in this dataset, at most its "
                                        "walltime (which stays the limit)"},
}, ("id", "passkey", "task_id", "job", "requirements", "task", "dataset", "jobs_submitted",
    "spec", "steering", "heartbeat_interval", "heartbeat_timeout", "expected_seconds"))

_NO_WORK = {
    "wait": _int(doc="seconds to wait before asking again"),
    "reason": {"type": "string", "description": "why no task fits, as a sentence"},
    "shortest_walltime": {"type": ["integer", "null"], "minimum": 1,
                          "description": "the shortest walltime among ready tasks, seconds "
                                         "(a pilot with less time left can leave); null when "
                                         "no task is ready"},
}

_GIVEN_ATTEMPTS = {"type": "array", "items": GIVEN_ATTEMPT, "minItems": 1,
                   "maxItems": MAX_TASKS}

ASKED = {"oneOf": [
    _obj({"attempt": GIVEN_ATTEMPT}, ("attempt",)),
    _obj(dict(_NO_WORK, attempt={"type": "null"}),
         ("attempt", "wait", "reason", "shortest_walltime")),
    _obj({"attempts": _GIVEN_ATTEMPTS}, ("attempts",)),
    _obj({"attempts": _GIVEN_ATTEMPTS,
          "more": {"type": "boolean", "enum": [False],
                   "description": "fewer than `max_tasks` were handed out: no other ready "
                                  "task fits what is left of the slot (its resources side by "
                                  "side, its time after those given in series), or what would "
                                  "is left to other pilots (one ask takes at most about half "
                                  "of a dataset's ready tasks); ask again once one of them "
                                  "has ended (not said when those given in series fill "
                                  "`series_seconds` and other tasks are ready, fitting this "
                                  "slot or not)"}},
         ("attempts", "more")),
    _obj(dict(_NO_WORK, attempts={"type": "array", "items": GIVEN_ATTEMPT,
                                        "maxItems": 0}),
         ("attempts", "wait", "reason", "shortest_walltime")),
], "description": "without `max_tasks`: the task handed out, {\"attempt\": {...}}, or "
                  "{\"attempt\": null, ...} with why none fits and how long to wait; with "
                  "`max_tasks`, the list form: {\"attempts\": [{...}, ...]} (with "
                  "\"more\": false when nothing more fits), or {\"attempts\": [], ...} as "
                  "above"}

PILOT_EXIT = _obj({
    "reason": _str(64, description="idle, drained, lifetime, suspect node, error"),
    "message": _str(4000),
    "suspect": {"type": "boolean", "description": "the node failed several tasks in a row"},
})

EXITED = _obj({"pilot_id": _int(1), "state": {"type": "string", "enum": ["exited"]}},
              ("pilot_id", "state"))

HEARTBEAT = _obj({"usage": USAGE})

REPORT = _obj({
    "exit_code": {"type": ["integer", "null"], "minimum": -255, "maximum": 255},
    "error_class": {"type": ["string", "null"], "enum": [e.value for e in ErrorClass] + [None]},
    "error_message": _str(MAX_ERROR_MESSAGE),
    "usage": USAGE,
    "statistics": {"type": "object", "maxProperties": 1000,
                   "additionalProperties": {"description": (
                       f"a number from -{MAX_STATISTIC:g} to {MAX_STATISTIC:g}; anything else "
                       "is left out, with a warning recorded on the attempt")},
                   "description": "user statistics: name -> number"},
    "warnings": {"type": "array", "maxItems": MAX_WARNINGS,
                 "items": _str(MAX_WARNING_LENGTH),
                 "description": "what the pilot left out of this report and why (a statistic "
                                "that is not a number...): recorded on the attempt, which "
                                "keeps its outcome"},
    "outputs": {"type": "array", "maxItems": 10_000, "items": _obj({
        "url": _str(4096), "local": _str(4096), "sha256": _str(64), "size": _int()})},
    "stdout_tail": _str(1_000_000),
    "stderr_tail": _str(1_000_000),
    "overuse": _obj({"resource": {"type": "string", "enum": ["memory", "disk", "walltime"]},
                     "requested": _num(), "peak": _num()}),
    "ask": dict(ASK, description="ask for the next task in the same request: what the "
                                 "pilot has free once this attempt's resources are released, "
                                 "as the ask route takes it"),
}, ("exit_code",))

RECORDED = _obj({
    "recorded": {"type": "boolean"},
    "duplicate": {"type": "boolean", "description": "this result was recorded before"},
    "task_state": _str(32, description="the task's state after this report (absent on a "
                                       "duplicate)"),
    "state": _str(32, description="the attempt's recorded state (on a duplicate)"),
    "reason": {"type": ["string", "null"]},
    "next": {"type": "object", "description": (
        "only when the report carried `ask`: exactly the ask route's answer, decided after "
        "this outcome was applied: {\"attempt\": {...}} or {\"attempt\": null, \"wait\": "
        "...} (with `max_tasks`, the list form {\"attempts\": [...]}); or, when the ask was "
        "refused (no valid pilot token: 401, another site's "
        "pilot: 403, the pilot has ended: 404), {\"error\": \"...\", \"status\": ...}")},
}, ("recorded", "duplicate"))

PASSKEY = _str(256, minLength=1, description="the attempt's passkey")
ATTEMPT_ID = _int(doc="the attempt's id, as handed out")

PILOT_HEARTBEAT = _obj({
    "attempts": {"type": "array", "maxItems": MAX_TASKS, "items": _obj(
        {"attempt_id": ATTEMPT_ID, "passkey": PASSKEY, "usage": USAGE},
        ("attempt_id", "passkey")),
        "description": "every attempt the pilot holds (running or queued); empty for an idle "
                       "pilot's keep-alive"},
    "reporting": {"type": "array", "maxItems": MAX_TASKS, "items": ATTEMPT_ID,
                  "description": "the ids of the pilot's attempts that have ended and whose "
                                 "reports wait to be delivered. Sent (even empty), it says that "
                                 "`attempts` and `reporting` together name every attempt the "
                                 "pilot holds: an attempt given to this pilot that neither "
                                 "names, handed out more than one heartbeat interval ago, "
                                 "never reached it (the answer was lost) and is reset at "
                                 "once, its task requeued."},
}, ("attempts",))

KILL = _obj({"action": {"type": "string", "enum": ["continue", "kill"]},
             "status": {"type": "integer", "enum": [403, 404, 409]},
             "error": _str(10_000)}, ("action",))

PILOT_HEARTBEAT_ANSWER = _obj({
    "heartbeat_interval": _int(doc="seconds until the next heartbeat"),
    "attempts": {"type": "object", "additionalProperties": KILL,
                 "description": "by attempt id (as a string): continue, or kill with the status "
                                "and the sentence the single heartbeat route would answer (409: "
                                "void, 403: wrong passkey, 404: no such attempt)"},
}, ("heartbeat_interval", "attempts"))

REPORTS = _obj({
    "reports": {"type": "array", "minItems": 1, "maxItems": MAX_TASKS, "items": _obj(
        dict({k: v for k, v in REPORT["properties"].items() if k != "ask"},
             attempt_id=ATTEMPT_ID, passkey=PASSKEY),
        ("attempt_id", "passkey", "exit_code")),
        "description": "each the report route's body (without `ask`), with the attempt's id "
                       "and passkey"},
    "ask": dict(ASK, description="ask for the pilot's next tasks once these reports are "
                                 "applied: what it has free then, as the ask route takes it"),
}, ("reports",))

REPORTED = _obj({
    "results": {"type": "array", "items": {"type": "object", "description": (
        "in the order of `reports`: {\"attempt_id\": ...} with what the report route answers "
        "(recorded, duplicate, task_state, state, reason), or, for a report that cannot be "
        "made, {\"attempt_id\": ..., \"error\": \"...\", \"status\": 400|403|404|409}")}},
    "next": {"type": "object", "description": (
        "only when the body carried `ask`: exactly the ask route's answer, decided after these "
        "outcomes were applied; or, when the pilot has ended, {\"error\": \"...\", "
        "\"status\": 404}")},
}, ("results",))

DATASET_CONFIG = dataset.json_schema()
"""Generated from the schema that `config.dataset.validate` checks submitted datasets with."""

_ANY_OBJECT = {"type": "object", "additionalProperties": True}
DATASET_PREVIEW = _obj({
    "dry_run": {"type": "boolean", "enum": [True]},
    "owner": NAME,
    "description": {"type": "string"},
    "priority": {"type": "number"},
    "max_retries": _int(),
    "debug": {"type": "boolean"},
    "jobs": _int(1),
    "tasks_per_job": _int(1),
    "total_tasks": _int(1, doc="jobs times tasks_per_job"),
    "task_names": _NAMES,
    "first_job": {"type": "array", "description": (
        "job 0's tasks, in the config's order; in env, inputs, outputs and modules every "
        "expression is evaluated that needs nothing known only where the job runs ($system, "
        "$args(dataset), $args(attempt), $choice), which stay as written"),
        "items": _obj({
            "task": _str(64), "depends": _NAMES, "requirements": REQUIREMENTS,
            "env": _ANY_OBJECT, "inputs": {"type": "array", "items": _ANY_OBJECT},
            "outputs": {"type": "array", "items": _ANY_OBJECT},
            "modules": {"type": "array", "items": _ANY_OBJECT},
        }, ("task", "depends", "requirements", "env", "inputs", "outputs", "modules"))},
}, ("dry_run", "owner", "description", "priority", "max_retries", "debug", "jobs",
    "tasks_per_job", "total_tasks", "task_names", "first_job"))
"""What a submit with `dry_run` answers: what the submit would create."""

RESET = _obj({"scope": {"type": "string", "enum": ["failed", "all"]},
              "job": _int(0, doc="only this job's tasks"),
              "task": _int(1, doc="only this task (its id)")}, ("scope",))
STEERING_CHANGE = _obj({"steering": {
    "type": "object", "minProperties": 1, "maxProperties": 1000,
    "description": "the steering values to change, by name, with their new values (JSON "
                   "values, or expressions as in the config)"}}, ("steering",))
ADD_JOBS = _obj({"jobs": _int(1, dataset.MAX_JOBS, doc="how many jobs to add")}, ("jobs",))
# The range a submitted dataset's priority may have, from the same schema.
PRIORITY = _obj({"priority": {key: value for key, value in
                              DATASET_CONFIG["properties"]["priority"].items()
                              if key != "default"}}, ("priority",))
# Any share above 0, as `floe user add --share` and `floe user share` take.
USER_SHARE = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SHARE}
NEW_USER = _obj({"name": NAME, "admin": {"type": "boolean"}, "share": USER_SHARE}, ("name",))
SHARE = _obj({"share": USER_SHARE}, ("share",))
NEW_SITE = _obj({"name": NAME}, ("name",))
PILOT_TOKEN = _obj({"lifetime": _int(60, 366 * 86400, "seconds until the tokens expire"),
                    "count": _int(1, MAX_BATCH_IDS, "how many tokens: one for each pilot")})
PILOT_TOKENS = _obj({
    "tokens": {"type": "array", "items": {"type": "string"},
               "description": "each registers one pilot"},
    "expires": {"type": "number"}, "site": {"type": "string"}}, ("tokens", "expires", "site"))

SHAPE = _obj({
    "name": _str(40, pattern=f"^{LABEL}$"),
    "cpus": _int(1, 4096), "memory": _int(), "disk": _int(), "gpus": _int(0, 64),
    "walltime": _int(1), "os": {"type": "array", "items": _str(64), "maxItems": 16},
    "arch": _str(32),
    "gpu_memory": _int(doc="memory of each of its GPUs, bytes (0: not said)"),
    "gpu_model": _str(256, description="the model name of its GPUs (\"\": not said)"),
    "compute_capability": _str(8, pattern=r"^(\d{1,3}(\.\d{1,3})?)?$",
                               description="its GPUs' compute capability (\"\": not said)"),
    "queued": _int(doc="pilots of this shape this factory has queued now"),
}, ("name", "cpus", "memory", "disk", "walltime"))
FACTORY = _str(24, pattern=f"^{FACTORY_ID}$", description="the factory's `factory_id`")
DEMAND = _obj({
    "shapes": {"type": "array", "items": SHAPE, "maxItems": 64},
    "factory": FACTORY,
}, ("shapes",))

_BATCH_IDS = {"type": "array", "items": _str(256, minLength=1), "maxItems": MAX_BATCH_IDS}
BATCH_JOBS = _obj({
    "batch_system": _str(32, description="the batch system the factory submits its pilots to, "
                                         "as they register with it (slurm, pbs, sge, "
                                         "htcondor, local)"),
    "factory": FACTORY,
    "pilots": dict(_BATCH_IDS, description="batch ids of this factory's pilots whose "
                   "registration it has not seen yet; the answer's `registered` says which "
                   "of them registered at this site with `batch_system`"),
    "ended": dict(_BATCH_IDS, description="batch ids of this factory's pilots whose batch job "
                  "the batch system says has ended; those the matchmaker still counts running "
                  "are ended as lost at once and their tasks requeued, and the answer's `lost` "
                  "lists them"),
}, ("batch_system",))
BATCH_JOBS_ANSWER = _obj({
    "registered": {"type": "array", "items": {"type": "string"},
                   "description": "those of `pilots` a pilot registered with, in their order"},
    "lost": {"type": "array", "items": {"type": "string"},
             "description": "those of `ended` whose pilots were ended as lost now"},
    "empty": {"type": "array", "items": {"type": "string"},
              "description": "those of `ended` whose pilots registered and were never handed "
                             "a task"},
    "short": {"type": "object", "additionalProperties": {"type": "array", "items": _obj({
        "resource": {"type": "string", "enum": ["cpus", "memory", "gpus", "walltime"]},
        "promised": _num(), "found": _num(), "source": _str(1000)})},
              "description": "by batch id, of those registered: what the pilot found short of "
                             "what its shape promised (FLOE_SHAPE_*), and where it read that"},
    "suspect": {"type": "array", "items": {"type": "string"},
                "description": "those of `registered` whose pilots run on a host kept out as "
                               "a black hole: no proof that the site works"},
}, ("registered", "lost"))


PROGRESS = _obj({
    "id": _int(1, doc="the dataset's id"),
    "status": {"type": "string", "enum": ["processing", "suspended", "complete", "failed"]},
    "jobs": _int(1),
    "jobs_created": _int(),
    "tasks": {"type": "object", "additionalProperties": _int(),
              "description": "tasks per state; tasks of jobs not yet created count as waiting"},
    "version": _str(10_000, description="changes whenever the status or a count does: give it "
                                        "back as `since` to wait for the next change"),
}, ("id", "status", "jobs", "jobs_created", "tasks", "version"))


# -- answers --------------------------------------------------------------------------------------
# What the other routes answer, field by field as the server builds them (matchmaker/views.py,
# the storage queries, the handlers). Every object is closed and requires each field it always
# has: tests/matchmaker/test_openapi.py checks real answers against these, so a field added or
# dropped on either side is noticed. Those listed in `NAMED` are components of the OpenAPI
# document, which a generated client makes one model each.

def _record(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed object that always has all of `properties` but the `optional` ones."""
    return _obj(properties, tuple(name for name in properties if name not in optional))


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _list(items: dict[str, Any], description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": items}
    if description:
        schema["description"] = description
    return schema


_TEXT = {"type": "string"}
_NUMBER = {"type": "number"}
_BOOLEAN = {"type": "boolean"}
_TIME = {"type": "number", "description": "seconds since the epoch"}
_MAYBE_TEXT = {"type": ["string", "null"]}
_MAYBE_INT = {"type": ["integer", "null"]}
_MAYBE_NUMBER = {"type": ["number", "null"]}
_NEXT = {"type": ["integer", "null"], "description": "give it as `after` for the next page; "
                                                   "null on the last page"}

ARCHIVE = _record({"path": _TEXT, "time": _TIME, "attempts": _int(), "bytes": _int()})
DATASET = _record({
    "id": _int(1),
    "owner": _MAYBE_TEXT,
    "description": _TEXT,
    "status": {"type": "string", "enum": list(DatasetStatus.ALL)},
    "priority": _NUMBER,
    "jobs": _int(),
    "jobs_created": _int(),
    "tasks_per_job": _int(1),
    "task_names": _NAMES,
    "tasks": {"type": "object", "additionalProperties": _int(),
              "description": "tasks per state; tasks of jobs not yet created count as waiting"},
    "created": _TIME,
    "max_retries": _int(),
    "debug": _BOOLEAN,
    "archived": dict(_or_null(ARCHIVE), description="where its attempts were archived"),
    "archiving": dict(_BOOLEAN, description="its archive is being made"),
    "archive_error": dict(_MAYBE_TEXT, description="why its archive could not be made"),
})
"""A dataset as listings show it (views.summary)."""

DATASETS = _record({"datasets": _list(DATASET, "by id"),
                    "more": _int(doc="how many more match than the limit let through")})
EVENT = _record({"time": _TIME, "action": _TEXT, "detail": _MAYBE_TEXT, "user": _MAYBE_TEXT})
EVENTS = _record({"events": _list(EVENT, "newest first")})
CONFIG_VERSION = _record({
    "version": _int(1), "first_job": _int(doc="the first job it applies to"),
    "steering": {"type": "object"}, "created": _TIME,
    "by": dict(_MAYBE_TEXT, description="who made it"),
    "changed": {"type": "object", "description": "the steering values it changed"},
})
DATASET_DETAIL = _record(dict(
    DATASET["properties"],
    waiting=_list(_record({"task": _TEXT, "tasks": _int(1), "why": _TEXT}),
                  "its ready tasks by task and requirements, most numerous first"),
    config={"type": "object", "description": "the dataset config as submitted"},
    config_versions=_list(CONFIG_VERSION),
    events=_list(EVENT, "the latest 50, newest first"),
))
CHANGED = _record({"changed": _int(doc="how many tasks changed"), "dataset": DATASET})
JOBS_ADDED = _record({"jobs": _int(1, doc="the dataset's jobs now"), "dataset": DATASET})
STEERED = _record(dict(
    {name: CONFIG_VERSION["properties"][name]
     for name in ("version", "first_job", "steering", "created")},
    jobs_using_it=_int(doc="the dataset's jobs that will run it"), dataset=DATASET))
RETIRED = _record({
    "dataset_id": _int(1), "kind": {"type": "string", "enum": ["archived", "deleted"]},
    "time": _TIME, "user_id": _MAYBE_INT, "attempts": _int(), "first_attempt": _MAYBE_INT,
    "last_attempt": _MAYBE_INT, "path": _MAYBE_TEXT, "bytes": _MAYBE_INT,
    "purged": _MAYBE_NUMBER})
DELETED = _record({"deleted": RETIRED})

JOBS = _record({"jobs": _list(_record({"job": _int(), "state": {
    "type": "string", "enum": list(JOB_STATES)}})), "next": _NEXT})
_TASK = {
    "task_id": _int(1), "job": _int(), "task_index": _int(),
    "task": _str(64, description="the task's name"),
    "state": {"type": "string", "enum": [state.value for state in TaskState]},
    "failures": _int(), "lost": _int(),
    "grown_requirements": dict(_or_null({"type": "object"}), description=(
        "its requirements as grown by retries (null: as configured)")),
    "reason": dict(_MAYBE_TEXT, description="why it last changed state"),
    "updated": _TIME,
    "why": dict(_MAYBE_TEXT, description="what it waits for, when it is not running and has "
                                         "not ended"),
}
TASK_ROW = _record(_TASK)
TASKS = _record({"tasks": _list(TASK_ROW), "next": _NEXT})
USED = _record({name: _MAYBE_NUMBER for name in (
    "cpu_time", "wall_time", "peak_memory", "peak_disk", "peak_gpu_memory", "gpu_time")})
ATTEMPT = _record({
    "attempt_id": _int(1), "task_id": _int(1), "dataset_id": _int(1),
    "pilot_id": _MAYBE_INT, "site": _TEXT, "host": _TEXT, "batch_id": _TEXT,
    "state": {"type": "string", "enum": [state.value for state in AttemptState]},
    "started": _TIME, "last_heartbeat": _TIME, "ended": _MAYBE_NUMBER,
    "requested": _record({"cpus": _int(), "memory": _int(), "disk": _int(), "gpus": _int(),
                          "walltime": _int()}),
    "used": USED,
    "gpus": {"type": ["array", "null"], "items": GPU, "description": "the GPUs it ran on"},
    "exit_code": _MAYBE_INT,
    "error_class": _or_null({"type": "string", "enum": [e.value for e in ErrorClass]}),
    "error_message": _MAYBE_TEXT,
    "statistics": {"type": ["object", "null"], "additionalProperties": _NUMBER},
    "outputs": {"type": ["array", "null"], "items": {"type": "object"}},
    "warnings": _list(_TEXT, "what its pilot left out of its report and why"),
    "config_version": _int(1),
    "stdout_tail": _MAYBE_TEXT, "stderr_tail": _MAYBE_TEXT,
}, ("stdout_tail", "stderr_tail"))
"""One attempt as recorded (queries.attempt_record); with its log tails when read alone (and
from an archive)."""
TASK = _record(dict(_TASK, dataset=_int(1), requirements=REQUIREMENTS,
                    attempts=_list(ATTEMPT, "every attempt, oldest first")))
STATISTICS = _record({"statistics": _list(_record({
    "kind": _TEXT, "name": _TEXT,
    "task": dict(_MAYBE_TEXT, description="the task's name; null: over all its tasks"),
    "count": _int(), "sum": _NUMBER, "mean": _NUMBER, "stddev": _NUMBER, "min": _NUMBER,
    "max": _NUMBER}))})

ATTEMPT_ALIVE = _record({"action": {"type": "string", "enum": ["continue"]},
                         "heartbeat_interval": HEARTBEAT_INTERVAL})
LOG_STORED = _record({"stored": _int(doc="bytes stored")})

BLACK_HOLE = _record({"host": _TEXT, "site": _TEXT, "since": _TIME, "until": _TIME,
                      "why": _TEXT})
SITES = _record({"sites": _list(_record({
    "name": _TEXT, "pilots": _int(doc="running pilots"),
    "attempts": _int(doc="attempts they run"), "black_holes": _list(BLACK_HOLE)}))})
_SHAPE_DEMAND = _record({
    "name": _TEXT, "tasks": _int(doc="ready tasks counted for this shape"),
    "cpus": _int(), "memory": _int(), "gpus": _int(),
    "fitting": _int(doc="ready tasks that fit this shape"),
    "pilots_needed": _int(), "room": _int(doc="pilots' worth the free room of running "
                                              "pilots makes up for")})
SITE_DEMAND = _record({
    "site": _TEXT, "factory": _TEXT,
    "shapes": _list(_SHAPE_DEMAND, "in the order of the request's"),
    "unfit": _record({"tasks": _int(), "kinds": _list(_record({"tasks": _int(1),
                                                              "why": _TEXT}))}),
    "black_holes": _list(BLACK_HOLE),
    "pilots": _record({"running": _int(), "idle": _int(), "ended_empty": _int()}),
})
WITHDRAWN = _record({"withdrawn": _int(doc="the pilots it had said it queued")})
PILOT = _record({
    "pilot_id": _int(1), "site": _TEXT, "host": _TEXT, "batch_system": _TEXT,
    "batch_id": _TEXT, "resources": {"type": "object", "description": "what it measured"},
    "state": {"type": "string", "enum": ["running", "exited", "lost"]},
    "registered": _TIME, "last_seen": _TIME, "ended": _MAYBE_NUMBER,
    "exit_reason": _MAYBE_TEXT, "suspect": _BOOLEAN,
    "attempts_run": _int(doc="attempts it was given in all"),
    "attempts": _list(_int(1), "the ids of the attempts it runs now")})
PILOTS = _record({"pilots": _list(PILOT)})
TOKEN_OF_SITE = _record({"site": _TEXT, "token": _str(256, description="shown once")})

USER = _record({"name": _TEXT, "role": {"type": "string", "enum": ["admin", "user"]},
                "share": _NUMBER, "usage": _NUMBER, "datasets": _int()})
USERS = _record({"users": _list(USER)})
NEW_USER_TOKEN = _record({"user": USER, "token": _str(256, description="shown once")})
USER_TOKEN = _record({"user": _TEXT, "token": _str(256, description="shown once")})
SHARES = _record({"half_life": _NUMBER, "shares": _list(_record({
    "user": _TEXT, "share": _NUMBER, "share_fraction": _NUMBER, "usage": _NUMBER,
    "usage_fraction": _NUMBER, "delivered_core_seconds": _NUMBER}))})
WHOAMI = _record({"role": {"type": "string", "enum": ["admin", "user", "site", "pilot"]},
                  "name": _TEXT, "user": _MAYBE_TEXT, "site": _MAYBE_TEXT,
                  "expires": dict(_MAYBE_NUMBER, description="when the token expires")})

HEALTH = _record({
    "status": {"type": "string", "enum": ["ok", "stalled", "writer_down", "unreadable"]},
    "version": _TEXT, "uptime": _NUMBER, "datasets": _int(), "running_attempts": _int(),
    "pilots": _int(), "held_asks": _int(),
    "database": _record({
        "commits": _int(), "writes": _int(), "stalls": _int(), "writer_alive": _BOOLEAN,
        "writer_pid": _MAYBE_INT,
        "last_write_age": dict(_MAYBE_NUMBER, description="seconds since the writer last "
                                                          "answered a write")}),
    "reason": dict(_TEXT, description="what keeps the database from working (not ok)"),
    "stalled_for": dict(_NUMBER, description="seconds the write has waited (stalled)"),
}, ("reason", "stalled_for"))
NOTIFICATIONS_KEY = _record({"key": _str(10_000, description="PEM"),
                             "algorithm": {"type": "string", "enum": ["ed25519"]}})
OPENAPI = _obj({"openapi": _TEXT, "info": {"type": "object"}, "paths": {"type": "object"},
                "components": {"type": "object"}}, ("openapi", "info", "paths"), extra=True)

NAMED = {"Error": ERROR, "Dataset": DATASET, "DatasetDetail": DATASET_DETAIL,
         "Archive": ARCHIVE, "Event": EVENT, "ConfigVersion": CONFIG_VERSION,
         "TaskRow": TASK_ROW, "Task": TASK, "Attempt": ATTEMPT, "BlackHole": BLACK_HOLE,
         "Pilot": PILOT, "User": USER}
"""The schemas the OpenAPI document names (components/schemas), by name: answers' records
only, so that the schemas of request bodies and of the pilot's answers (which the dry-run
preview shares) stand alone, with no reference into the document."""

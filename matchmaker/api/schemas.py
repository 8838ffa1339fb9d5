"""JSON Schemas of the API's request bodies and main responses.

Each is used twice: to check requests (api.validation) and in the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from config.states import ErrorClass

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
}, ("cpus", "memory", "disk"))

USAGE = _obj({
    "cpu_time": _num(), "wall_time": _num(), "peak_memory": _int(), "peak_disk": _int(),
    "peak_gpu_memory": _int(), "gpu_time": _num(),
})

REGISTER = _obj({
    "host": _str(256),
    "batch_system": _str(32),
    "batch_id": _str(256),
    "version": _str(64),
    "resources": {"type": "object", "maxProperties": 64,
                  "description": "what the pilot measured (floe pilot --probe prints it)"},
}, ("host",))

PILOT_EXIT = _obj({
    "reason": _str(64, description="idle, drained, lifetime, suspect node, error"),
    "message": _str(4000),
    "suspect": {"type": "boolean", "description": "the node failed several tasks in a row"},
})

HEARTBEAT = _obj({"usage": USAGE})

REPORT = _obj({
    "exit_code": {"type": ["integer", "null"], "minimum": -255, "maximum": 255},
    "error_class": {"type": ["string", "null"], "enum": [e.value for e in ErrorClass] + [None]},
    "error_message": _str(20_000),
    "usage": USAGE,
    "statistics": {"type": "object", "maxProperties": 1000,
                   "additionalProperties": {"type": "number"},
                   "description": "user statistics: name -> number"},
    "outputs": {"type": "array", "maxItems": 10_000, "items": _obj({
        "url": _str(4096), "local": _str(4096), "sha256": _str(64), "size": _int()})},
    "stdout_tail": _str(1_000_000),
    "stderr_tail": _str(1_000_000),
    "overuse": _obj({"resource": {"type": "string", "enum": ["memory", "disk", "walltime"]},
                     "requested": _num(), "peak": _num()}),
    "ask": dict(SLOT, description="ask for the next task in the same request: what the "
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
        "...}; or, when the ask was refused (no valid pilot token: 401, another site's "
        "pilot: 403, the pilot has ended: 404), {\"error\": \"...\", \"status\": ...}")},
}, ("recorded", "duplicate"))

DATASET_CONFIG = {
    "type": "object",
    "description": "a dataset config; every key is documented in docs/config.md "
                   "(`floe docs config`)",
}

RESET = _obj({"scope": {"type": "string", "enum": ["failed", "all"]}}, ("scope",))
PRIORITY = _obj({"priority": _num(0.001, 1000)}, ("priority",))
NEW_USER = _obj({"name": NAME, "admin": {"type": "boolean"}, "share": _num(0.000001, 1e6)},
                ("name",))
SHARE = _obj({"share": _num(0.000001, 1e6)}, ("share",))
NEW_SITE = _obj({"name": NAME}, ("name",))
PILOT_TOKEN = _obj({"lifetime": _int(60, 366 * 86400, "seconds until the token expires")})

SHAPE = _obj({
    "name": _str(64),
    "cpus": _int(1, 4096), "memory": _int(), "disk": _int(), "gpus": _int(0, 64),
    "walltime": _int(1), "os": {"type": "array", "items": _str(64), "maxItems": 16},
    "arch": _str(32),
    "queued": _int(doc="pilots of this shape this factory has queued now"),
}, ("name", "cpus", "memory", "disk", "walltime"))
DEMAND = _obj({"shapes": {"type": "array", "items": SHAPE, "maxItems": 64},
               "factory": _str(128)}, ("shapes",))

"""The statements that requests contribute to group commits, in the order they run.

Each is a `Statement` that many concurrent `Batch`es add rows to; the writer runs each once per
group with `executemany`. Guarded ones are compare-and-set on the state the change expects to
leave, so that a late or duplicate write is refused instead of overwriting newer facts.
"""

from __future__ import annotations

from .database import Statement

INSERT_PILOT = Statement(
    "register pilot",
    "INSERT INTO pilots (pilot_id, site_id, host, batch_system, batch_id, resources, state,"
    " registered, last_seen) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
    order=10)

PILOT_SEEN = Statement(
    "pilot last seen",
    "UPDATE pilots SET last_seen = ? WHERE pilot_id = ?",
    order=11)

END_PILOT = Statement(
    "pilot ended",
    "UPDATE pilots SET state = ?, ended = ?, exit_reason = ?, suspect = ?"
    " WHERE pilot_id = ? AND state = 'running'",
    order=12)

INSERT_ATTEMPT = Statement(
    "dispatch attempt",
    "INSERT INTO attempts (attempt_id, task_id, dataset_id, pilot_id, site, host, batch_id,"
    " passkey_hash, state, started, last_heartbeat, req_cpus, req_memory, req_disk, req_gpus,"
    " req_walltime, gpus) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'processing', ?, ?, ?, ?, ?, ?, ?, ?)",
    order=20)

SAVE_LOG = Statement(
    "upload log",
    "INSERT OR REPLACE INTO logs (attempt_id, stream, text) VALUES (?, ?, ?)",
    order=25)

END_ATTEMPT = Statement(
    "record attempt result",
    "UPDATE attempts SET state = ?, ended = ?, last_heartbeat = ?, cpu_time = ?, wall_time = ?,"
    " peak_memory = ?, peak_disk = ?, peak_gpu_memory = ?, gpu_time = ?, exit_code = ?,"
    " error_class = ?, error_message = ?, statistics = ?, outputs = ?, stdout_tail = ?,"
    " stderr_tail = ? WHERE attempt_id = ? AND state = 'processing'",
    order=30, guarded=True)

HEARTBEAT = Statement(
    "attempt heartbeat",
    "UPDATE attempts SET last_heartbeat = ?, cpu_time = ?, wall_time = ?, peak_memory = ?,"
    " peak_disk = ?, peak_gpu_memory = ? WHERE attempt_id = ? AND state = 'processing'",
    order=35)

MOVE_TASK = Statement(
    "task transition",
    "UPDATE tasks SET state = ?, updated = ? WHERE task_id = ? AND state = ?",
    order=40, guarded=True)

MOVE_TASK_WITH_RECORD = Statement(
    "task transition with retry record",
    "UPDATE tasks SET state = ?, failures = ?, lost = ?, requirements = ?, reason = ?,"
    " updated = ? WHERE task_id = ? AND state = ?",
    order=41, guarded=True)

SET_JOB = Statement(
    "job state",
    "UPDATE jobs SET state = ? WHERE dataset_id = ? AND job_index = ?",
    order=50)

ADD_STATISTIC = Statement(
    "aggregate statistic",
    # SET expressions read the row's values before the update (Welford's running variance).
    "INSERT INTO statistics (dataset_id, task_index, kind, name, count, sum, mean, m2, min, max)"
    " VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5, 0, ?5, ?5)"
    " ON CONFLICT (dataset_id, task_index, kind, name) DO UPDATE SET"
    " count = count + 1,"
    " sum = sum + excluded.sum,"
    " mean = mean + (excluded.mean - mean) / (count + 1),"
    " m2 = m2 + (excluded.mean - mean) * (excluded.mean - (mean + (excluded.mean - mean)"
    " / (count + 1))),"
    " min = min(min, excluded.min),"
    " max = max(max, excluded.max)",
    order=60)

SET_DATASET = Statement(
    "dataset status",
    "UPDATE datasets SET status = ?, priority = ?, updated = ? WHERE dataset_id = ?",
    order=70)

ADD_EVENT = Statement(
    "record event",
    "INSERT INTO events (time, dataset_id, user_id, action, detail) VALUES (?, ?, ?, ?, ?)",
    order=80)

SAVE_USAGE = Statement(
    "save fair-share usage",
    "INSERT INTO usage (entity, value, updated) VALUES (?, ?, ?)"
    " ON CONFLICT (entity) DO UPDATE SET value = excluded.value, updated = excluded.updated",
    order=90)

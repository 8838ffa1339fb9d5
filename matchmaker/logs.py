"""An attempt's full logs: a stream too long for its report's tail is uploaded whole by its pilot,
proved by the attempt's passkey, while the attempt runs or once its result is recorded (not once
it is void), kept up to `max_log_bytes` in the log store (`storage.logstore`) beside the
database."""

from __future__ import annotations

from . import passkeys
from .engine import Engine
from .errors import NotFound, PayloadTooLarge
from .recording import stale_answer
from .storage import queries


async def save(engine: Engine, attempt_id: int, passkey: str, stream: str, body: bytes) -> int:
    """Store `body` as the attempt's whole `stream` (stdout or stderr); returns its size."""
    limit = engine.settings.max_log_bytes
    if len(body) > limit:
        raise PayloadTooLarge(f"logs are kept up to {limit} bytes; send the last {limit} bytes")
    active = engine.active.get(attempt_id)
    if active is None:
        answer = await stale_answer(engine, attempt_id, passkey)
        if not answer.get("recorded"):
            raise NotFound(f"there is no attempt {attempt_id}")
        row = await queries.ended_attempt(engine.db, attempt_id)
        if row is None:  # its dataset was archived or deleted meanwhile
            raise NotFound(f"there is no attempt {attempt_id} any more")
        dataset_id = row["dataset_id"]
    else:
        passkeys.check(attempt_id, active.passkey_hash, passkey)
        dataset_id = active.dataset_id
    await engine.logs.save(dataset_id, attempt_id, stream, body)
    return len(body)

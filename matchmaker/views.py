"""What the API and the web pages both show of the working state, shaped once: a dataset's
summary and the fair-share table. The API serializes these; the pages lay them out."""

from __future__ import annotations

from typing import Any

from .engine import Engine
from .model import DatasetState


def summary(engine: Engine, dataset: DatasetState) -> dict[str, Any]:
    """A dataset as listings show it: owner, status, progress by task state, its shape."""
    owner = engine.users.get(dataset.user_id)
    return {
        "id": dataset.id,
        "owner": owner.name if owner else None,
        "description": dataset.config.description,
        "status": dataset.status,
        "priority": dataset.priority,
        "jobs": dataset.jobs,
        "jobs_created": dataset.materialized,
        "tasks_per_job": dataset.ntasks,
        "task_names": [t.name for t in dataset.config.tasks],
        "tasks": dataset.summary(),
        "created": dataset.dataset.created,
        "max_retries": dataset.config.max_retries,
        "debug": dataset.config.debug,
        "archived": archived(engine, dataset.id),
        "archiving": dataset.id in engine.retired,
        "archive_error": engine.retire_errors.get(dataset.id),
    }


def archived(engine: Engine, dataset_id: int) -> dict[str, Any] | None:
    """Where an archived dataset's attempts are, or None."""
    row = engine.archived.info.get(dataset_id)
    if row is None:
        return None
    return {key: row[key] for key in ("path", "time", "attempts", "bytes")}


def share_table(engine: Engine) -> dict[str, Any]:
    """Each user's share of the pool against their recent (decaying) usage, as fractions."""
    now = engine.clock()
    users = list(engine.users.values())
    total_share = sum(u.share for u in users) or 1.0
    usage = {u.user_id: engine.user_usage.value(u.user_id, now) for u in users}
    total_usage = sum(usage.values()) or 1.0
    return {"half_life": engine.settings.fair_share_half_life,
            "shares": [{"user": u.name, "share": u.share,
                        "share_fraction": u.share / total_share,
                        "usage": usage[u.user_id],
                        "usage_fraction": usage[u.user_id] / total_usage,
                        "delivered_core_seconds": engine.metrics.delivered.get(u.user_id, 0.0)}
                       for u in sorted(users, key=lambda u: u.name)]}

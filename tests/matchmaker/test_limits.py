"""The limits on what one submission creates, at the defaults a new server has: a million-job
dataset is taken, a larger one is refused, and so is a user's submission past five million
unfinished tasks, each with a sentence naming the setting."""

from __future__ import annotations

import pytest

from floe.matchmaker import submission
from floe.matchmaker.errors import BadRequest

from . import support as s


async def test_the_default_limits_take_a_million_job_dataset_and_refuse_more(engine):
    alice = await s.user(engine, "alice")
    with pytest.raises(BadRequest) as refused:
        await submission.submit(engine, alice, s.config(jobs=1_000_001))
    assert "at most 1,000,000 jobs per dataset (max_jobs_per_dataset), got 1,000,001" \
        in str(refused.value)
    for _ in range(5):  # jobs not yet created count: these are 5,000,000 unfinished tasks
        await submission.submit(engine, alice, s.config(jobs=1_000_000))
    with pytest.raises(BadRequest) as refused:
        await submission.submit(engine, alice, s.config(jobs=1))
    assert "alice has 5,000,000 unfinished already" in str(refused.value)
    assert "at most 5,000,000 unfinished tasks per user (max_queued_tasks_per_user)" \
        in str(refused.value)
    bob = await s.user(engine, "bob")
    await submission.submit(engine, bob, s.config(jobs=1))  # the limit is each user's own

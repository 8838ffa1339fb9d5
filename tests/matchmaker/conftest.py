"""Fixtures: a real engine over a real SQLite file in a temporary directory, with a fake clock;
and the API world (`world`): the app on a test client with a user, a site and a pilot."""

from __future__ import annotations

import pytest

from floe.config.settings import server_settings
from floe.matchmaker.engine import Engine
from floe.matchmaker.storage.database import Database

from .support import Clock
from .test_api import World


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(tmp_path):
    return server_settings({"database": str(tmp_path / "floe.sqlite")})


@pytest.fixture
async def engine(settings, clock):
    db = await Database.open(settings.database)
    engine = Engine(db, settings, clock)
    await engine.load()
    yield engine
    await engine.stop()
    await db.close()
    assert db.stalls == 0, "a database write waited longer than the watchdog allows"


@pytest.fixture
async def reopen(settings, clock):
    """Stop an engine and open a new one on the same file, as a restarted server would."""
    opened = []

    async def restart(old: Engine) -> Engine:
        await old.stop()
        await old.db.close()
        db = await Database.open(settings.database)
        engine = Engine(db, settings, clock)
        await engine.load()
        opened.append(engine)
        return engine

    yield restart
    for engine in opened:
        await engine.stop()
        await engine.db.close()


@pytest.fixture
async def world(tmp_path):
    started = await World().start(tmp_path)
    yield started
    await started.stop()

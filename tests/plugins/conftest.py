"""Fixtures for the plugin tests: a factory id and a report dir per test (the clusters are in
tests/conftest.py). Every test uses its own factory id, and its plugin fixture removes whatever
that factory left queued.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest


@pytest.fixture
def factory_id() -> str:
    """A factory id of this test's own, so that tests never see each other's pilots."""
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
def pilot_dir(tmp_path: Path) -> Path:
    """Where test pilots report; readable from inside batch jobs (they run on this machine)."""
    out = tmp_path / "pilots"
    out.mkdir()
    out.chmod(0o777)
    return out

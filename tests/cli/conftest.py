"""The CLI tests' shared fixture: no client settings but the command line's."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def no_client_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the options on the command line say where to connect and as whom."""
    for name in ("FLOE_URL", "FLOE_TOKEN", "FLOE_TOKEN_FILE", "FLOE_CACERT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLOE_CONFIG", str(tmp_path / "no-client.toml"))

"""Shared fixtures: a real UDP collector on loopback and an hsflowd.auto written for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Collector, write_auto


@pytest.fixture(autouse=True)
def state_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test gets its own shared-state folder (short: unix socket paths are limited)."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="sfa-")
    monkeypatch.setenv("SFLOW_APP_STATE_DIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.fixture
def auto_file(tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch):
    """Factory: write an hsflowd.auto for the collector and point SFLOW_APP_CONFIG at it."""

    def make(**kwargs) -> Path:
        path = write_auto(tmp_path / "hsflowd.auto", collector.port, **kwargs)
        monkeypatch.setenv("SFLOW_APP_CONFIG", str(path))
        return path

    return make


@pytest.fixture
def agent(auto_file, monkeypatch: pytest.MonkeyPatch):
    """The process's agent, reset and following a fresh hsflowd.auto (1-in-1, polling 1 s).

    Returns a factory so tests can pass auto_file options: ``agent(sampling=10)``.
    """
    from apps.harness import reset_agent

    from sflow_app._agent import AGENT

    monkeypatch.setenv("SFLOW_APP_NAME", "tests")

    def make(**kwargs):
        reset_agent()
        auto_file(**kwargs)
        AGENT.reload()
        return AGENT

    yield make
    reset_agent()


@pytest.fixture
def live(auto_file, monkeypatch):
    """The agent without its exporter thread, following a fresh hsflowd.auto; tests call
    ``apps.harness.flush``. Returns a factory: ``live(sampling=1)``."""
    from apps.harness import live_agent, reset_agent

    monkeypatch.setenv("SFLOW_APP_NAME", "tests")
    yield lambda **kwargs: live_agent(auto_file, **kwargs)
    reset_agent()

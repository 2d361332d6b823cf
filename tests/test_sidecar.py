"""The status sidecars (sflow_app._sidecar): what only a process knows, published beside
the state file for ``sflow-app status`` -- and carried over, like the slots' counters, when
the sender or a slot's owner changes, so the totals never go backwards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import private_dir, state_files, write_auto
from test_exporter import Clock, request

from sflow_app import _sidecar
from sflow_app._agent import Agent


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def sidecars(
    fd: int, stats: dict[str, int] | None = None, errors: dict[str, int] | None = None
) -> _sidecar.Sidecars:
    return _sidecar.Sidecars("v2-k-1-2", fd, stats or {}, errors or {})


def update(side: _sidecar.Sidecars, **kw: Any) -> None:
    args: dict[str, Any] = {
        "sender": None,
        "slot": None,
        "name": "svc",
        "rates": {0: 10},
        "errors": {},
        "bad_forwards": 0,
        "stats": {},
    }
    side.update(**{**args, **kw, "force": True})


def test_a_new_sender_continues_the_counts(folder: int) -> None:
    a = sidecars(folder)
    update(a, sender=1, errors={"c:1": 3}, bad_forwards=1)
    b = sidecars(folder, errors={"c:1": 7})  # counted 7 before this opening: not this file's
    update(b, sender=2, errors={"c:1": 9})
    got = _sidecar.read(folder, "v2-k-1-2.json")
    assert got is not None
    assert (got["send_errors"], got["bad_forwards"]) == ({"c:1": 5}, 1)
    assert (got["name"], got["sampling"], got["pid"]) == ("svc", {"0": 10}, os.getpid())
    update(a, sender=3, errors={"c:1": 4}, bad_forwards=1)  # a again: 1 more error
    got = _sidecar.read(folder, "v2-k-1-2.json")
    assert got is not None and got["send_errors"] == {"c:1": 6} and got["bad_forwards"] == 1


def test_a_slots_new_owner_continues_its_drops(folder: int) -> None:
    a = sidecars(folder)
    update(a, slot=0, stats={"queue_drops": 0})
    assert os.listdir(folder) == [], "a file without drops"
    update(a, slot=0, stats={"queue_drops": 2, "backlog_drops": 1})
    b = sidecars(folder, {"queue_drops": 5})
    update(b, slot=0, stats={"queue_drops": 7})
    got = _sidecar.read(folder, "v2-k-1-2-slot0.json")
    assert got is not None and got["drops"] == {"queue": 4, "backlog": 1}


def test_written_at_most_once_a_second_and_only_when_changed(
    folder: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [time.monotonic()]  # the sidecars' clock moves only when the test says
    monkeypatch.setattr(_sidecar, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    side = sidecars(folder)
    update(side, sender=1)
    st = os.stat("v2-k-1-2.json", dir_fd=folder)
    update(side, sender=1)  # unchanged: not rewritten
    assert os.stat("v2-k-1-2.json", dir_fd=folder).st_ino == st.st_ino
    side.update(
        sender=1, slot=None, name="other", rates={}, errors={}, bad_forwards=0, stats={}
    )  # within the second: not yet
    assert _sidecar.read(folder, "v2-k-1-2.json")["name"] == "svc"  # type: ignore[index]
    assert sorted(os.listdir(folder)) == ["v2-k-1-2.json"], "a temporary file left"
    now[0] += _sidecar.WRITE_EVERY  # a second later: written
    side.update(sender=1, slot=None, name="other", rates={}, errors={}, bad_forwards=0, stats={})
    assert _sidecar.read(folder, "v2-k-1-2.json")["name"] == "other"  # type: ignore[index]


def test_files_of_names_only_that_instances_sidecars() -> None:
    names = [
        "v2-k-1-2.state",
        "v2-k-1-2.json",
        "v2-k-1-2-slot3.json",
        "v2-k-1-2.json.99.tmp",
        "v2-k-1-2-4.sock",
        "v2-k-1-23.json",
        "v2-k-1-23-slot0.json",
    ]
    assert _sidecar.files_of("v2-k-1-2", names) == names[1:4]


def test_broken_sidecars_are_ignored(folder: int) -> None:
    fd = os.open("v2-k-1-2.json", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=folder)
    os.write(fd, b"[not json")
    os.close(fd)
    assert _sidecar.read(folder, "v2-k-1-2.json") is None
    update(sidecars(folder), sender=1)  # a new sender starts from nothing
    assert _sidecar.read(folder, "v2-k-1-2.json") is not None


def test_queue_drops_and_send_errors_reach_status(tmp_path: Path, state_dir: str) -> None:
    """An agent (this process: a running instance) whose queue overflows and whose
    collector refuses: status shows both, by cause and by collector."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    path = write_auto(tmp_path / "hsflowd.auto", port, sampling=1, polling=1)
    env = {
        "SFLOW_APP_CONFIG": str(path),
        "SFLOW_APP_NAME": "unit",
        "SFLOW_APP_STATE_DIR": state_dir,
    }
    clock = Clock()
    agent = Agent(autostart=False, env=env, clock=clock)
    try:
        agent.reload()
        agent.configure(queue_capacity=64)
        source = agent.http_source()
        agent.set_http_port(8080, "test")
        for _ in range(100):
            request(source)
        for _ in range(4):  # the port is closed: every other send fails (ICMP)
            agent.tick(clock.now, final=True)
            clock.now += 2
        assert agent.stats["send_errors"] >= 1
        done = subprocess.run(
            [sys.executable, "-m", "sflow_app", "status", "--json", "unit"],
            # This test's state only: not the temp dir's fallback folder, where any
            # service of this user may report.
            env={**os.environ, "SFLOW_APP_STATE_DIR": state_dir, "TMPDIR": state_dir},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        agent.exporter.close()
    assert done.returncode == 0, done.stderr
    [svc] = json.loads(done.stdout)["services"]
    assert svc["running"] and svc["sender_pid"] == os.getpid() and svc["workers_alive"] == 1
    assert svc["drops"] == {"queue": 36, "backlog": 0, "bad_forward": 0, "other": 0}
    assert svc["send_errors"] == {f"127.0.0.1:{port}": agent.stats["send_errors"]}
    [http] = svc["data_sources"]
    assert (http["drops"], http["sample_pool"], http["flow_samples"]) == (36, 100, 64)
    assert svc["datagrams"] == agent.stats["datagrams"]
    assert len(state_files(state_dir, ".json")) == 2  # the sender's and slot 0's
    assert os.path.isdir(private_dir(state_dir))

"""The runner's own contract (sflow_app._lifecycle): the hand-off keeps order and counts
what its capacity drops, the thread starts once, and the exit flush sends what is left.
A real agent's runner, a real thread and a real collector."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from helpers import Collector, wait_until, write_auto
from test_exporter import request

from sflow_app import _lifecycle
from sflow_app._agent import Agent
from sflow_app.records import HttpRequest


@pytest.fixture
def make_agent(tmp_path: Path, collector: Collector, state_dir: str):
    made: list[Agent] = []

    def make() -> Agent:
        path = write_auto(tmp_path / "hsflowd.auto", collector.port, sampling=1, polling=0)
        env = {
            "SFLOW_APP_CONFIG": str(path),
            "SFLOW_APP_NAME": "runner",
            "SFLOW_APP_STATE_DIR": state_dir,
        }
        agent = Agent(autostart=False, env=env)
        agent.reload()
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.shutdown()
        agent.exporter.close()
        agent.runner.close()


def test_put_and_drain_keep_order_and_count_what_the_capacity_drops(make_agent) -> None:
    agent = make_agent()
    agent.configure(queue_capacity=64)  # the smallest the settings allow
    runner = agent.runner
    assert runner.capacity == 64  # the agent keeps it at its settings'
    assert agent.enqueue == runner.put  # the sampled path's hand-off, bound once
    source = agent.http_source()
    for pool in range(70):
        runner.put(source, pool, 1, ("record", pool))
    assert [item[1] for item in runner.drain()] == list(range(64))
    assert (source.drops, agent.stats["queue_drops"]) == (6, 6)
    assert runner.drain() == []
    runner.put(source, 70, 1, ("record", 70))  # room again once drained
    assert [item[1] for item in runner.drain()] == [70]
    assert agent.stats["queue_drops"] == 6


def test_start_is_idempotent_and_shutdown_stops_the_thread(make_agent) -> None:
    agent = make_agent()
    runner = agent.runner
    before = set(threading.enumerate())
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        runner.start()

    starters = [threading.Thread(target=start) for _ in range(8)]
    for t in starters:
        t.start()
    for t in starters:
        t.join(10)
    new = [t for t in set(threading.enumerate()) - before if t.name == "sflow-app-exporter"]
    assert runner.started and new == [runner.thread]
    thread = runner.thread
    assert thread is not None and wait_until(lambda: runner.passes >= 1)
    runner.start()
    assert runner.thread is thread  # started already: nothing new
    assert runner.shutdown()
    assert not thread.is_alive() and not runner.started
    assert not runner.shutdown()  # nothing left to stop


def test_shutdown_sends_what_is_still_queued(make_agent, collector: Collector) -> None:
    agent = make_agent()
    source = agent.http_source()
    agent.set_http_port(8080, "test")  # its identity: nothing waits for one
    runner = agent.runner
    runner.start()
    thread = runner.thread
    assert thread is not None
    runner.stop(10)  # the thread is gone: only the exit flush can send what comes now
    assert not thread.is_alive() and runner.started
    for _ in range(5):
        assert request(source, uri="/left")
    assert len(runner.queue) == 5
    assert runner.shutdown()
    assert len(runner.queue) == 0
    left = lambda c: [r for r in c.records(HttpRequest) if r.uri == "/left"]  # noqa: E731
    assert collector.wait_for(lambda c: len(left(c)) >= 5)
    assert len(left(collector)) == 5


def test_an_error_every_pass_is_logged_once_then_a_line_a_minute(
    make_agent, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug that fails every pass (ten a second) logs its traceback once, not every pass;
    a different error gets its own; repeats come back as one line per ERROR_REPEAT_EVERY."""
    agent = make_agent()
    runner = agent.runner
    failures = iter(
        [ValueError("first bug")] * 25 + [KeyError("second bug")] * 5 + [ValueError("first bug")]
    )

    def tick(now: float, *, final: bool = False) -> None:
        raise next(failures, ValueError("first bug"))

    monkeypatch.setattr(agent, "tick", tick)
    with caplog.at_level(logging.ERROR, logger="sflow_app"):
        runner.start()
        assert wait_until(lambda: runner.passes >= 40, timeout=60)
        monkeypatch.setattr(_lifecycle, "ERROR_REPEAT_EVERY", 0.0)
        seen = runner.passes
        assert wait_until(lambda: runner.passes >= seen + 3, timeout=60)
        runner.stop(5.0)
    full = [r for r in caplog.records if r.exc_info]
    assert [str(r.exc_info[1]) for r in full if r.exc_info] == ["first bug", "'second bug'"]
    again = [r.getMessage() for r in caplog.records if not r.exc_info]
    assert again and all(m.startswith("sflow_app: exporter errors again: ") for m in again)
    counted = sum(int(m.split(": ")[2].split()[0]) for m in again)
    assert counted + len(full) == runner.passes  # every pass failed, every one counted


def test_status_reads_the_worker_slots_between_passes(make_agent) -> None:
    """status() may map a grown state file anew while reading the worker slots: it waits
    for a pass running meanwhile (whose views of the old mapping it would release)."""
    agent = make_agent()
    agent.http_source()
    agent.set_http_port(8080, "test")
    agent.tick(0.0)  # a pass: the state is open
    assert agent.exporter.state is not None
    before = agent.status()["workers_seen"]
    seen: list[int] = []
    with agent.exporter._lock:  # a pass is running
        reader = threading.Thread(target=lambda: seen.append(agent.status()["workers_seen"]))
        reader.start()
        reader.join(0.5)
        assert reader.is_alive() and seen == []  # waits for the pass
    reader.join(10)
    assert seen == [before]

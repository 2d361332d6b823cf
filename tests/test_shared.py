"""sflow_app._shared and the exporter across real processes, without servers.

Each "worker" is a forked process with its own ``Agent(autostart=False, env=...)``; all
share one state folder and service name, as the workers of a pre-fork server do. The test
drives them over a pipe: requests through the surfaces' hot path, exporter ticks with real
time, exit (the atexit path: ``finish`` then ``close``), SIGKILL. A real UDP collector
receives what the sender sends; tests/prefork_check.py checks the stream.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import time
import types
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from helpers import state_files, write_auto
from prefork_check import (
    Expect,
    InheritedSkip,
    Load,
    TimedCollector,
    check_datagrams,
    check_stream,
    sources,
)

from sflow_app import _layout
from sflow_app._agent import Agent
from sflow_app._http import METHODS, status_slot, submit_http
from sflow_app.records import CountersSample, Datagram, FlowSample, HttpCounters, HttpRequest

CTX = multiprocessing.get_context("fork")
PORT = 8080


def request(source: Any, uri: str) -> bool:
    """The surfaces' hot path (as in sflow_app.wsgi), then a sampled record when due."""
    n = source.sampler.pool()
    sampled = n >= source.sampler.next_at and source.sample(n)
    incr = source.counters.incr
    incr[METHODS["GET"][1]]()
    incr[status_slot(200)]()
    if sampled:
        submit_http(
            source,
            n,
            sampled,
            method="GET",
            protocol=1001,
            uri=uri,
            status=200,
            resp_bytes=10,
            duration_us=5,
            local=("127.0.0.1", PORT),
            remote=("127.0.0.1", 50000),
        )
    return bool(sampled)


def _status(agent: Agent) -> dict[str, Any]:
    state = agent.exporter.state
    return {
        "pid": os.getpid(),
        "sender": bool(state and state.sender),
        "slot": getattr(state, "slot", None),
        "slots_used": state.slots_used() if state else 0,
        "backlog": len(agent.exporter._backlog),
        "stats": dict(agent.stats),
    }


def _serve(conn: Connection, env: dict[str, str], setup: Any, before: Any = None) -> None:
    """The worker process: a command loop over ``conn``. ``before()`` runs first (e.g.
    to become another user)."""
    if before is not None:
        before()
    agent = Agent(autostart=False, env=env)
    agent.reload()
    source = agent.http_source()
    agent.set_http_port(PORT, "test")
    if setup is not None:
        setup(agent)
    while True:
        cmd, arg = conn.recv()
        if cmd == "requests":
            conn.send([i for i in arg if request(source, f"/r/{i}")])
        elif cmd == "tick":
            agent.tick(time.monotonic(), final=bool(arg))
            conn.send(_status(agent))
        elif cmd == "status":
            conn.send(_status(agent))
        elif cmd == "exit":  # what Agent.shutdown does at exit, without a thread
            agent.exporter.finish(time.monotonic())
            status = _status(agent)
            agent.exporter.close()
            conn.send(status)
            return
        elif cmd == "call":
            conn.send(arg(agent))


class Worker:
    def __init__(self, env: dict[str, str], setup: Any = None, before: Any = None) -> None:
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=_serve, args=(child, env, setup, before), daemon=True)
        self.proc.start()
        child.close()
        self.pid = self.proc.pid

    def __call__(self, cmd: str, arg: Any = None) -> Any:
        self.conn.send((cmd, arg))
        if not self.conn.poll(10):
            raise AssertionError(f"worker {self.pid} did not answer {cmd}")
        return self.conn.recv()

    def requests(self, ordinals: range) -> list[int]:
        return self("requests", ordinals)

    def tick(self, final: bool = False) -> dict[str, Any]:
        return self("tick", final)

    def exit(self) -> dict[str, Any]:
        status = self("exit")
        self.proc.join(5)
        return status

    def kill(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        self.proc.join(5)

    def close(self) -> None:
        if self.proc.is_alive():
            self.kill()
        self.conn.close()


class Service:
    def __init__(self, tmp: Path, state_dir: str, sampling: int = 1, before: Any = None) -> None:
        self.collector = TimedCollector()
        auto = write_auto(tmp / "hsflowd.auto", self.collector.port, sampling=sampling, polling=1)
        self.before = before
        self.env = {
            "SFLOW_APP_CONFIG": str(auto),
            "SFLOW_APP_NAME": "shared-unit",
            "SFLOW_APP_STATE_DIR": state_dir,
        }
        self.state_dir = state_dir
        self.workers: list[Worker] = []

    def worker(self, setup: Any = None) -> Worker:
        w = Worker(self.env, setup, self.before)
        self.workers.append(w)
        return w

    def wait(self, predicate: Any, timeout: float = 15.0) -> None:
        """Until ``predicate`` holds or ``timeout`` passes. The collector's thread may not
        have read a datagram yet: a predicate's own assertion (``http()``: no source seen)
        means not yet; the test's checks after the wait report what is missing."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if predicate():
                    return
            except AssertionError:
                pass
            time.sleep(0.02)

    def http(self) -> Any:
        views = sources(self.collector.received()).get("http", [])
        assert len(views) == 1, f"http data sources: {[v.ds_index for v in views]}"
        return views[0]

    def total(self) -> int | None:
        views = sources(self.collector.received()).get("http", [])
        if not views or not views[0].counters:
            return None
        return views[0].final_total()

    def check(self) -> Any:
        """Identity, datagram/sample sequence numbers, uptime, monotonic counters."""
        check_datagrams(self.collector.received(), PORT)
        view = self.http()
        for what, seqs in (
            ("flow", [s.sequence_number for _, s in view.flows]),
            ("counter", [s.sequence_number for _, s in view.counters]),
        ):
            assert seqs == list(range(1, len(seqs) + 1)), f"{what} sequence: {seqs}"
        previous = None
        for _, sample in view.counters:
            [rec] = [r for r in sample.records if isinstance(r, HttpCounters)]
            if previous is not None:
                assert rec.method_get_count >= previous, "counters went back"
            previous = rec.method_get_count
        return view

    def uris(self) -> list[str]:
        return [r.uri for _, s in self.http().flows for r in s.records if hasattr(r, "uri")]

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self.collector.close()


@pytest.fixture
def service(tmp_path: Path, state_dir: str) -> Iterator[Service]:
    svc = Service(tmp_path, state_dir)
    try:
        yield svc
    finally:
        svc.close()


def slots_used(state_dir: str) -> tuple[int, int]:
    """(slots used, file size) of the service's one state file, read from outside."""
    files = state_files(state_dir, ".state")
    assert len(files) == 1, files
    with open(files[0], "rb") as f:
        data = f.read()
    words = memoryview(data).cast("Q")
    assert len(data) == _layout.file_size(words[_layout.H_SLOTS])
    used = sum(
        1 for s in range(words[_layout.H_SLOTS]) if words[_layout.SLOTS_AT + s * _layout.SLOT_WORDS]
    )
    return used, len(data)


# -- tests ---------------------------------------------------------------------------------


def test_one_sender_exact_sums_contiguous_sequences(service: Service) -> None:
    """Three workers, interleaved requests and ticks for ~2 s of real time: exactly one
    sender at every moment, counters summed exactly, sequence numbers step by one."""
    workers = [service.worker() for _ in range(3)]
    sampled: list[int] = []
    ordinal = 0
    for _ in range(40):
        for w in workers:  # 3 samples per worker and tick: within what a tick forwards
            sampled += w.requests(range(ordinal + 1, ordinal + 4))
            ordinal += 3
        senders = [w.tick()["sender"] for w in workers]
        assert sum(senders) == 1, senders
        time.sleep(0.1)
    assert len({w("status")["slot"] for w in workers}) == 3
    for w in sorted(workers, key=lambda w: w.tick()["sender"]):
        w.tick(final=True)  # the others publish and forward, then the sender sends all
    service.wait(lambda: service.total() == ordinal and len(service.uris()) >= len(sampled))
    assert service.total() == ordinal == 360
    service.check()
    assert sorted(int(u[3:]) for u in service.uris()) == sorted(sampled) == list(range(1, 361))


def test_killed_worker_slot_is_reclaimed_and_counts_continue(service: Service) -> None:
    sender = service.worker()
    assert sender.tick()["sender"]
    victim = service.worker()
    victim.requests(range(1, 101))
    victim.tick()  # publishes 100, forwards 100 samples
    victim_slot = victim("status")["slot"]
    victim.requests(range(101, 111))  # counted, never published: the bound of a kill
    victim.kill()
    sender.tick()
    heir = service.worker()
    heir.requests(range(111, 161))
    status = heir.tick()
    assert status["slot"] == victim_slot, "a dead worker's slot was not reused"
    assert status["slots_used"] == 1  # the sender counted nothing: it holds no slot
    sender.tick(final=True)
    service.wait(lambda: service.total() == 150)
    assert service.total() == 150  # 100 published by the victim + 50; 10 lost with it
    service.check()
    assert slots_used(service.state_dir)[0] == 1


def test_killed_sender_is_replaced_and_sequences_continue(service: Service) -> None:
    first = service.worker()
    second = service.worker()
    assert first.tick()["sender"] and not second.tick()["sender"]
    first.requests(range(1, 21))
    second.requests(range(21, 41))
    second.tick()
    first.tick(final=True)  # sends everything so far
    service.wait(lambda: len(service.collector.received()) >= 1)
    time.sleep(0.3)
    first.kill()
    second.requests(range(41, 61))
    assert second.tick()["sender"], "no new sender after the sender died"
    second.tick(final=True)
    service.wait(lambda: service.total() == 60 and len(service.uris()) == 60)
    view = service.check()
    assert len(view.flows) == 60 and service.total() == 60


def test_state_bounded_after_100_short_lived_workers(service: Service) -> None:
    """100 workers in sequence, each doing 5 requests and exiting without a single tick
    (recycled before any timer): their counts and samples all arrive, the file keeps its
    size and only as many slots as workers alive at once are ever used."""
    sender = service.worker()
    sender.tick()
    size0 = slots_used(service.state_dir)[1]
    for k in range(100):
        w = service.worker()
        w.requests(range(5 * k + 1, 5 * k + 6))
        w.exit()
        sender.tick()  # the sender ticks every 0.1 s; a worker lives longer than that
    sender.tick(final=True)
    service.wait(lambda: service.total() == 500 and len(service.uris()) == 500, 10)
    used, size = slots_used(service.state_dir)
    assert (used, size) == (1, size0)  # the workers' one, reused; the sender counts none
    assert service.total() == 500
    assert sorted(int(u[3:]) for u in service.uris()) == list(range(1, 501))
    service.check()


def test_exiting_sender_hands_over_and_nothing_is_lost(service: Service) -> None:
    """Sender exits; the others keep forwarding: the next one to tick takes over."""
    workers = [service.worker() for _ in range(3)]
    assert [w.tick()["sender"] for w in workers] == [True, False, False]
    workers[1].requests(range(1, 11))
    workers[1].tick()
    workers[0].exit()
    workers[2].requests(range(11, 21))
    states = [workers[1].tick(), workers[2].tick()]
    assert [s["sender"] for s in states] == [True, False]
    workers[1].tick(final=True)
    service.wait(lambda: len(service.uris()) == 20 and service.total() == 20)
    assert sorted(int(u[3:]) for u in service.uris()) == list(range(1, 21))
    service.check()


def _pause_after_final_receive(agent: Agent) -> None:
    """Make the sender stop right after it read its socket for the last time at exit,
    until the test lets it go on (the window in which another worker can forward)."""
    exporter = agent.exporter
    finish = exporter.finish

    def paused_finish(now: float) -> None:
        state = exporter.state
        assert state is not None
        receive = state.receive

        def receive_then_pause(*args: Any) -> Any:
            got = receive(*args)
            state.receive = receive  # pause only once
            with open(agent.env["PAUSE_FIFO"] + ".ready", "w"):
                pass
            end = time.monotonic() + 5
            while not os.path.exists(agent.env["PAUSE_FIFO"] + ".go"):
                if time.monotonic() > end:
                    break
                time.sleep(0.01)
            return got

        state.receive = receive_then_pause  # type: ignore[assignment]
        finish(now)

    exporter.finish = paused_finish


def test_sample_forwarded_while_sender_exits_is_not_lost(service: Service, tmp_path: Path) -> None:
    """Worker B forwards a sample after the exiting sender A read its socket for the last
    time but before A closed it: the sample must still arrive (A reads again after it stops
    taking forwards, or B keeps it until a new sender exists)."""
    flag = str(tmp_path / "pause")
    service.env["PAUSE_FIFO"] = flag
    a = service.worker(setup=_pause_after_final_receive)
    b = service.worker()
    assert a.tick()["sender"] and not b.tick()["sender"]
    a.conn.send(("exit", None))  # A runs its exit path and pauses after its last read
    service.wait(lambda: os.path.exists(flag + ".ready"))
    assert os.path.exists(flag + ".ready")
    assert b.requests(range(1, 4)) == [1, 2, 3]
    status = b.tick()  # forwards to A, whose socket is still bound
    open(flag + ".go", "w").close()
    assert a.conn.poll(10)
    a.conn.recv()
    a.proc.join(5)
    for _ in range(3):
        b.tick()
        time.sleep(0.05)
    b.tick(final=True)
    service.wait(lambda: len(service.uris()) >= 3, 3)
    assert sorted(service.uris()) == ["/r/1", "/r/2", "/r/3"], (
        f"samples forwarded to the exiting sender were lost (B's backlog after its forward "
        f"was {status['backlog']}; received {service.uris()})"
    )


def _wait_flag(flag: str) -> None:
    with open(flag + ".ready", "w"):
        pass
    end = time.monotonic() + 5
    while not os.path.exists(flag + ".go") and time.monotonic() < end:
        time.sleep(0.01)


def _pause_in_exit(agent: Agent) -> None:
    """Make an exiting worker stop twice: before its final pass (``<flag>1``) and before
    it lets go of its state (``<flag>2``)."""
    exporter = agent.exporter
    step, close_state = exporter.step, exporter.close_state
    flag = agent.env["PAUSE_FIFO"]

    def paused_step(now: float, *, final: bool = False) -> None:
        if final and not os.path.exists(flag + "1.ready"):
            _wait_flag(flag + "1")
        step(now, final=final)

    def paused_close_state() -> None:
        if exporter.state is not None:  # not the _open() before the state exists
            _wait_flag(flag + "2")
        close_state()

    exporter.step = paused_step  # type: ignore[method-assign]
    exporter.close_state = paused_close_state  # type: ignore[method-assign]


def test_worker_that_becomes_the_sender_in_its_exit_pass_takes_no_forwards(
    service: Service, tmp_path: Path
) -> None:
    """Recycled uWSGI workers exit together: B starts its exit while A is the sender,
    A leaves, and B takes the role in its own final pass. B must not take forwards it
    will never read: C's samples forwarded after B's last read stay with C (until C
    sends them itself) instead of dying in B's socket (seen as lost samples under uWSGI
    --max-requests, with 0 drops)."""
    flag = str(tmp_path / "pause")
    service.env["PAUSE_FIFO"] = flag
    a = service.worker()
    b = service.worker(setup=_pause_in_exit)
    c = service.worker()
    assert a.tick()["sender"] and not b.tick()["sender"] and not c.tick()["sender"]
    b.conn.send(("exit", None))  # A holds the role: B's exit goes on to its final pass
    service.wait(lambda: os.path.exists(flag + "1.ready"))
    assert a("exit")["sender"]  # A leaves
    a.proc.join(5)
    open(flag + "1.go", "w").close()  # B's final pass: B becomes the sender in it
    service.wait(lambda: os.path.exists(flag + "2.ready"))
    assert os.path.exists(flag + "2.ready")
    assert c.requests(range(1, 4)) == [1, 2, 3]
    c.tick()  # forwards them if B still takes forwards
    open(flag + "2.go", "w").close()
    assert b.conn.poll(10)
    assert b.conn.recv()["sender"], "B did not take the role in its final pass"
    b.proc.join(5)
    c.tick(final=True)
    service.wait(lambda: len(service.uris()) >= 3, 3)
    assert sorted(service.uris()) == ["/r/1", "/r/2", "/r/3"], (
        f"C's samples forwarded to a sender that had made its last pass were lost "
        f"(received {service.uris()})"
    )


def _fake_uwsgi_without_threads(agent: Agent) -> None:
    sys.modules["uwsgi"] = types.SimpleNamespace(has_threads=0)  # type: ignore[assignment]
    agent._autostart = True
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logging.getLogger("sflow_app").addHandler(Keep())
    agent.warnings = records  # type: ignore[attr-defined]


def _inline_info(agent: Agent) -> dict[str, Any]:
    return {
        "thread": agent.runner.thread is not None,
        "inline": agent.runner.inline,
        "warnings": [m for m in agent.warnings if "enable-threads" in m],  # type: ignore[attr-defined]
    }


def test_uwsgi_without_threads_warns_once_and_reports_inline(service: Service) -> None:
    """uWSGI without --enable-threads (``uwsgi.has_threads == 0``): no exporter thread,
    one warning, and the sampled path does the exporter's work at most once a second;
    what is left goes at exit."""
    w = service.worker(setup=_fake_uwsgi_without_threads)
    sampled: list[int] = []
    for k in range(15):
        sampled += w.requests(range(10 * k + 1, 10 * k + 11))
        time.sleep(0.1)
    info = w("call", _inline_info)
    assert info["thread"] is False and info["inline"] is True
    assert len(info["warnings"]) == 1, info["warnings"]
    service.wait(lambda: len(service.collector.received()) >= 1, 3)
    assert service.collector.received(), "nothing sent while serving"
    w.exit()
    service.wait(lambda: service.total() == 150 and len(service.uris()) == 150)
    assert service.total() == 150 and len(sampled) == 150
    service.check()


def _master_then_children(env: dict[str, str], conn: Connection, children: int) -> None:
    """A master that reads the config (as a preloaded app does), then forks workers that
    each report which of their first 40 requests were sampled."""
    agent = Agent(autostart=False, env=env)
    agent.reload()
    os.register_at_fork(after_in_child=agent.after_fork)
    source = agent.http_source()
    agent.set_http_port(PORT, "test")
    reports = []
    for _ in range(children):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            flags = bytes(int(request(source, "/x")) for _ in range(40))
            os.write(w, flags)
            os._exit(0)
        os.close(w)
        reports.append(os.read(r, 100))
        os.close(r)
        os.waitpid(pid, 0)
    conn.send(reports)


def test_children_do_not_inherit_the_masters_next_sample(tmp_path: Path, service: Service) -> None:
    """gunicorn --preload / uWSGI: the app (and its sampler) is built in the master, which
    reads the config and so draws its first skip there. Each child must draw its own:
    otherwise every worker samples the same ordinal of its life."""
    auto = write_auto(tmp_path / "ten.auto", service.collector.port, sampling=10)
    env = {**service.env, "SFLOW_APP_CONFIG": str(auto)}
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=_master_then_children, args=(env, child, 20))
    proc.start()
    assert parent.poll(30)
    reports = parent.recv()
    proc.join(5)
    firsts = [flags.index(1) if 1 in flags else None for flags in reports]
    seen = [f for f in firsts if f is not None]
    assert len(seen) >= 10  # P(no sample in 40 requests at 1-in-10) = 1.5 %, per child
    if len(set(seen)) == 1:
        raise InheritedSkip(
            f"all {len(seen)} children took their first sample at request {seen[0] + 1}: "
            f"the skip drawn in the master was inherited ({firsts})"
        )


def test_forwarding_keeps_up_with_a_busy_worker(service: Service) -> None:
    """One worker hands 100 samples to the sender in one tick (1-in-10 at 10,000 req/s
    for 0.1 s), then exits as a recycled worker does: all must reach the collector.

    Forwarded samples travel one per unix datagram, and a unix datagram socket queues at
    most ``net.unix.max_dgram_qlen`` messages (10 by default), whatever SO_RCVBUF says:
    the rest wait in the worker's backlog -- and are lost, uncounted, when it exits."""
    sender = service.worker()
    assert sender.tick()["sender"]
    busy = service.worker()
    assert len(busy.requests(range(1, 101))) == 100
    status = busy.exit()
    for _ in range(5):
        sender.tick()
        time.sleep(0.1)
    sender.tick(final=True)
    service.wait(lambda: len(service.uris()) == 100 and service.total() == 100, 3)
    got = len(service.uris())
    with open("/proc/sys/net/unix/max_dgram_qlen") as f:
        qlen = f.read().strip()
    assert got == 100, (
        f"{100 - got} of 100 samples lost (worker backlog at exit: {status['backlog']}, "
        f"drops reported: {service.http().flows[-1][1].drops if got else '-'}, "
        f"net.unix.max_dgram_qlen={qlen})"
    )
    assert service.total() == 100


def _pause_before_release(agent: Agent) -> None:
    """Make the exiting sender stop after its exit work, before it lets go of its state
    (and so of the sender lock), until the test lets it go on."""
    exporter = agent.exporter
    close_state = exporter.close_state

    def paused_close_state() -> None:
        if exporter.state is None:  # _open() before the state exists: not the exit
            close_state()
            return
        flag = agent.env["PAUSE_FIFO"]
        with open(flag + ".ready", "w"):
            pass
        end = time.monotonic() + 5
        while not os.path.exists(flag + ".go") and time.monotonic() < end:
            time.sleep(0.01)
        close_state()

    exporter.close_state = paused_close_state


def test_counts_of_a_worker_exiting_with_the_sender_arrive(tmp_path: Path, state_dir: str) -> None:
    """Recycled workers often exit together (the last requests of a run): B publishes its
    last counts after the exiting sender A polled for the last time. If no other worker
    ticks (fresh workers start nothing before their first request), B's counts must be
    sent by A or by B itself -- not wait for the next request. (1-in-100000: B has no
    sample to hand over, so only its counts are at stake.)"""
    service = Service(tmp_path, state_dir, sampling=100000)
    try:
        _exit_with_the_sender(service, tmp_path)
    finally:
        service.close()


def _exit_with_the_sender(service: Service, tmp_path: Path) -> None:
    flag = str(tmp_path / "pause")
    service.env["PAUSE_FIFO"] = flag
    a = service.worker(setup=_pause_before_release)
    b = service.worker()
    assert a.tick()["sender"] and not b.tick()["sender"]
    a.requests(range(1, 11))
    b.requests(range(11, 21))
    b.tick()
    a.conn.send(("exit", None))  # A does its exit work, then waits before releasing
    service.wait(lambda: os.path.exists(flag + ".ready"))
    assert os.path.exists(flag + ".ready")
    b.requests(range(21, 26))  # counted after A's last poll
    b.conn.send(("exit", None))
    time.sleep(0.1)
    open(flag + ".go", "w").close()
    assert a.conn.poll(10) and b.conn.poll(10)
    a.conn.recv()
    b.conn.recv()
    service.wait(lambda: service.total() == 25, 2)
    assert service.total() == 25, (
        "the last counts of a worker exiting with the sender were never sent"
    )
    service.check()


# -- the stream checks themselves can fail -------------------------------------------------


class _Stream:
    """A hand-made stream for prefork_check: N=100 requests 10 ms apart, 1-in-10, one
    datagram per 100 ms carrying that window's samples and the counters so far."""

    def __init__(self, lose: int = 0) -> None:
        nan = float("nan")
        n = 100
        ordinals = range(1, n + 1)
        self.load = Load(
            n=n,
            concurrency=1,
            sent=[nan] + [i * 0.01 for i in ordinals],
            done=[nan] + [i * 0.01 + 0.005 for i in ordinals],
            pid=[0] + [1] * n,
            sampled=[False] + [i % 10 == 5 for i in ordinals],
        )
        self.errors: list[str] = []
        self.datagrams: list[tuple[float, Datagram]] = []
        flow_seq = 0
        for k in range(11):
            t = 0.1 * k + 0.1
            samples: list[Any] = []
            for i in range(10 * k + 1, min(10 * k + 11, n + 1)):
                if self.load.sampled[i] and i != lose:  # lost before the sender numbers it
                    flow_seq += 1
                    samples.append(
                        FlowSample(
                            flow_seq,
                            3,
                            PORT,
                            10,
                            i,
                            0,
                            0,
                            0,
                            0,
                            0x3FFFFFFF,
                            (HttpRequest(method=2, uri=f"/r/{i}"),),
                        )
                    )
            done = min(10 * k + 10, n)
            samples.append(
                CountersSample(
                    k + 1, 3, PORT, (HttpCounters(method_get_count=done, status_2XX_count=done),)
                )
            )
            self.datagrams.append(
                (t, Datagram("127.0.0.1", PORT, k + 1, int(t * 1000), tuple(samples)))
            )

    def received(self) -> list[tuple[float, Datagram]]:
        return self.datagrams

    def change(self, k: int, **fields: Any) -> _Stream:
        t, dg = self.datagrams[k]
        self.datagrams[k] = (t, dataclasses.replace(dg, **fields))
        return self

    def change_sample(self, k: int, j: int, **fields: Any) -> _Stream:
        samples = list(self.datagrams[k][1].samples)
        samples[j] = dataclasses.replace(samples[j], **fields)  # type: ignore[type-var]
        return self.change(k, samples=tuple(samples))


def _counters(get: int) -> tuple[Any, ...]:
    return (HttpCounters(method_get_count=get, status_2XX_count=get),)


FAULTS = {  # fault: (how to make it, what the check must say)
    "datagram sequence gap": (
        lambda s: s.change(5, sequence_number=99),
        "datagram sequence numbers",
    ),
    "second sub_agent_id": (
        lambda s: s.change(3, sub_agent_id=PORT + 1),
        "several agent identities",
    ),
    "uptime going back": (lambda s: s.change(6, uptime_ms=1), "uptime went back"),
    "flow sequence gap": (
        lambda s: s.change_sample(2, 0, sequence_number=7),
        "flow sequence numbers",
    ),
    "counter sequence repeat": (
        lambda s: s.change_sample(4, -1, sequence_number=4),
        "counter sequence numbers",
    ),
    "counter going back": (
        lambda s: s.change_sample(7, -1, records=_counters(5)),
        "counters went back",
    ),
    "final total short": (
        lambda s: s.change_sample(9, -1, records=_counters(99)).change_sample(
            10, -1, records=_counters(99)
        ),
        "final total 99",
    ),
    "second data source": (
        lambda s: s.change_sample(8, -1, ds_index=PORT + 1),
        "several data sources",
    ),
    "pool above requests sent": (
        lambda s: s.change_sample(0, 0, sample_pool=50),
        "requests sent before its datagram arrived",
    ),
    "pool going back": (lambda s: s.change_sample(6, 0, sample_pool=3), "sample_pool went back"),
    "wrong sampling rate": (lambda s: s.change_sample(1, 0, sampling_rate=1), "sampling_rate"),
    "sampled request lost": (lambda s: s.__init__(lose=35), "never arrived"),
}


@pytest.mark.parametrize("fault", ["none", *FAULTS])
def test_stream_checks_catch_each_fault(fault: str) -> None:
    stream = _Stream()
    expects = [Expect("http", exact_samples=True)]
    if fault == "none":
        report = check_stream(stream, stream.load, expects, rate=10, sub_agent_id=PORT)  # type: ignore[arg-type]
        assert report.per_source["http"]["final_total"] == 100
        return
    make, says = FAULTS[fault]
    make(stream)
    with pytest.raises(AssertionError, match=says):
        check_stream(stream, stream.load, expects, rate=10, sub_agent_id=PORT)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["shared", "local"])
def test_sequence_numbers_taken_in_runs_step_by_one_and_wrap(kind: str, state_dir: str) -> None:
    """A datagram takes a run of one source's numbers at once (next_seq's count): the
    numbers go on from the last taken, by one, and wrap at 2**32 as single ones do."""
    from sflow_app._layout import E_FLOW_SEQ
    from sflow_app._local import LocalState
    from sflow_app._shared import SharedState

    state: Any = SharedState.open(state_dir, "seqs") if kind == "shared" else LocalState(None)
    try:
        index = state.source_index("http", "", 8000)
        assert index is not None
        assert state.next_seq(index, E_FLOW_SEQ, 0) == 1  # the next one, not taken
        assert state.next_seq(index, E_FLOW_SEQ) == 1
        assert state.next_seq(index, E_FLOW_SEQ, 3) == 2  # 2, 3, 4
        assert state.next_seq(index, E_FLOW_SEQ) == 5
        state.next_seq(index, E_FLOW_SEQ, 2**32 - 7)  # the last taken: 2**32 - 2
        assert state.next_seq(index, E_FLOW_SEQ, 3) == 2**32 - 1  # 2**32 - 1, 0, 1
        assert state.next_seq(index, E_FLOW_SEQ) == 2
    finally:
        getattr(state, "close", lambda: None)()

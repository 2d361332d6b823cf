"""The exporter under a busy request thread (issue 15): its sends do not hand the GIL to
that thread, and a burst beyond the queue's capacity is fully accounted for, as samples
delivered plus samples counted in ``drops``. Counts, never timings."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import Collector, wait_until

from sflow_app._agent import Agent
from sflow_app._send import Senders


@pytest.fixture
def long_switch() -> Iterator[None]:
    """No forced GIL switch during the test (a thread runs until it lets the GIL go)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    yield
    sys.setswitchinterval(interval)


def test_sends_keep_the_gil(collector: Collector, long_switch: None) -> None:
    """A busy thread waiting for the GIL never gets it from a send: with the GIL let go
    at each send, such a thread took it and the exporter waited a whole switch interval
    (5 ms by default) to have it back, for every datagram."""
    senders = Senders(lambda message: None, time.monotonic)
    target = [("127.0.0.1", collector.port)]
    stats = Agent(autostart=False).stats  # a fresh agent's counts
    sending = False
    ran_during_sends = 0
    stop = False
    ready = threading.Event()

    def busy() -> None:
        nonlocal ran_during_sends
        ready.set()
        while not stop:
            if sending:
                ran_during_sends += 1
            time.sleep(0)  # lets the GIL go at once: the sender never waits long for it

    senders.send(target, b"first", stats)  # the socket, and how it sends, chosen
    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        sending = True
        for _ in range(1000):
            senders.send(target, b"x" * 1400, stats)
        sending = False
    finally:
        stop = True
        thread.join(10)
        senders.close()
    assert stats["sent"] == 1001
    assert ran_during_sends == 0


def test_burst_beyond_the_queue_is_fully_accounted(agent, collector: Collector) -> None:
    """A request thread in a tight loop at 1-in-1 with a small queue: every sample is
    delivered or counted in ``drops``, none is lost uncounted."""
    from sflow_app.wsgi import SFlowMiddleware

    collector.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    ag = agent(sampling=1, polling=0)
    ag.configure(queue_capacity=64, max_samples=0, ds_index=8000)
    wrapped = SFlowMiddleware(lambda e, s: (s("200 OK", []), [b"ok"])[1])
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/burst",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }
    issued = 3000

    def start_response(*args: Any) -> Any:
        return None

    def burst() -> None:
        for _ in range(issued):
            result: Any = wrapped(dict(environ), start_response)
            for _chunk in result:
                pass
            result.close()

    thread = threading.Thread(target=burst)
    thread.start()
    source = ag.http_source()

    def delivered() -> int:
        collector.poll(0.05)
        return len(collector.flow_samples())

    try:
        assert wait_until(lambda: not thread.is_alive() and delivered() + source.drops >= issued)
    finally:
        thread.join(30)
    collector.poll(0.3)  # nothing more arrives
    assert source.sampler.sample_pool == issued
    assert len(collector.flow_samples()) + source.drops == issued
    assert ag.status()["queue_drops"] == source.drops

"""Helpers shared by the WSGI-surface tests (test_wsgi, test_transaction, test_flask,
test_django): an agent without its exporter thread, flushed by hand, and views over the
collector's decoded datagrams."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

from helpers import wait_until
from werkzeug.serving import make_server
from werkzeug.wsgi import ClosingIterator

from sflow_app._agent import AGENT
from sflow_app._counters import read_count
from sflow_app.records import HttpCounters, HttpRequest

ZERO_COUNTERS = {f.name: 0 for f in dataclasses.fields(HttpCounters)}


def reset_agent(**init) -> None:
    AGENT.reset(**init)


def live_agent(auto_file, **kwargs):
    """The agent following a fresh hsflowd.auto, without its exporter thread: tests
    call ``flush`` so every datagram is deterministic."""
    reset_agent(autostart=False)
    auto_file(**kwargs)
    AGENT.reload()
    return AGENT


def flush(collector, timeout: float = 2.0) -> None:
    """One final exporter pass (samples + counters), then receive what it sent."""
    before = len(collector.datagrams)
    AGENT.tick(time.monotonic(), final=True)
    collector.wait_for(lambda c: len(c.datagrams) > before, timeout)
    collector.poll(0.05)


def http_counters(collector) -> dict[str, int]:
    found = collector.latest_counters(HttpCounters)
    assert found is not None, "no http_counters received"
    return {k: getattr(found, k) for k in ZERO_COUNTERS}


def expect(**nonzero: int) -> dict[str, int]:
    return {**ZERO_COUNTERS, **nonzero}


def http_samples(collector) -> list:
    return [
        s for s in collector.flow_samples() if any(isinstance(r, HttpRequest) for r in s.records)
    ]


def other_samples(collector) -> list:
    return [
        s
        for s in collector.flow_samples()
        if not any(isinstance(r, HttpRequest) for r in s.records)
    ]


def record(sample: Any, cls: type) -> Any:
    found = [r for r in sample.records if isinstance(r, cls)]
    return found[0] if found else None


@contextlib.contextmanager
def serve(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Werkzeug's threaded server on `host` (ephemeral port), in a thread. On exit it
    waits until every response was closed by the server: our sample of a request is
    taken at close(), which may come after the client has the last byte."""
    open_responses = itertools.count()
    closed_responses = itertools.count()

    def closed() -> None:
        next(closed_responses)

    def app_then_close(environ, start_response):
        next(open_responses)
        try:
            result = app(environ, start_response)
        except BaseException:
            closed()
            raise
        return ClosingIterator(result, closed)

    server = make_server(host, 0, app_then_close, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{server.server_port}"
        wait_until(lambda: read_count(closed_responses) == read_count(open_responses))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

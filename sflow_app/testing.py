"""Assert on what sflow_app would send, in your own tests.

::

    from sflow_app.records import HttpRequest
    from sflow_app.testing import capture

    def test_checkout_is_sampled(client):
        with capture() as cap:
            client.get("/checkout?token=abc")
        [req] = cap.records(HttpRequest)
        assert req.uri == "/checkout?token=REDACTED"

or, with pytest, the ``sflow_capture`` fixture (installed with the package)::

    def test_checkout(client, sflow_capture):
        client.get("/checkout")
        assert sflow_capture.records(HttpRequest)

Inside ``capture()`` every data source samples 1-in-1 and the agent hands each sampled
transaction to the capture instead of the network: nothing is sent, with or without
hsflowd, a listening port, or ``SFLOW_APP_DISABLE``. Samples go through the real encoder
and :func:`sflow_app.decode.decode`, so they read as a collector would see them (strings
are ``str``, or ``bytes`` where not valid UTF-8). Redaction and exclusions apply as in
production. A WSGI response the test never closed (``resp = client.get(...)`` with
Flask's or Werkzeug's test client) is recorded when the block exits, timed to then.

When the block exits, ``samples`` also holds one counter sample per data source with
what was counted inside the block (gauges such as open memcache connections: their value
then). What the block counted is then taken out of the agent's counters and sample pools,
so it never reaches a collector later either. :func:`reset` puts the process-wide agent
back as it was at import.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ._encode import (
    encode_counters_sample,
    encode_datagram_header,
    encode_fitted_flow_sample,
)
from .decode import decode
from .records import DS_CLASS_LOGICAL, CountersSample, FlowSample

if TYPE_CHECKING:
    from ._agent import Agent
    from ._source import Source

__all__ = ["Capture", "capture", "reset"]

R = TypeVar("R")
DATAGRAM = 1400  # the default datagram size: records are fitted to it as in production
HEADER_MAX = 40


class Capture:
    """What the agent sampled and counted inside one ``capture()`` block."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._open: list[Any] = []  # sampled WSGI transactions not finished yet
        self._start: dict[int, tuple[list[int], int]] = {}
        self.samples: list[FlowSample | CountersSample] = []

    def records(self, cls: type[R]) -> list[R]:
        """The flow records of one type, in the order their samples were taken."""
        return [
            r
            for s in self.samples
            if isinstance(s, FlowSample)
            for r in s.records
            if isinstance(r, cls)
        ]

    # -- called by the agent and the surfaces ------------------------------------------
    def add(self, source: Source, pool: int, rate: int, records: Any) -> None:
        from ._source import built_records

        built = built_records(records)
        if built is None:
            source.drop()
            return
        inp, out = source.direction
        sample = FlowSample(
            sequence_number=next(self._seq),
            ds_class=DS_CLASS_LOGICAL,
            ds_index=source.ds_index or 0,
            sampling_rate=rate,
            sample_pool=pool & 0xFFFFFFFF,
            drops=0,
            input_format=0,
            input_value=inp,
            output_format=0,
            output_value=out,
            records=built,
        )
        data = encode_fitted_flow_sample(sample, DATAGRAM - HEADER_MAX)
        if data is None:
            source.drop()
            return
        self._append(data)

    def track(self, transaction: Any) -> None:
        """A sampled WSGI transaction: finished at the block's end if the server (or test
        client) never closed its response."""
        with self._lock:
            self._open.append(transaction)

    def _append(self, encoded: bytes) -> None:
        header = encode_datagram_header("127.0.0.1", 0, 1, 0, 1)
        [decoded] = decode(header + encoded).samples
        assert isinstance(decoded, FlowSample | CountersSample)
        with self._lock:
            self.samples.append(decoded)

    def _begin(self) -> None:
        for source in self._agent.sources():
            start = list(source.counters.snapshot()), source.sampler.sample_pool
            self._start[id(source)] = start

    def _end(self) -> None:
        with self._lock:
            still_open, self._open = self._open, []
        for transaction in still_open:
            transaction.finish()  # idempotent: a closed one is already recorded
        self._count()

    def _count(self) -> None:
        from ._source import counter_records, gauge_positions

        parent = self._agent.settings.parent_ds_index
        for source in self._agent.sources():
            values = list(source.counters.snapshot())
            start, pool = self._start.get(id(source), ([0] * len(values), 0))
            gauges = set(gauge_positions(source.kind))
            for i, base in enumerate(start):
                values[i] = 0 if i in gauges else values[i] - base
            # Counted here, so never sent later: out of the agent's totals.
            source.counters.discount(values)
            source.sampler.discount(source.sampler.sample_pool - pool)
            for position, current in source.gauges.items():
                with contextlib.suppress(Exception):
                    values[position] = max(0, int(current()))
            sample = CountersSample(
                sequence_number=next(self._seq),
                ds_class=DS_CLASS_LOGICAL,
                ds_index=source.ds_index or 0,
                records=counter_records(
                    source.kind, source.name, values, parent, self._agent.service_name
                ),
            )
            header = encode_datagram_header("127.0.0.1", 0, 1, 0, 1)
            [decoded] = decode(header + encode_counters_sample(sample)).samples
            assert isinstance(decoded, CountersSample)
            with self._lock:
                self.samples.append(decoded)


@contextlib.contextmanager
def capture() -> Iterator[Capture]:
    """Sample everything 1-in-1 into a :class:`Capture` instead of the network."""
    from ._agent import AGENT

    cap = Capture(AGENT)
    AGENT.begin_capture(cap)
    try:
        cap._begin()
        yield cap
    finally:
        try:
            cap._end()
        finally:
            AGENT.end_capture(cap)


def reset() -> None:
    """Put the process-wide agent back as it was at import: its thread stopped, what it
    holds flushed (within a bounded time) and closed, settings read again at next use.

    What was built before (middlewares, ``@transaction`` functions, instrumented memcache
    clients) reports to the fresh agent from its next request, call or operation."""
    from ._agent import AGENT

    AGENT.reset()

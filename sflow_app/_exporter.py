"""The sender: drains sampled records, polls counters, packs and sends datagrams.

``step(now)`` is one pass and takes the clock as an argument, so tests drive it with an
injected clock; the background thread just calls it every ``TICK`` seconds. Sequence
numbers and uptime are assigned here, at encode time, never in request threads.
"""

from __future__ import annotations

import logging
import random
import socket
from typing import TYPE_CHECKING, Any

from ._encode import (
    encode_counters_sample,
    encode_datagram_header,
    encode_flow_sample,
    fit_flow_sample,
)
from .records import DS_CLASS_LOGICAL, CountersSample, FlowSample

if TYPE_CHECKING:
    from ._agent import Agent
    from ._source import Source

log = logging.getLogger("sflow_app")

TICK = 0.1
FLUSH_AFTER = 1.0  # a partial datagram leaves within about a second
HEADER_MAX = 40  # IPv6 agent header
HOLD_MAX = 1024  # samples kept while the service's identity is not known yet


class Exporter:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._parts: list[bytes] = []
        self._size = 0
        self._since = 0.0
        self._held: list[tuple[Any, ...]] = []
        self._socks: dict[int, socket.socket] = {}
        self.datagram_seq = 0

    # -- one pass ---------------------------------------------------------------------
    def step(self, now: float, *, final: bool = False) -> None:
        agent = self.agent
        settings = agent.settings
        items = agent.drain()
        if not settings.enabled:
            self._held.clear()
            self._parts.clear()
            self._size = 0
            return
        ident = agent.identity()
        if ident is None:
            # Samples wait (bounded) for the service's identity; counters are not due yet.
            room = HOLD_MAX - len(self._held)
            if len(items) > room:
                for item in items[room:]:
                    item[0].drop()
                items = items[:room]
            self._held.extend(items)
            return
        if self._held:
            items = self._held + items
            self._held = []
        for item in items:
            self._add_flow(item, now)
        for source in agent.sources():
            self._poll(source, now, final)
        if self._parts and (final or now - self._since >= FLUSH_AFTER):
            self.flush(now)

    # -- samples ----------------------------------------------------------------------
    def _add_flow(self, item: tuple[Any, ...], now: float) -> None:
        source, pool, rate, records = item
        source.flow_seq += 1
        inp, out = source.direction
        sample = FlowSample(
            sequence_number=source.flow_seq & 0xFFFFFFFF,
            ds_class=DS_CLASS_LOGICAL,
            ds_index=source.ds_index,
            sampling_rate=rate,
            sample_pool=pool & 0xFFFFFFFF,
            drops=source.drops & 0xFFFFFFFF,
            input_format=0,
            input_value=inp,
            output_format=0,
            output_value=out,
            records=tuple(records),
        )
        limit = self.agent.settings.datagram - HEADER_MAX
        fitted = fit_flow_sample(sample, limit)
        if fitted is None:
            source.flow_seq -= 1
            source.drop()
            return
        self._append(encode_flow_sample(fitted), now)

    def _poll(self, source: Source, now: float, final: bool) -> None:
        interval = self.agent.settings.polling_for(source.app_key)
        if interval <= 0 or source.ds_index is None:
            return
        if source.next_poll is None:
            # First poll at a random offset so hosts and workers do not synchronise.
            source.next_poll = now + random.uniform(0, interval)
        if not final and now < source.next_poll:
            return
        source.next_poll = max(source.next_poll + interval, now)
        source.counter_seq += 1
        sample = CountersSample(
            sequence_number=source.counter_seq & 0xFFFFFFFF,
            ds_class=DS_CLASS_LOGICAL,
            ds_index=source.ds_index,
            records=tuple(source.counter_records(source.counters.snapshot())),
        )
        self._append(encode_counters_sample(sample), now)

    def _append(self, data: bytes, now: float) -> None:
        limit = self.agent.settings.datagram - HEADER_MAX
        if self._parts and self._size + len(data) > limit:
            self.flush(now)
        if not self._parts:
            self._since = now
        self._parts.append(data)
        self._size += len(data)

    # -- datagrams --------------------------------------------------------------------
    def flush(self, now: float) -> None:
        if not self._parts:
            return
        agent = self.agent
        ident = agent.identity()
        parts, self._parts, self._size = self._parts, [], 0
        if ident is None:
            return
        agent_ip, sub_agent_id = ident
        self.datagram_seq += 1
        header = encode_datagram_header(
            agent_ip, sub_agent_id, self.datagram_seq & 0xFFFFFFFF,
            agent.uptime_ms(now), len(parts),
        )
        payload = header + b"".join(parts)
        stats = agent.stats
        stats["datagrams"] += 1
        stats["samples"] += len(parts)
        for host, port in agent.settings.collectors:
            try:
                self._socket(host).sendto(payload, (host, port))
                stats["sent"] += 1
            except OSError as exc:  # collector down, unreachable, bad address: never raised
                stats["send_errors"] += 1
                agent.note_send_error(host, port, exc)

    def _socket(self, host: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self._socks.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._socks[family] = sock
        return sock

    def close(self) -> None:
        for sock in self._socks.values():
            try:
                sock.close()
            except OSError:
                pass
        self._socks.clear()

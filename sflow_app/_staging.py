"""The sender's side of the exporter: stage flow samples (their sample_pool and drops),
poll counters into counter samples, pack and number datagrams.

Mixed into ``Exporter`` (kept apart so each module stays small).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ._encode import encode_counters_sample, encode_datagram_header
from ._layout import DROPS, E_COUNTER_SEQ, E_FLOW_SEQ
from ._local import State
from ._runtime import mem_max
from ._send import Senders
from ._sender import POOL_ONLY
from ._source import SOURCE_KINDS, counter_records, counts_digest, gauge_positions
from .records import DS_CLASS_LOGICAL, CountersSample

if TYPE_CHECKING:
    import random

    from ._config import Settings
    from ._source import Source
    from ._status import Stats


class Host(Protocol):
    """What the exporter needs of its agent, and all it uses: the settings, identity and
    data sources to report, and its log. (The queue it drains and the counts it keeps
    are given to it apart: they are its process's, made anew in a forked child.)"""

    settings: Settings

    @property
    def env(self) -> Mapping[str, str]: ...

    @property
    def service_name(self) -> str: ...

    def identity(self) -> tuple[str, int] | None: ...

    def http_index(self) -> int | None: ...

    def sources(self) -> list[Source]: ...

    def warn_once(self, message: str) -> None: ...

    def warn_service(self, message: str) -> None:
        """A configuration mistake alike in every process: once for the service."""


HEADER_MAX = 40  # IPv6 agent header
# Offsets of (sequence_number, sample_pool, drops) in an encoded flow sample, by format.
FLOW_OFFSETS = {1: (8, 20, 24), 3: (8, 24, 28)}
# Where sample_pool is, by format: drops follows it (one pack_into writes both).
POOL_AT = {fmt: pool for fmt, (_, pool, drops) in FLOW_OFFSETS.items() if drops == pool + 4}
U32 = struct.Struct(">I")
PAIR = struct.Struct(">II")
SEQ_AT = 8  # sequence_number, in every sample format
SEQ_WORD = {True: E_FLOW_SEQ, False: E_COUNTER_SEQ}  # where a source's numbers are, by kind
HEAD_END = struct.Struct(">III")  # a datagram header's sequence_number, uptime, num_samples
MASK = 0xFFFFFFFF


def unstaged(pending: Iterable[tuple[int, bool, bytes | bytearray]]) -> list[tuple[int, bytes]]:
    """Staged flow samples handed back (their sender was replaced) as they are
    forwarded: their pool steps are in the service's pool already, so they carry none
    (the next sender stages them at the pool as it stands: sample_pool stays exact, the
    candidates counted, and does not go back)."""
    out = []
    for index, is_flow, data in pending:
        at = POOL_AT.get(U32.unpack_from(data)[0]) if is_flow else None
        if at is not None:
            buf = bytearray(data)
            PAIR.pack_into(buf, at, 0, 0)
            out.append((index, bytes(buf)))
    return out


class Staging:
    agent: Host
    stats: Stats
    state: State | None
    senders: Senders
    _pending: list[tuple[int, bool, bytes | bytearray]]
    _head: tuple[tuple[str, int] | None, bytes]  # (identity, its datagram header's start)
    _size: int
    _since: float
    _next_poll: dict[int, float]
    rng: random.Random
    _backlog: Any
    _polling: dict[str, Any]  # app key -> interval; "" -> the settings they are of

    def identity(self) -> tuple[str, int] | None:
        raise NotImplementedError

    def _polling_for(self, app_key: str) -> int:
        """The settings' polling interval for ``app_key``, worked out once per settings
        (each pass asks for every source; an idle pass should cost next to nothing)."""
        settings = self.agent.settings
        cache = self._polling
        if cache.get("") is not settings:
            cache.clear()
            cache[""] = settings
        interval = cache.get(app_key)
        if interval is None:
            interval = cache[app_key] = settings.polling_for(app_key)
        return int(interval)

    def _stage_flows(
        self,
        state: State,
        totals: dict[int, list[int]],
        incoming: Iterable[tuple[int, bytes]],
        now: float,
    ) -> None:
        """Stage encoded flow samples (and pool-only messages) in order: the loop of a
        busy pass, so it calls nothing per sample that it can do inline."""
        add_pool = state.add_pool
        pool_only = POOL_ONLY.size
        limit = self.agent.settings.datagram - HEADER_MAX
        for index, data in incoming:
            if len(data) == pool_only:  # an exiting worker's last pool increment
                add_pool(index, POOL_ONLY.unpack(data)[0])
                continue
            at = POOL_AT.get(U32.unpack_from(data)[0])
            if at is None:
                continue
            total = totals.get(index)
            if total is None:
                total = totals[index] = state.totals(index)
            buf = bytearray(data)
            # The sample carries its worker's pool increment; staged in order, the
            # service's pool is the running sum, increasing with the sequence numbers
            # (by at least 1 a sample, but 0 for one handed back: see unstaged).
            step = U32.unpack_from(buf, at)[0]
            PAIR.pack_into(buf, at, add_pool(index, step) & MASK, total[DROPS] & MASK)
            # _append, inlined: this loop runs once per sample (a call each cost ~5 %)
            if self._pending and self._size + len(buf) > limit:
                self.flush()
            if not self._pending:
                self._since = now
            self._pending.append((index, True, buf))
            self._size += len(buf)

    def _poll(self, state: State, totals: dict[int, list[int]], now: float, final: bool) -> None:
        settings = self.agent.settings
        parent = settings.parent_ds_index
        for index, kind, name, ds_index in state.entries():
            interval = self._polling_for(SOURCE_KINDS[kind].key_for(name))
            if interval <= 0:
                continue
            due = self._next_poll.get(index)
            if due is None or due - now > interval:
                # First poll at a random offset so hosts and workers do not synchronise;
                # again when the interval got shorter (polling=300 -> 20 waited 300 s).
                due = self._next_poll[index] = now + self.rng.uniform(0, interval)
            if not final and now < due:
                continue
            self._next_poll[index] = max(due + interval, now)
            gauges = gauge_positions(kind)
            if gauges or index not in totals:  # gauges: live workers only
                totals[index] = state.totals(index, gauges)
            names = SOURCE_KINDS[kind].counter_names
            counts = totals[index][: len(names)]
            digest = counts_digest(counts)
            if not state.counts_changed(index, digest) and final:
                continue  # an exiting worker adds nothing to the last counter sample sent
            runtime = None
            if kind == "http":
                runtime = [*state.runtime_totals(), mem_max()]
            records = counter_records(kind, name, counts, parent, self.agent.service_name, runtime)
            sample = CountersSample(
                sequence_number=0, ds_class=DS_CLASS_LOGICAL, ds_index=ds_index, records=records
            )
            self._append_counters(index, bytearray(encode_counters_sample(sample)), now)

    def _append_counters(self, index: int, buf: bytearray, now: float) -> None:
        """A counter sample of this source still waits (polled within the flush delay):
        it leaves first, in its own datagram -- never twice in one, none skipped."""
        if any(waiting == index and not is_flow for waiting, is_flow, _ in self._pending):
            self.flush()
        self._append(index, False, buf, now)

    def _append(self, index: int, is_flow: bool, buf: bytes | bytearray, now: float) -> None:
        limit = self.agent.settings.datagram - HEADER_MAX
        if self._pending and self._size + len(buf) > limit:
            self.flush()
        if not self._pending:
            self._since = now
        self._pending.append((index, is_flow, buf))
        self._size += len(buf)

    # -- datagrams --------------------------------------------------------------------
    def flush(self) -> None:
        """Number and send the pending samples as one datagram (sender only)."""
        state = self.state
        pending, self._pending, self._size = self._pending, [], 0
        ident = self.identity()
        if not pending or state is None or ident is None:
            return
        if not state.still_sender():  # replaced while stopped: the new sender sends them
            self._backlog.extend(unstaged(pending))
            return
        head = self._head
        if head[0] != ident:  # the header's start: version, agent address, sub-agent
            head = self._head = (ident, encode_datagram_header(*ident, 0, 0, 0)[: -HEAD_END.size])
        header = head[1] + HEAD_END.pack(state.next_datagram_seq(), state.uptime_ms(), len(pending))
        payload = bytearray().join([header, *[buf for _, _, buf in pending]])
        # Sequence numbers are taken only now, for samples really sent, so they step by
        # one: each run of samples of one source and kind takes its numbers when it ends.
        pack_into = U32.pack_into
        at = len(header) + SEQ_AT
        run_index, run_flow, first, seq = -1, False, 0, 0
        for index, is_flow, buf in pending:
            if index != run_index or is_flow is not run_flow:
                if run_index >= 0:
                    state.next_seq(run_index, SEQ_WORD[run_flow], seq - first)
                run_index, run_flow = index, is_flow
                first = seq = state.next_seq(index, SEQ_WORD[is_flow], 0)  # the next one
            pack_into(payload, at, seq & MASK)
            seq += 1
            at += len(buf)
        state.next_seq(run_index, SEQ_WORD[run_flow], seq - first)
        stats = self.stats
        stats["datagrams"] += 1
        stats["samples"] += len(pending)
        self.senders.send(self.agent.settings.collectors, bytes(payload), stats)

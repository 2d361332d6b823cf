"""The exporter: publishes counters, forwards or sends samples, polls, packs datagrams.

``step(now)`` is one pass and takes the clock as an argument, so tests drive it with an
injected clock; the background thread calls it every ``TICK`` seconds. Every process
publishes its counters into the service's shared state each pass; the one process that
holds the sender role (see ``_sender``) assigns sequence numbers and uptime when it
sends, sums counters over all workers and sends to the collectors. The others forward
their encoded samples to it.
"""

from __future__ import annotations

import logging
import operator
import os
import random
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._encode import FLOW_HEAD, encode_fitted_flow_sample, flow_source_words
from ._layout import DROPS
from ._local import LocalState, State
from ._runtime import RuntimeCollector
from ._send import Senders
from ._sender import FORWARD_MAX, MSG, POOL_ONLY
from ._shared import SharedState, service_key, state_dir
from ._sidecar import Sidecars
from ._source import HTTP_METHODS, HTTP_STATUSES, Deferred, built_records, gauge_positions
from ._staging import HEADER_MAX, MASK, Host, Staging, unstaged
from .records import DS_CLASS_LOGICAL, FlowSample

if TYPE_CHECKING:
    from ._source import Source
    from ._status import Stats

log = logging.getLogger("sflow_app")
__all__ = ["FLUSH_AFTER", "TICK", "Exporter"]

TICK = 0.1
FLUSH_AFTER = 1.0  # a partial datagram leaves within about a second
HOLD_MAX = 1024  # samples kept while the service's identity is not known yet
BACKLOG_MAX = 4096  # encoded samples waiting for a sender
EXIT_WAIT = 0.5  # s: how long an exiting worker waits for a sender to take its samples
EXIT_LOCK_WAIT = 2.0  # s: how long the exit flush waits for a pass the thread is in
_CANDIDATE = operator.itemgetter(1)  # a queued sample's candidate number
# The automatic fallback's sub-agents: one per process, at random in this range, far
# from ports (1-65535) and locally assigned indexes (65536-99999).
FALLBACK_SUB_AGENTS = (1 << 24, 1 << 31)


class Exporter(Staging):
    def __init__(
        self, agent: Host, drain: Callable[[], list[tuple[Any, ...]]], stats: Stats
    ) -> None:
        self.agent = agent
        self.drain = drain  # the queue's (the runner's): what request threads sampled
        self.stats = stats  # the counts it keeps (the runner counts its queue's drops there)
        self.state: State | None = None
        self._key: str | None = None
        self._key_parts: tuple[object, ...] = ()  # what _key was worked out from, and where
        self._indexes: dict[int, int] = {}  # id(source) -> state table index
        self._held: list[tuple[Any, ...]] = []
        self._backlog: deque[tuple[int, bytes]] = deque()
        self._pending: list[tuple[int, bool, bytes | bytearray]] = []  # (index, is_flow, sample)
        self._size = 0
        self._since = 0.0
        self._head: tuple[tuple[str, int] | None, bytes] = (None, b"")
        self._next_poll: dict[int, float] = {}
        self._polling: dict[str, Any] = {}
        # Its own generator (made after any fork): the random module's shared one is the
        # application's, whose seeded stream must not move when the agent draws.
        self.rng = random.Random()
        self.senders = Senders(agent.warn_once, time.monotonic)
        self._socks = self.senders.socks  # one connected socket per collector
        self._fwd: socket.socket | None = None
        self._sidecars: Sidecars | None = None  # what `sflow-app status` reads
        self._sidecars_done: dict[str, tuple[dict[str, Any], dict[str, int]]] = {}
        self._shown: tuple[Any, ...] | None = None  # what the sidecars were last given
        # One pass at a time: the exit flush must not run beside a pass the thread has
        # half done (samples it drained or took off the socket would go with it).
        self._lock = threading.RLock()
        # Counts this process published, per source: the last ones (cumulative since
        # start), and per shared file, what earlier openings of it already hold, so a
        # process that closes its state and opens it again publishes nothing twice.
        self._last: dict[int, tuple[list[int], int, int]] = {}
        # Per source, (pool, drops) at a publish with nothing in flight (see _publish).
        self._settled: dict[int, tuple[int, int]] = {}
        self._offsets: dict[str, dict[int, tuple[list[int], int, int]]] = {}
        self._offset: dict[int, tuple[list[int], int, int]] = {}
        # Per source, this process's pool as far as its samples (or a final hand-over)
        # carried it: each sample carries the increment since (see _encode).
        self._pool_carried: dict[int, int] = {}
        self.runtime = RuntimeCollector()
        # Set by the thread's sleep when it ended with nothing readable on the socket the
        # workers forward to: the next pass does not ask it again (an idle pass).
        self.quiet = False

    # -- one pass ---------------------------------------------------------------------
    def step(self, now: float, *, final: bool = False) -> None:
        with self._lock:
            self._step(now, final)

    def _step(self, now: float, final: bool) -> None:
        agent = self.agent
        items = self.drain()
        if not agent.settings.enabled:
            self._held.clear()
            self._pending.clear()
            self._size = 0
            return
        ident = agent.identity()
        if ident is None:
            self._hold(items)  # samples wait (bounded) for the service's identity
            return
        state = self._open(ident)
        if self._held:
            items, self._held = self._held + items, []
        items.sort(key=_CANDIDATE)  # candidate order: increments stay positive
        sources = agent.sources()
        try:
            for source in sources:
                self._publish(state, source)
        except OSError as exc:  # the file cannot grow (a full tmpfs): report alone
            state = self._fall_back(f"the shared state cannot grow ({exc})")
            for source in sources:
                self._publish(state, source)
        self._publish_runtime(state, sources, now, final)
        if not state.try_become_sender():
            encoded = self._encode_all(state, items, None, now)
            if final:  # what this process pooled since its last sample, carried by no sample
                encoded += self._pool_remainders(state, sources)
            if self._pending:  # staged while it was the sender, then replaced
                self._backlog.extend(unstaged(self._pending))
                self._pending, self._size = [], 0
            self._forward(state, encoded)
            self._status_files(state, final)
            return
        if final:  # its last read is below: a forward that came after it would be lost
            state.stop_listening()
        self.senders.prepare()
        totals: dict[int, list[int]] = {}
        # quiet: the thread's sleep just found nothing on the socket (see Runner._sleep).
        received = [] if self.quiet and not final else state.receive()
        self.quiet = False
        if state.shared:  # a stand-alone process keeps what an earlier shared one counted
            state.touch()
            self.stats["bad_forwards"] = state.bad_forwards
        if self._backlog:  # its own, held while it was not the sender: they go first
            backlog = list(self._backlog)
            self._backlog.clear()
            self._stage_flows(state, totals, backlog, now)
        self._encode_all(state, items, totals, now)
        if final:
            self._stage_flows(state, totals, self._pool_remainders(state, sources), now)
        if received:
            self._stage_flows(state, totals, received, now)
        self._poll(state, totals, now, final)
        if self._pending and (final or now - self._since >= FLUSH_AFTER):
            self.flush()
        self._status_files(state, final)

    def _status_files(self, state: State, final: bool) -> None:
        """Publish what only this process knows for `sflow-app status` (see _sidecar)."""
        sidecars = self._sidecars
        if sidecars is None or not state.shared or not sidecars.due(final):
            return
        agent = self.agent
        stats = self.stats
        sources = agent.sources()
        shown = (
            state.generation if state.sender else None,
            state.slot,
            agent.settings,  # a new object whenever the settings (the name among them) change
            [source.sampler.rate for source in sources],
            list(self.senders.health),  # the collectors sent to (each with its errors)
            stats["send_errors"],
            state.bad_forwards,
            [stats["queue_drops"], stats["backlog_drops"]],  # DROP_CAUSES
        )
        if shown == self._shown and not final:
            return  # what the files would show is what they show (an idle pass)
        self._shown = shown
        rates = {}
        for source in sources:
            index = self._indexes.get(id(source))
            if index is not None:
                rates[index] = source.sampler.rate
        sidecars.update(
            sender=shown[0],
            slot=state.slot,
            name=agent.service_name,
            rates=rates,
            errors=self.senders.errors(),
            bad_forwards=state.bad_forwards,
            stats=stats,
            force=final,
        )

    def _hold(self, items: list[tuple[Any, ...]]) -> None:
        room = HOLD_MAX - len(self._held)
        for item in items[max(room, 0) :]:
            item[0].drop()
        self._held.extend(items[: max(room, 0)])

    # -- shared state -----------------------------------------------------------------
    def _open(self, ident: tuple[str, int]) -> State:
        agent = self.agent
        settings = agent.settings
        parts: tuple[object, ...] = (os.getuid(), agent.service_name, agent.http_index())
        parts += (settings.ds_index, settings.sub_agent_id)
        # Where the state lives is no part of the key, but a change of it (configure()
        # after the first pass) must reopen it there: it was ignored.
        where = (settings.shared, settings.state_dir)
        if self.state is not None and (parts, where) == self._key_parts:
            return self.state  # each pass: no hashing of the same parts again
        key = service_key(*parts)
        same_place = self._key_parts[1:] == (where,)
        self._key_parts = (parts, where)
        if self.state is not None and key == self._key and same_place:
            return self.state
        self.close_state()
        self._key = key
        self._sidecars, self._shown = None, None
        state: State
        if not settings.shared:
            state = LocalState()  # the operator says: this process is the whole service
        else:
            try:
                shared = SharedState.open(
                    state_dir(settings.state_dir), key, runtime_dir=agent.env.get("XDG_RUNTIME_DIR")
                )
            except OSError as exc:
                return self._fall_back(f"shared state unavailable ({exc})")
            self._check_shared(shared, ident)
            # As for the counters: what an earlier opening of this file already holds.
            stats, errors = self._sidecars_done.get(key, ({}, {}))
            base = shared.name[: -len(".state")]
            self._sidecars = Sidecars(base, shared.private.fd, stats, errors)
            state = shared
        self._offset = self._offsets.get(key, {}) if state.shared else {}
        self.runtime.opened(key, state.shared)
        self.state = state
        return state

    def _check_shared(self, state: SharedState, ident: tuple[str, int]) -> None:
        warn = self.agent.warn_once
        if state.skipped:
            # A setting's mistake, alike in every worker: said once for the service.
            skipped = "; ".join(state.skipped)
            self.agent.warn_service(
                f"state directories skipped ({skipped}); using {state.private.path}"
            )
        others = state.others()
        if others:
            warn(
                f"another instance of service {self.agent.service_name!r} (pid {others[0]}) "
                f"runs on this host under the same identity (agent {ident[0]}, sub_agent_id "
                f"{ident[1]}): a collector would mix their counters; give each its own "
                "SFLOW_APP_NAME"
            )

    def _fall_back(self, why: str) -> LocalState:
        """Report alone, under a sub-agent of this process's own: a collector sees a
        separate, valid stream (never the service's counters going back)."""
        if self._pending and self.state is not None and self.state.sender:
            self.flush()  # what it staged as the service's sender goes out as such
        key = self._key
        self.close_state()
        self._key = key
        sub_agent = self.rng.randrange(*FALLBACK_SUB_AGENTS)
        self.agent.warn_once(
            f"{why}; this process reports alone as sub_agent_id {sub_agent} "
            "(SFLOW_APP_SHARED=0 makes one process the whole service)"
        )
        self._offset = {}
        self.runtime.opened(None, False)
        state = self.state = LocalState(sub_agent)
        return state

    def identity(self) -> tuple[str, int] | None:
        """The agent's identity, with the fallback's own sub-agent if it reports alone."""
        ident = self.agent.identity()
        sub_agent = getattr(self.state, "sub_agent_id", None)
        if ident is None or sub_agent is None:
            return ident
        return ident[0], sub_agent

    def _index(self, state: State, source: Source) -> int | None:
        index = self._indexes.get(id(source))
        if index is None and source.ds_index is not None:
            try:
                index = state.source_index(source.kind, source.name, source.ds_index)
            except OSError:  # its lock is held by a stopped process: try again later
                return None
            if index is None:
                self.agent.warn_once("too many data sources for the shared state")
                return None
            self._indexes[id(source)] = index
        return index

    def _publish(self, state: State, source: Source) -> None:
        index = self._index(state, source)
        if index is None:
            return
        settled = self._settled.pop(id(source), None)
        if (
            settled is not None
            and settled == (source.sampler.sample_pool, source.drops)
            and state.slot is not None
        ):
            self._settled[id(source)] = settled  # nothing to publish: see below
            return
        values = list(source.counters.snapshot())
        pool, drops = source.sampler.sample_pool, source.drops  # after: see below
        gauges = {}
        for position, current in source.gauges.items():
            try:
                gauges[position] = max(0, int(current()))
            except Exception:
                log.debug("sflow_app: gauge failed", exc_info=True)
        if state.slot is None:
            # A slot is taken at the first count: a pre-fork master that only sends, or
            # a process that never serves, holds none.
            if not (pool or drops or any(values) or any(gauges.values())):
                return
            if not state.claim_slot():
                self.agent.warn_once(
                    "all worker slots are taken; this worker's counters are not shared"
                )
                return
        self._last[id(source)] = (values[:], pool, drops)
        if source.kind == "http" and not gauges and pool == sum(values[HTTP_METHODS:HTTP_STATUSES]):
            # Every request it counted (the pool, read after the counters) has its status
            # counted: none in flight. Until the pool or the drops move, no count can
            # change, and an idle pass reads none of them (issue 15).
            self._settled[id(source)] = (pool, drops)
        offset = self._offset.get(id(source))
        if offset is not None:
            values = [v - o for v, o in zip(values, offset[0], strict=True)]
            pool, drops = pool - offset[1], drops - offset[2]
        for position, value in gauges.items():
            values[position] = value
        state.publish(index, values, pool, drops, gauge_positions(source.kind))

    def _publish_runtime(
        self, state: State, sources: list[Source], now: float, final: bool
    ) -> None:
        """This process's runtime figures (app_resources, app_workers), at most once per
        polling interval of the HTTP source and at exit, off the request path."""
        http = next((s for s in sources if s.kind == "http"), None)
        if http is None or state.slot is None:
            return
        interval = self._polling_for(http.app_key)
        if not final and (interval <= 0 or now < self.runtime.due):
            return  # not due: no reading of the counters for it
        # In progress: candidates (pooled as they arrive) not yet given a status.
        statuses = http.counters.snapshot()[HTTP_METHODS:HTTP_STATUSES]
        in_flight = http.sampler.sample_pool - sum(statuses)
        try:
            figures = self.runtime.collect(now, interval, in_flight, final)
        except Exception:
            log.debug("sflow_app: runtime figures failed", exc_info=True)
            return
        if figures is not None:
            state.publish_runtime(figures)

    # -- samples ----------------------------------------------------------------------
    def _encode_all(
        self,
        state: State,
        items: list[tuple[Any, ...]],
        totals: dict[int, list[int]] | None,
        now: float,
    ) -> list[tuple[int, bytes]]:
        """Encode the samples drained this pass, in candidate order.

        Each carries its pool step: this process's pool increment since its previous
        sample of the source (as mod_sflow does), at least 1 so the service's pool
        strictly increases. A sample submitted late (a slow request sampled before a
        quick one) takes 1 and the next makes up for it: the sum never runs ahead of the
        candidates seen by more than the samples in flight.

        A worker (no ``totals``) gets them back to forward: the step where sample_pool
        goes, drops 0 (the sender puts in both). The sender stages them right here, a
        sample encoded from what its surface kept with its final sample_pool and drops
        packed at once: no second parse of it, no copy. This loop runs once per sample:
        what it can do once per source, it does then.
        """
        out: list[tuple[int, bytes]] = []
        limit = self.agent.settings.datagram - HEADER_MAX
        room = limit - FLOW_HEAD.size  # for the records of a compact sample
        pack = FLOW_HEAD.pack
        add_pool = state.add_pool
        carried_by = self._pool_carried
        pending, size = self._pending, self._size  # the sender's: written back below
        last: Source | None = None
        key = carried = drops = source_id = inp = outp = 0
        index: int | None = None
        ordinal: Any = None
        compact = False
        for source, n, rate, records in items:
            if source is not last:  # once per run of one source's samples
                if last is not None:
                    carried_by[key] = carried
                last, key = source, id(source)
                carried = carried_by.get(key, 0)
                index = self._indexes.get(key)  # _index, its common case inlined
                if index is None:
                    index = self._index(state, source)
                ds_index = source.ds_index
                if index is not None and ds_index is not None:
                    ordinal = source.sampler.ordinal
                    words = flow_source_words(DS_CLASS_LOGICAL, ds_index, *source.direction)
                    compact = words is not None
                    if words is not None:
                        source_id, inp, outp = words
                    if totals is not None:
                        total = totals.get(index)
                        if total is None:
                            total = totals[index] = state.totals(index)
                        drops = total[DROPS] & MASK
                else:
                    index = None
            if index is None:
                source.drop()
                continue
            mark = ordinal(n)
            if mark <= carried:
                mark = carried + 1
            step, carried = mark - carried, mark
            if type(records) is not tuple and isinstance(records, Deferred):
                # A surface left the records to us (off the request thread): encoded
                # straight from what it kept, unless the sample needs fitting.
                try:
                    body, count = records.encode()
                except Exception:
                    log.debug("sflow_app: could not encode a sample", exc_info=True)
                    carried -= step  # the next sample carries it
                    source.drop()
                    continue
                length = len(body)
                if compact and length <= room:
                    pool = step if totals is None else add_pool(index, step)
                    try:
                        head = pack(
                            1, length + 32, 0, source_id, rate, pool & MASK, drops, inp, outp, count
                        )
                    except struct.error:  # a number out of range: clamped below
                        if totals is not None:
                            add_pool(index, -step)
                    else:
                        if totals is None:
                            out.append((index, head + body))
                            continue
                        # _append, inlined
                        length += FLOW_HEAD.size
                        if pending and size + length > limit:
                            self._size = size
                            self.flush()
                            pending, size = self._pending, 0  # a flush makes them anew
                        if not pending:
                            self._since = now
                        pending.append((index, True, head + body))
                        size += length
                        continue
            built = self._encode_built(source, rate, step, records, limit)
            if built is None:
                carried -= step  # the next sample carries it
                source.drop()
            elif totals is None:
                out.append((index, built))
            else:
                self._size = size
                self._stage_flows(state, totals, ((index, built),), now)
                pending, size = self._pending, self._size
        if last is not None:
            carried_by[key] = carried
        if totals is not None:
            self._size = size
        return out

    def _encode_built(
        self, source: Source, rate: int, step: int, records: Any, limit: int
    ) -> bytes | None:
        """A sample from its records (built now if a surface left them to us), fitted
        into ``limit`` bytes, carrying its pool ``step``; None when it cannot be."""
        if (records := built_records(records)) is None or source.ds_index is None:
            return None
        inp, out = source.direction
        sample = FlowSample(
            sequence_number=0,
            ds_class=DS_CLASS_LOGICAL,
            ds_index=source.ds_index,
            sampling_rate=rate,
            sample_pool=step & MASK,  # the increment: the sender accumulates it
            drops=0,
            input_format=0,
            input_value=inp,
            output_format=0,
            output_value=out,
            records=records,
        )
        return encode_fitted_flow_sample(sample, limit)

    def _pool_remainders(self, state: State, sources: list[Source]) -> list[tuple[int, bytes]]:
        """At exit: pool increments no sample carries, as pool-only messages."""
        out = []
        for source in sources:
            index = self._indexes.get(id(source))
            carried = self._pool_carried.get(id(source), 0)
            rest = source.sampler.sample_pool - carried
            if index is None or rest <= 0:
                continue
            self._pool_carried[id(source)] = carried + rest
            out.append((index, POOL_ONLY.pack(min(rest, 0xFFFFFFFF))))
        return out

    def _forward(self, state: State, encoded: list[tuple[int, bytes]]) -> None:
        if not state.shared:
            return  # nothing to forward to (a stand-alone process is its own sender)
        if state.handed_back:  # taken in while it was the sender, never sent
            encoded = [*state.handed_back, *encoded]
            state.handed_back = []
        if self._fwd is None:
            self._fwd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._fwd.setblocking(False)
        self._backlog.extend(encoded)
        backlog = self._backlog
        while backlog:
            parts: list[bytes] = []
            size = 0
            for index, data in backlog:  # as many as fit in one message
                if parts and size + MSG.size + len(data) > FORWARD_MAX:
                    break
                parts += (MSG.pack(index, len(data)), data)
                size += MSG.size + len(data)
            if not state.forward(self._fwd, b"".join(parts)):
                break  # no sender right now, or its queue is full: keep them for later
            for _ in range(len(parts) // 2):
                backlog.popleft()
        if len(backlog) > BACKLOG_MAX:
            self._drop_backlog(len(backlog) - BACKLOG_MAX)

    def _drop_backlog(self, count: int) -> None:
        """Give up the oldest ``count`` waiting samples, counted as their sources' drops."""
        by_index = {
            index: s
            for s in self.agent.sources()
            if (index := self._indexes.get(id(s))) is not None
        }
        for _ in range(count):
            index, data = self._backlog.popleft()
            if len(data) == POOL_ONLY.size:
                continue  # a pool increment, not a sample
            self.stats["backlog_drops"] += 1
            source = by_index.get(index)
            if source is not None:
                source.drop()

    def workers_seen(self) -> int:
        """Worker slots in use (status()): under the lock, since reading them may map a
        grown file anew, which a pass running meanwhile must not see happen."""
        with self._lock:
            state = self.state
            return state.slots_used() if state is not None else 0

    def pass_due(self, seconds: float) -> None:
        """The thread is going to sleep for ``seconds``: a sender says so, so that the
        other workers do not take a sleeping sender for a stalled one."""
        with self._lock:
            state = self.state
            if isinstance(state, SharedState) and state.sender:
                state.pass_due(seconds)

    # -- lifecycle --------------------------------------------------------------------
    def finish(self, now: float) -> None:
        """At exit: publish, forward, and if no one else sends, send the last counters.

        A process that is (or can become) the sender first stops taking forwards (they
        stay with their workers), then reads its socket and polls one last time: it sends
        what was handed to it and every count published before it stopped listening. A
        worker that then finds no sender taking samples (it is leaving, or gone) waits up
        to ``EXIT_WAIT`` to become the sender and send its samples and the last counters
        itself: recycled workers often exit together, and fresh ones may not run yet.
        What it still holds after that is counted as drops.
        """
        # Wait (bounded) for a pass the exporter thread may be in the middle of.
        locked = self._lock.acquire(timeout=EXIT_LOCK_WAIT)
        try:
            self._finish(now)
        finally:
            if locked:
                self._lock.release()

    def _finish(self, now: float) -> None:
        agent = self.agent
        ident = agent.identity() if agent.settings.enabled else None
        state = self._open(ident) if ident is not None else self.state
        self.step(now, final=True)  # a sender's final pass stops taking forwards first
        if state is None or not state.shared or state.sender:
            return
        end = time.monotonic() + EXIT_WAIT
        while self._backlog or state.sender_leaving():
            if time.monotonic() >= end:
                break
            time.sleep(TICK / 5)
            try:
                if state.try_become_sender():
                    self.step(now, final=True)
                    return
            except OSError:
                pass
            self._forward(state, [])
        if self._backlog:
            self._drop_backlog(len(self._backlog))
            for source in agent.sources():
                self._publish(state, source)

    def close_state(self) -> None:
        if self.state is not None and self.state.shared and self._key is not None:
            # What this process published stays in the file (its slot, now dead).
            self._offsets[self._key] = {**self._offset, **self._last}
            self._sidecars_done[self._key] = (dict(self.stats), self.senders.errors())
            self.runtime.closed(self._key)
        self._last = {}
        self._settled.clear()
        if self.state is not None:
            self.state.close()
        self.state = None
        self._sidecars, self._shown = None, None
        self._indexes.clear()
        self._next_poll.clear()

    def close(self) -> None:
        self.close_state()
        self.senders.close()
        if self._fwd is not None:
            self._fwd.close()
        self._fwd = None

    def abandon(self) -> None:
        """In a forked child: drop the parent's objects without touching shared files."""
        if self.state is not None:
            self.state.abandon()
        self.state = None
        self.senders.close()
        if self._fwd is not None:
            self._fwd.close()

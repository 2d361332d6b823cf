"""Stream checks for the pre-fork tests: what a collector must see from one service served
by many worker processes (recycled, crashed, or killed), whatever the server.

- ``TimedCollector``: the conftest ``Collector`` receiving on a thread of its own, so each
  datagram gets its arrival time (``time.monotonic()``) and bursts never overflow it.
- ``run_load`` / ``start_load``: N requests ``GET /r/<i>`` (i = 1..N, in the order their
  sends start) from a small pool of client threads, one connection per request. For each
  ordinal: when its send started, when its response completed, the worker pid and
  whether the middleware sampled it (tests/apps/prefork_app.py answers both).
- ``check_stream``: every property of the decoded stream, per data source.

Bounds (see ``check_stream``):

- ``sample_pool <= ops_per_request * (requests whose send had started when the sample's
  datagram arrived)``: a pool counts candidates, each of which is a request already sent.
- ``sample_pool >= ops_per_request * (requests completed at the client before the sampled
  request was sent - POOL_LAG)`` minus the counts a killed worker may have lost. Each
  sample carries its worker's pool increment since that worker's previous sample, so the
  service's pool lags by what the *other* workers saw since their last samples (about
  rate x workers requests), and by a worker's exporter thread being late under load on 2
  cores: ``POOL_LAG`` = 3 s is a loose, documented allowance in time for both. No tighter
  lower bound holds by design.
"""

from __future__ import annotations

import bisect
import dataclasses
import http.client
import itertools
import math
import socket
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from helpers import Collector

from sflow_app.decode import decode
from sflow_app.records import (
    AppOperation,
    AppOperations,
    CountersSample,
    Datagram,
    FlowSample,
    HttpCounters,
    HttpRequest,
    MemcacheCounters,
    MemcacheOperation,
)

POOL_LAG = 3.0  # s: how far the service-wide sample_pool may lag the requests completed
UPTIME_SLACK = 1.0  # s: uptime advance vs. arrival-time advance between first and last
SAMPLE_TOLERANCE = 0.25  # samples received + drops within +-25 % of N / rate
FLOW_KINDS = {HttpRequest: "http", MemcacheOperation: "memcache", AppOperation: "app"}
COUNTER_KINDS = {HttpCounters: "http", MemcacheCounters: "memcache", AppOperations: "app"}


# -- the collector -------------------------------------------------------------------------


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # asm-generic/socket.h
TIMESPEC = struct.Struct("@ll")


def arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """When the kernel received the datagram, on the monotonic clock (now without one)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            sec, nsec = TIMESPEC.unpack_from(data)
            return time.monotonic() - (time.time_ns() - (sec * 10**9 + nsec)) / 1e9
    return time.monotonic()


class TimedCollector(Collector):
    """Receives on a thread; ``received()`` is [(arrival monotonic time, Datagram)]."""

    def __init__(self) -> None:
        super().__init__()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        # The kernel's arrival time of each datagram: a reader thread stalled on a loaded
        # machine would otherwise date datagrams sent a second apart alike.
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.arrivals: list[float] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(65535, TIMESPEC.size * 2)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return
            now = arrival(ancillary)
            try:
                dg = decode(data)
            except Exception as exc:  # a datagram we cannot decode is a failure, kept
                with self._lock:
                    self.errors.append(f"{exc!r}: {data[:64].hex()}")
                continue
            with self._lock:
                self.raw.append(data)
                self.datagrams.append(dg)
                self.arrivals.append(now)

    def poll(self, duration: float = 0.0) -> list:
        time.sleep(duration)
        return []

    def received(self) -> list[tuple[float, Datagram]]:
        with self._lock:
            return list(zip(self.arrivals, self.datagrams, strict=True))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        super().close()


# -- the load ------------------------------------------------------------------------------


@dataclasses.dataclass
class Load:
    """What the client did. Index = ordinal (1..n; index 0 unused)."""

    n: int
    concurrency: int
    sent: list[float]
    done: list[float]  # nan: no response
    pid: list[int]
    sampled: list[bool]
    errors: list[str] = dataclasses.field(default_factory=list)
    started: int = 0  # sends started so far (live progress)
    t_start: float = 0.0
    t_end: float = 0.0

    @property
    def ok(self) -> int:
        return sum(1 for t in self.done[1:] if not math.isnan(t))

    def ordinals_ok(self) -> set[int]:
        return {i for i in range(1, self.n + 1) if not math.isnan(self.done[i])}

    def sampled_ok(self) -> set[int]:
        return {i for i in self.ordinals_ok() if self.sampled[i]}

    def pids(self) -> set[int]:
        return {p for p in self.pid[1:] if p}

    def sends_started_by(self) -> Callable[[float], int]:
        times = sorted(t for t in self.sent[1:] if not math.isnan(t))
        return lambda t: bisect.bisect_right(times, t)

    def completed_by(self) -> Callable[[float], int]:
        times = sorted(t for t in self.done[1:] if not math.isnan(t))
        return lambda t: bisect.bisect_right(times, t)

    def completed_in(self, start: float, pid: int | None = None) -> set[int]:
        """Ordinals answered (by ``pid``) at or after ``start``."""
        return {
            i
            for i in self.ordinals_ok()
            if self.done[i] >= start and (pid is None or self.pid[i] == pid)
        }


def _send_one(port: int, i: int, load: Load) -> None:
    load.sent[i] = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", f"/r/{i}", headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}: {body[:200]!r}")
        pid, sampled = body.split()
        load.pid[i] = int(pid)
        load.sampled[i] = sampled == b"1"
        load.done[i] = time.monotonic()
    except (OSError, http.client.HTTPException, RuntimeError, ValueError) as exc:
        load.errors.append(f"/r/{i}: {exc!r}")
    finally:
        conn.close()


def start_load(port: int, n: int, concurrency: int = 6) -> tuple[Load, threading.Thread]:
    """Send ``GET /r/1`` .. ``/r/n`` from ``concurrency`` threads, in the background."""
    nan = float("nan")
    load = Load(
        n=n,
        concurrency=concurrency,
        sent=[nan] * (n + 1),
        done=[nan] * (n + 1),
        pid=[0] * (n + 1),
        sampled=[False] * (n + 1),
    )
    ordinals = itertools.count(1).__next__  # one C call: unique under threads

    def client() -> None:
        while (i := ordinals()) <= n:
            load.started = max(load.started, i)
            _send_one(port, i, load)

    def run() -> None:
        load.t_start = time.monotonic()
        threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load.t_end = time.monotonic()

    thread = threading.Thread(target=run, name="load", daemon=True)
    thread.start()
    return load, thread


def run_load(port: int, n: int, concurrency: int = 6) -> Load:
    load, thread = start_load(port, n, concurrency)
    thread.join()
    return load


# -- views over the stream -----------------------------------------------------------------


def _kind_of(sample: Any, table: dict[type, str]) -> str | None:
    for record in sample.records:
        kind = table.get(type(record))
        if kind:
            return kind
    return None


def counter_record(sample: CountersSample) -> Any:
    for record in sample.records:
        if type(record) in COUNTER_KINDS:
            return record
    raise AssertionError(f"counter sample without a known counter record: {sample}")


GAUGES = {"curr_connections"}  # current values (memcache connections open): may go down


def numeric_fields(record: Any) -> dict[str, int]:
    return {
        f.name: getattr(record, f.name)
        for f in dataclasses.fields(record)
        if isinstance(getattr(record, f.name), int) and f.name not in GAUGES
    }


def total_of(kind: str, record: Any) -> int:
    """The operations a counter record accounts for: method counters (http), commands
    (memcache: sets + gets), calls by outcome (app)."""
    if kind == "http":
        return sum(v for k, v in numeric_fields(record).items() if k.startswith("meth"))
    if kind == "memcache":
        return record.cmd_set + record.get_hits + record.get_misses
    return sum(numeric_fields(record).values())


def ordinal_of(sample: FlowSample) -> int | None:
    for record in sample.records:
        if (
            isinstance(record, HttpRequest)
            and isinstance(record.uri, str)
            and record.uri.startswith("/r/")
        ):
            return int(record.uri[3:])
        if isinstance(record, MemcacheOperation):
            key = record.key if isinstance(record.key, str) else record.key.decode()
            if key.startswith("k"):
                return int(key[1:])
    return None


@dataclasses.dataclass
class SourceView:
    kind: str
    ds_index: int
    flows: list[tuple[float, FlowSample]] = dataclasses.field(default_factory=list)
    counters: list[tuple[float, CountersSample]] = dataclasses.field(default_factory=list)

    def final(self) -> Any:
        assert self.counters, f"{self.kind} 3:{self.ds_index}: no counter sample"
        return counter_record(max(self.counters, key=lambda c: c[1].sequence_number)[1])

    def final_total(self) -> int:
        return total_of(self.kind, self.final())


def sources(received: Iterable[tuple[float, Datagram]]) -> dict[str, list[SourceView]]:
    """Data sources by kind, samples in datagram sequence order."""
    views: dict[tuple[int, int], SourceView] = {}
    for arrival, dg in sorted(received, key=lambda r: r[1].sequence_number):
        for sample in dg.samples:
            assert isinstance(sample, FlowSample | CountersSample), f"opaque sample: {sample}"
            flow = isinstance(sample, FlowSample)
            kind = _kind_of(sample, FLOW_KINDS if flow else COUNTER_KINDS)
            assert kind is not None, f"sample of no known kind: {sample}"
            key = (sample.ds_class, sample.ds_index)
            view = views.setdefault(key, SourceView(kind, sample.ds_index))
            assert view.kind == kind, f"3:{sample.ds_index} carries {view.kind} and {kind}"
            if isinstance(sample, FlowSample):
                view.flows.append((arrival, sample))
            else:
                view.counters.append((arrival, sample))
    by_kind: dict[str, list[SourceView]] = defaultdict(list)
    for (ds_class, _), view in views.items():
        assert ds_class == 3, f"data source class {ds_class}, not 3 (logical entity)"
        by_kind[view.kind].append(view)
    return dict(by_kind)


def latest_total(collector: TimedCollector, kind: str = "http") -> int | None:
    """The most recent counter total of ``kind`` (by sample sequence number)."""
    best = None
    for _, dg in collector.received():
        for sample in dg.samples:
            if (
                isinstance(sample, CountersSample)
                and _kind_of(sample, COUNTER_KINDS) == kind
                and (best is None or sample.sequence_number > best.sequence_number)
            ):
                best = sample
    return None if best is None else total_of(kind, counter_record(best))


def wait_for_total(
    collector: TimedCollector, target: int, kind: str = "http", timeout: float = 15.0
) -> int | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        total = latest_total(collector, kind)
        if total is not None and total >= target:
            return total
        time.sleep(0.1)
    return latest_total(collector, kind)


# -- the checks ----------------------------------------------------------------------------


@dataclasses.dataclass
class Expect:
    """What one data source kind must show for the load."""

    kind: str
    ops_per_request: int = 1
    # Counts the agent may have lost (a killed worker's unpublished counts), in requests.
    count_loss: int = 0
    # Ordinals whose samples may be missing (a killed worker's unforwarded samples).
    may_lose: frozenset[int] = frozenset()
    # Whether the client knows which requests were sampled (http, from the app's answer).
    exact_samples: bool = False


@dataclasses.dataclass
class Report:
    datagrams: int = 0
    agent: tuple[str, int] = ("", 0)
    per_source: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        parts = [f"{self.datagrams} datagrams from {self.agent[0]}/{self.agent[1]}"]
        parts += [f"{kind}: {info}" for kind, info in self.per_source.items()]
        return "; ".join(parts)


def check_datagrams(
    received: list[tuple[float, Datagram]], sub_agent_id: int | None = None
) -> tuple[str, int]:
    """One (agent, sub_agent_id); datagram sequence numbers 1, 2, 3... with no gap or
    repeat; uptime never going back, advancing like the clock."""
    assert received, "no datagram received"
    agents = {(dg.agent_address, dg.sub_agent_id) for _, dg in received}
    assert len(agents) == 1, f"several agent identities: {agents}"
    [agent] = agents
    assert agent[0] == "127.0.0.1", agent
    if sub_agent_id is not None:
        assert agent[1] == sub_agent_id, f"sub_agent_id {agent[1]}, expected {sub_agent_id}"
    ordered = sorted(received, key=lambda r: r[1].sequence_number)
    seqs = [dg.sequence_number for _, dg in ordered]
    assert seqs == list(range(1, len(seqs) + 1)), _gaps("datagram", seqs)
    uptimes = [dg.uptime_ms for _, dg in ordered]
    back = [(s, a, b) for s, a, b in zip(seqs[1:], uptimes, uptimes[1:], strict=False) if b < a]
    assert not back, f"uptime went back (seq, before, after): {back[:5]}"
    span_uptime = (uptimes[-1] - uptimes[0]) / 1000
    span_clock = ordered[-1][0] - ordered[0][0]
    assert abs(span_uptime - span_clock) <= UPTIME_SLACK, (
        f"uptime advanced {span_uptime:.3f} s while {span_clock:.3f} s passed"
    )
    return agent


def _gaps(what: str, seqs: list[int]) -> str:
    steps = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
    return f"{what} sequence numbers do not step by one: first={seqs[:1]} {steps[:10]}"


def check_source(
    view: SourceView, load: Load, expect: Expect, rate: int, info: dict[str, Any]
) -> None:
    name = f"{view.kind} 3:{view.ds_index}"
    ops = expect.ops_per_request
    # Sample sequence numbers: 1, 2, 3... per data source, flows and counters apart.
    flow_seqs = [s.sequence_number for _, s in view.flows]
    assert flow_seqs == list(range(1, len(flow_seqs) + 1)), _gaps(f"{name} flow", flow_seqs)
    counter_seqs = [s.sequence_number for _, s in view.counters]
    assert counter_seqs == list(range(1, len(counter_seqs) + 1)), _gaps(
        f"{name} counter", counter_seqs
    )
    # Counters never decrease, field by field.
    previous: dict[str, int] | None = None
    for _, sample in view.counters:
        values = numeric_fields(counter_record(sample))
        if previous is not None:
            down = {k: (previous[k], v) for k, v in values.items() if v < previous[k]}
            assert not down, f"{name}: counters went back at seq {sample.sequence_number}: {down}"
        previous = values
    # Final counters: every operation of every request, less what a kill may lose.
    total = view.final_total()
    info["final_total"] = total
    high = ops * load.n
    low = ops * (load.ok - expect.count_loss)
    assert low <= total <= high, f"{name}: final total {total} not in [{low}, {high}]"
    if expect.count_loss == 0 and not load.errors:
        assert total == high, f"{name}: final total {total} != {high}"
    # Flow samples: rate, pool and drops never going back, pool bounded by what was sent.
    sends_by = load.sends_started_by()
    completed_by = load.completed_by()
    pool = drops = 0
    ordinals: list[int] = []
    for arrival, flow in view.flows:
        assert flow.sampling_rate == rate, f"{name}: sampling_rate {flow.sampling_rate}"
        assert flow.sample_pool >= pool, (
            f"{name}: sample_pool went back {pool} -> "
            f"{flow.sample_pool} at seq {flow.sequence_number}"
        )
        assert flow.drops >= drops, f"{name}: drops went back at {flow.sequence_number}"
        pool, drops = flow.sample_pool, flow.drops
        sent = sends_by(arrival)
        assert 1 <= pool <= ops * sent, (
            f"{name}: sample_pool {pool} at seq {flow.sequence_number} > {ops} x {sent} "
            "requests sent before its datagram arrived"
        )
        ordinal = ordinal_of(flow)
        if ordinal is not None:
            ordinals.append(ordinal)
            floor = ops * (completed_by(load.sent[ordinal] - POOL_LAG) - expect.count_loss)
            assert pool >= floor, (
                f"{name}: sample_pool {pool} of request {ordinal} below {floor} (requests "
                f"completed {POOL_LAG} s before it was sent)"
            )
    assert pool <= high
    got = len(view.flows)
    if expect.kind == "http":
        assert len(ordinals) == got, f"{name}: samples without a /r/<i> URI"
    if ordinals:
        dup = [i for i, c in _count(ordinals).items() if c > (1 if ops == 1 else ops)]
        assert not dup, f"{name}: requests sampled more often than possible: {dup[:10]}"
        assert all(1 <= i <= load.n for i in ordinals)
    if expect.exact_samples:
        # The client knows which requests the middleware sampled: each must arrive, but
        # for what a killed worker had not handed over; none may arrive that was not.
        want = load.sampled_ok()
        got_set = set(ordinals)
        missing = want - got_set - expect.may_lose
        assert len(missing) <= drops, (
            f"{name}: {len(missing)} sampled requests never arrived, {drops} drops "
            f"reported: {sorted(missing)[:20]}; {_where(load, missing, got_set)}"
        )
        failed = set(range(1, load.n + 1)) - load.ordinals_ok()
        extra = got_set - want - failed
        assert not extra, f"{name}: samples of requests not sampled: {sorted(extra)[:20]}"
        info["lost"] = len(want - got_set)
        # Sampled, and lost where the test allows it (a killed worker's): still sampled.
        excused = len((want - got_set) & expect.may_lose)
    else:
        excused = 0

    # How many samples arrived: 1-in-rate, drops accounting for what the agent knows.
    expected = ops * load.n / rate
    info.update(samples=got, drops=drops, expected=expected)
    assert abs(got + drops + excused - expected) <= SAMPLE_TOLERANCE * expected, (
        f"{name}: {got} samples + {drops} drops + {excused} lost where allowed, "
        f"expected {expected:.0f} +-25 %"
    )


def _where(load: Load, missing: set[int], arrived: set[int]) -> str:
    """For a failure: which workers the lost samples came from, and when in their lives
    (ordinals by answer time; L = lost, a = arrived, . = not sampled)."""
    out = []
    for pid in sorted({load.pid[i] for i in missing}):
        mine = sorted(
            (i for i in load.ordinals_ok() if load.pid[i] == pid), key=lambda i: load.done[i]
        )
        life = "".join("L" if i in missing else "a" if i in arrived else "." for i in mine)
        out.append(f"pid {pid} served {len(mine)}: {life}")
    return "; ".join(out)


def _count(items: Iterable[int]) -> dict[int, int]:
    out: dict[int, int] = defaultdict(int)
    for i in items:
        out[i] += 1
    return out


def check_stream(
    collector: TimedCollector,
    load: Load,
    expects: list[Expect],
    *,
    rate: int = 10,
    sub_agent_id: int | None = None,
) -> Report:
    """All of it: identity, datagram and sample sequence numbers, uptime, one data source
    per kind, monotonic counters, final totals, sample_pool bounds, sample counts."""
    assert not collector.errors, f"undecodable datagrams: {collector.errors[:3]}"
    received = collector.received()
    report = Report(datagrams=len(received))
    report.agent = check_datagrams(received, sub_agent_id)
    by_kind = sources(received)
    wanted = {e.kind for e in expects}
    assert set(by_kind) == wanted, f"data source kinds {sorted(by_kind)}, want {sorted(wanted)}"
    for expect in expects:
        views = by_kind[expect.kind]
        assert len(views) == 1, f"{expect.kind}: several data sources {[v.ds_index for v in views]}"
        [view] = views
        info: dict[str, Any] = {"ds_index": view.ds_index}
        report.per_source[expect.kind] = info
        check_source(view, load, expect, rate, info)
    return report


class InheritedSkip(AssertionError):
    """Every worker took its first sample at the same point of its life."""


def check_independent_sampling(load: Load, min_workers: int = 8) -> dict[str, Any]:
    """Each worker draws its own skips (RNG reseeded, first skip drawn after the fork).

    For every worker, the position (in its own request order) of its first sampled
    request. Independent 1-in-N samplers spread these out (geometric, mean N: no window
    of 3 positions holds more than ~30 % of workers); a skip inherited from the master
    puts every worker's first sample at the same position."""
    firsts: list[int] = []
    for pid in load.pids():
        served = sorted((load.sent[i], i) for i in load.ordinals_ok() if load.pid[i] == pid)
        flags = [load.sampled[i] for _, i in served]
        if len(flags) >= 20 and any(flags):
            firsts.append(flags.index(True))
    info = {"workers": len(firsts)}
    if len(firsts) < min_workers:
        return info
    firsts.sort()
    median = firsts[len(firsts) // 2]
    near = sum(1 for f in firsts if abs(f - median) <= 1)
    info.update(first_sample_median=median, near_median=near)
    if near > 0.6 * len(firsts):
        raise InheritedSkip(
            f"{near} of {len(firsts)} workers took their first sample at request "
            f"{median + 1} +-1 of their life: the skip is inherited, not drawn per worker "
            f"({firsts})"
        )
    return info

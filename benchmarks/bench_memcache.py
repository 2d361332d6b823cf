"""pymemcache instrumentation cost, as a ratio to bare pymemcache in the same run.

1. Against the server. A real memcached on a loopback port (started here;
``scripts/setup --with-servers`` installs it) serves one ``pymemcache`` Client doing a get
hit, a get miss and a set of a 100-byte value, in turn. Measured, interleaved round by
round so that drift and noise hit every variant alike:

- bare pymemcache (nothing instrumented);
- three floors: the three round-trip methods replaced by pass-throughs -- plain functions
  with pymemcache 4's signatures (the least any Python-level hook there costs; sflow_app's
  replacements are such functions too), wrapt FunctionWrappers (what wrapt itself would
  cost per round trip), and plain pass-throughs that count gets, hits, misses, sets and
  value bytes into itertools counters and a deque (what exact counting costs by itself,
  without a sampling decision);
- sflow_app.memcache.instrument() with sampling off (only the unsampled path; goal <= 1.02);
- the same at 1-in-100 (the exporter thread runs and sends to a loopback UDP socket
  nobody reads);
- OpenTelemetry's PymemcacheInstrumentor at 1 % (SDK TracerProvider with
  TraceIdRatioBased(0.01), no span processor or exporter), for comparison.

Rounds are short and many and the variants' order rotates every round. Each variant
reports its median and best round (wall clock) and the client thread's CPU time per
operation (system calls included), and, as ratios to bare, the median over the rounds of
each round's own ratio (the variant's round over bare's round in the same rotation, a few
ms apart: a pair that drift -- the machine's load, its clock, memcached's state -- hits
alike, where a ratio of two medians taken over the whole run does not cancel it), for the
wall clock and for the client CPU. The goal's figure is the wall-clock one. On a shared
machine its noise (a few %) is still larger than what the goal measures; the CPU ratio is
the steadier of the two.

2. In memory, the instrumentation's own cost. The same workload on a Client whose
``socket_module`` is a fake: ``connect`` does nothing, ``sendall`` looks the command up
in memcached's canned replies and ``recv`` returns the reply, so no network and no system
call is left, only pymemcache's Python and what the instrumentation adds to it. The same
variants but OpenTelemetry, with 1-in-100 made exactly every 100th operation (the
sampler's random draw fixed) so that every window holds the same number of samples. Each
of get hit, get miss and set, and the workload's mix (the three in turn, as in part 1), is
timed timeit-style: the thread's CPU time (other processes' and threads' time not
counted) of a window of calls, garbage collector off; many short windows, the variants
interleaved (order rotating), best window per variant and operation. Added = best minus
bare's best. The mix is the figure used below: one operation repeated in a loop runs
through the same branches every time, and costs the added code less than the mix does
(about half as much for sflow_app's unsampled path, which branches by command and outcome).

Then the estimate, beside the ratios measured in part 1: 1 + (added CPU per operation in
memory) / (bare pymemcache's round trip against the server in part 1: its best round, the
least disturbed and so the largest estimate, and its median), for the floors,
sampling off and 1-in-100. It is an estimate, not a measurement: it assumes the
added code costs next to real socket calls what it costs in memory, and it leaves out the
exporter thread (encoding and sending the samples, off the application's thread). The
assumption does not hold: the client blocks in ``recv`` once per operation, and Python
code run after the thread wakes up runs about twice as slow per instruction (caches and
branch predictors cold) as in a loop that never blocks -- pymemcache's own code as much as
the added code (on a 2-vCPU VM: the same added instruction count, measured with callgrind,
costs 2-3x the CPU time against the server). The measured CPU ratio is the one to read.

3. Without the server, the per-call cost of the counting serde a client with a
non-default serde gets (sflow_app's ``__slots__`` class, and the same as a
``wrapt.ObjectProxy``) over pickle_serde alone.

Printed, not asserted.

    .venv/bin/python benchmarks/bench_memcache.py [--ops N] [--rounds N] [--smoke] [--json PATH]

``BENCH_ROUNDS`` sets the default number of rounds (60, of 900 operations each), as for
bench_wsgi/bench_asgi; part 2 repeats max(20, rounds) times.
"""

from __future__ import annotations

import collections
import gc
import itertools
import os
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import wrapt
from _harness import Report, Sink, bench_args, scratch
from pymemcache.client.base import Client  # type: ignore[import-untyped]

VALUE = b"v" * 100
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 60))
WINDOWS = 2  # in memory: windows per operation, variant and repeat


def start_memcached() -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    for _ in range(5):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "2", "-m", "64"]
        if os.geteuid() == 0:
            args += ["-u", "root"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return proc, port
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.01)
        proc.kill()
        proc.wait()
    raise SystemExit("memcached did not start (scripts/setup --with-servers installs it)")


def workload(client: Client, ops: int) -> tuple[float, float]:
    """(wall, thread CPU) seconds for ``ops`` operations: get hit, get miss, set, in turn."""
    get, set_ = client.get, client.set
    thirds = ops // 3
    gc.collect()
    cpu = time.thread_time()
    started = time.perf_counter()
    for _ in range(thirds):
        get("hot")
        get("cold")
        set_("written", VALUE)
    return time.perf_counter() - started, time.thread_time() - cpu


class FakeSocket:
    """An in-memory connection to memcached: ``sendall`` looks the command up in canned
    replies, ``recv`` returns that reply whole. No network, no system call."""

    def __init__(self, replies: dict[bytes, bytes]) -> None:
        self.replies = replies
        self.reply = b""

    def sendall(self, data: bytes) -> None:
        self.reply = self.replies[data]

    def recv(self, size: int) -> bytes:
        reply, self.reply = self.reply, b""
        return reply

    def setsockopt(self, *args: object) -> None:
        pass

    def settimeout(self, timeout: float | None) -> None:
        pass

    def connect(self, address: object) -> None:
        pass

    def close(self) -> None:
        pass

    def getsockname(self) -> tuple[str, int]:  # the sampled path's socket record
        return ("127.0.0.1", 40000)

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 11211)


class FakeSocketModule:
    """What pymemcache's Client uses of ``socket`` (``socket_module=``) to connect."""

    AF_UNSPEC, AF_UNIX, SOCK_STREAM = socket.AF_UNSPEC, socket.AF_UNIX, socket.SOCK_STREAM
    IPPROTO_TCP, TCP_NODELAY = socket.IPPROTO_TCP, socket.TCP_NODELAY

    def __init__(self, replies: dict[bytes, bytes]) -> None:
        self.replies = replies

    def getaddrinfo(self, host: str, port: int, *args: object) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]

    def socket(self, *args: object) -> FakeSocket:
        return FakeSocket(self.replies)


# memcached's replies to the workload's three commands (default serde: flags 0).
REPLIES = {
    b"get hot\r\n": b"VALUE hot 0 %d\r\n%s\r\nEND\r\n" % (len(VALUE), VALUE),
    b"get cold\r\n": b"END\r\n",
    b"set written 0 0 %d\r\n%s\r\n" % (len(VALUE), VALUE): b"STORED\r\n",
}


def fake_client() -> Client:
    client = Client(
        ("127.0.0.1", 11211), default_noreply=False, socket_module=FakeSocketModule(REPLIES)
    )
    assert client.get("hot") == VALUE and client.get("cold") is None
    assert client.set("written", VALUE) is True
    return client


def get_loop(client: Client, key: str, loops: int) -> float:
    get = client.get
    started = time.thread_time()
    for _ in itertools.repeat(None, loops):
        get(key)
    return time.thread_time() - started


def set_loop(client: Client, key: str, loops: int) -> float:
    set_ = client.set
    started = time.thread_time()
    for _ in itertools.repeat(None, loops):
        set_(key, VALUE)
    return time.thread_time() - started


def mix_loop(client: Client, key: str, loops: int) -> float:
    """The workload of part 1: get hit, get miss, set, in turn (``loops`` calls; ``key``
    unused)."""
    get, set_ = client.get, client.set
    started = time.thread_time()
    for _ in itertools.repeat(None, loops // 3):
        get("hot")
        get("cold")
        set_("written", VALUE)
    return time.thread_time() - started


# The workload's three operations, in memory, and their mix: (loop, key).
FAKE_OPS: dict[str, tuple[Callable[[Client, str, int], float], str]] = {
    "get hit": (get_loop, "hot"),
    "get miss": (get_loop, "cold"),
    "set": (set_loop, "written"),
    "mix": (mix_loop, ""),
}


def timed(loop: Callable[[Client, str, int], float], client: Client, key: str, loops: int) -> float:
    """CPU seconds of this thread for ``loops`` calls (time other processes or threads ran
    is not counted), the garbage collector off as in timeit."""
    gc.disable()
    try:
        return loop(client, key, loops)
    finally:
        gc.enable()


class EveryNth:
    """Stands in for the sampler's ``random.Random``: every skip is exactly ``n`` (the
    sampler's geometric draw with u fixed), so every window of k * n calls holds k samples
    and the best window is not merely the one that drew the fewest."""

    def __init__(self, n: int) -> None:
        self.u = 1 - (1 - 1 / n) ** (n - 0.5)

    def random(self) -> float:
        return self.u

    def seed(self, *args: object) -> None:
        pass


def in_memory_costs(
    variants: dict[str, tuple[Callable[[], None], Callable[[], None]]],
    repeats: int,
    windows: int = WINDOWS,
    window: float = 0.0015,
) -> tuple[dict[str, dict[str, float]], int]:
    """Microseconds of CPU per call of each variant on the fake socket, per operation: the
    best of ``repeats`` x ``windows`` windows of ``loops`` calls (timeit-style: ``loops``, a
    multiple of 300, makes one bare "get hit" window take about ``window`` s). Every repeat
    runs every variant, in an order rotating from repeat to repeat. Many short windows on
    the thread's CPU clock: on a busy machine, some of them run undisturbed for each."""
    client = fake_client()
    loops = 300
    while min(timed(get_loop, client, "hot", loops) for _ in range(3)) < window:
        loops += 300
    best = {name: dict.fromkeys(FAKE_OPS, float("inf")) for name in variants}
    names = list(variants)
    for setup, teardown in variants.values():  # warm up every path once
        setup()
        for loop, key in FAKE_OPS.values():
            timed(loop, client, key, 1000)
        teardown()
    for i in range(repeats):
        gc.collect()
        for name in names[i % len(names) :] + names[: i % len(names)]:
            setup, teardown = variants[name]
            setup()
            try:
                for op, (loop, key) in FAKE_OPS.items():
                    for _ in range(windows):
                        best[name][op] = min(best[name][op], timed(loop, client, key, loops))
            finally:
                teardown()
    return {
        name: {op: t / loops * 1e6 for op, t in ops.items()} for name, ops in best.items()
    }, loops


class ProxySerde(wrapt.ObjectProxy):
    """sflow_app.memcache's counting serde written as a wrapt.ObjectProxy, for comparison."""

    read = written = 0  # class attributes: assignments stay on the proxy

    def __init__(self, inner: Any, encoding: str) -> None:
        super().__init__(inner)
        self._self_ser, self._self_de = inner.serialize, inner.deserialize
        self._self_encoding = encoding

    def serialize(self, key: Any, value: Any) -> Any:
        result = self._self_ser(key, value)
        try:
            data = result[0]
            self.written += (
                len(data) if isinstance(data, bytes) else len(str(data).encode(self._self_encoding))
            )
        except Exception:
            pass
        return result

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        self.read += len(value)
        return self._self_de(key, value, flags)


def serde_costs(number: int = 10_000, repeat: int = 25) -> None:
    """Per call, best of ``repeat`` interleaved windows of ``number`` calls on the thread's
    CPU clock: serialize and deserialize of a 100-byte value."""
    import timeit

    from pymemcache.serde import pickle_serde  # type: ignore[import-untyped]

    try:
        from sflow_app.memcache._data import CountingSerde
    except ImportError:  # an older package (compare.py): the log's serde lines only
        print("serde: no CountingSerde in this version of the package")
        return

    data, flags = pickle_serde.serialize("k", VALUE)
    serdes = {
        "pickle_serde alone": pickle_serde,
        "sflow counting serde (__slots__)": CountingSerde(pickle_serde, "ascii"),
        "the same as a wrapt.ObjectProxy": ProxySerde(pickle_serde, "ascii"),
    }
    timers = {
        name: (
            timeit.Timer(partial(serde.serialize, "k", VALUE), time.thread_time),
            timeit.Timer(partial(serde.deserialize, "k", data, flags), time.thread_time),
        )
        for name, serde in serdes.items()
    }
    best = {name: [float("inf"), float("inf")] for name in serdes}
    for _ in range(repeat):
        for name, pair in timers.items():
            for i, timer in enumerate(pair):
                best[name][i] = min(best[name][i], timer.timeit(number))
    print(f"serde, CPU per call (best of {repeat} interleaved windows of {number} calls)")
    print(f"  {'':34s} {'serialize':>10s} {'deserialize':>12s}")
    for name, (ser, de) in best.items():
        print(f"  {name:34s} {ser / number * 1e6:8.3f}us {de / number * 1e6:10.3f}us")


def main() -> None:
    parser = bench_args(__doc__)
    parser.add_argument("--ops", type=int, default=900, help="operations per round")
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help="interleaved rounds (default: $BENCH_ROUNDS, else 60)",
    )
    opts = parser.parse_args()
    if opts.smoke:
        opts.ops, opts.rounds = 30, 2
    report = Report("memcache")

    sink = Sink()  # the collector (bound, never read) and the hsflowd.auto pointing at it
    os.environ.setdefault("SFLOW_APP_STATE_DIR", scratch())
    import sflow_app.memcache as sfm
    from sflow_app._agent import AGENT

    AGENT.reload()
    proc, port = start_memcached()
    client = Client(("127.0.0.1", port), default_noreply=False)
    client.set("hot", VALUE)

    def sflow(sampling: int) -> tuple[Callable[[], None], Callable[[], None]]:
        rate = sink.rate(sampling)

        def setup() -> None:
            rate()  # the file, then the agent reloads it
            sfm.instrument()

        return setup, sfm.uninstrument

    originals = {name: Client.__dict__[name] for name in ("_fetch_cmd", "_store_cmd", "_misc_cmd")}
    fetch, store, misc = originals.values()

    # Pass-throughs with pymemcache 4's signatures, as sflow_app's own replacements have.
    def _fetch_cmd(
        self: Client, name: Any, keys: Any, expect_cas: Any, key_prefix: Any = b""
    ) -> Any:
        return fetch(self, name, keys, expect_cas, key_prefix)

    def _store_cmd(
        self: Client,
        name: Any,
        values: Any,
        expire: Any,
        noreply: Any,
        flags: Any = None,
        cas: Any = None,
    ) -> Any:
        return store(self, name, values, expire, noreply, flags, cas)

    def _misc_cmd(
        self: Client, cmds: Any, cmd_name: Any, noreply: Any, end_tokens: Any = None
    ) -> Any:
        return misc(self, cmds, cmd_name, noreply, end_tokens)

    # The least exact counting costs: gets, hits, misses, sets and value bytes, into
    # itertools counters and a deque (no sampling decision, no serde check).
    hit, miss, sets = (itertools.count().__next__ for _ in range(3))
    amounts: collections.deque[int] = collections.deque(maxlen=1024)

    def _fetch_counting(
        self: Client, name: Any, keys: Any, expect_cas: Any, key_prefix: Any = b""
    ) -> Any:
        result = fetch(self, name, keys, expect_cas, key_prefix)
        if len(result):
            hit()
            amounts.append(sum(len(v) for v in result.values()))
        else:
            miss()
        return result

    def _store_counting(
        self: Client,
        name: Any,
        values: Any,
        expire: Any,
        noreply: Any,
        flags: Any = None,
        cas: Any = None,
    ) -> Any:
        result = store(self, name, values, expire, noreply, flags, cas)
        sets()
        amounts.append(sum(len(v) for v in values.values()))
        return result

    def counting_floor_on() -> None:
        """Pass-throughs that count what memcache_counters' hot fields need, as plainly
        as Python can: what exact counting costs by itself."""
        Client._fetch_cmd = _fetch_counting
        Client._store_cmd = _store_counting
        Client._misc_cmd = _misc_cmd

    def floor_on() -> None:
        """The least any Python-level hook on the round trip costs: a plain pass-through."""
        for method in (_fetch_cmd, _store_cmd, _misc_cmd):
            setattr(Client, method.__name__, method)

    def passthrough(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return wrapped(*args, **kwargs)

    def wrapt_floor_on() -> None:
        """The same pass-through as a wrapt FunctionWrapper: what wrapt itself costs."""
        for name, original in originals.items():
            setattr(Client, name, wrapt.FunctionWrapper(original, passthrough))

    def floor_off() -> None:
        for name, original in originals.items():
            setattr(Client, name, original)

    variants: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "bare pymemcache": (lambda: None, lambda: None),
        "floor: plain pass-through": (floor_on, floor_off),
        "floor: wrapt pass-through": (wrapt_floor_on, floor_off),
        "floor: counting": (counting_floor_on, floor_off),
        "sflow, sampling off": sflow(0),
        "sflow, 1-in-100": sflow(100),
    }
    try:
        from opentelemetry.instrumentation.pymemcache import PymemcacheInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        provider = TracerProvider(sampler=TraceIdRatioBased(0.01))
        otel = PymemcacheInstrumentor()
        variants["OpenTelemetry, 1 % sampled"] = (
            lambda: otel.instrument(tracer_provider=provider),
            otel.uninstrument,
        )
    except ImportError:
        print("(opentelemetry-instrumentation-pymemcache or -sdk missing: not compared)")

    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    # In memory, the same variants but OpenTelemetry (not the point there).
    fake_variants = {
        name: both for name, both in variants.items() if not name.startswith("OpenTelemetry")
    }
    try:
        for setup, teardown in variants.values():  # warm up every path once
            setup()
            workload(client, 300)
            teardown()
        for i in range(opts.rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                setup, teardown = variants[name]
                setup()
                try:
                    wall, cpu = workload(client, opts.ops)
                finally:
                    teardown()
                walls[name].append(wall)
                cpus[name].append(cpu)
        sampler = AGENT.memcache_source().sampler
        through_sflow = sampler.sample_pool
        repeats = 2 if opts.smoke else max(20, opts.rounds)
        rng, sampler._rng = sampler._rng, EveryNth(100)  # 1-in-100 exactly, in memory
        try:
            fake, loops = in_memory_costs(
                fake_variants,
                repeats,
                1 if opts.smoke else WINDOWS,
                0.0002 if opts.smoke else 0.0015,
            )
        finally:
            sampler._rng = rng
    finally:
        AGENT.shutdown()
        proc.kill()
        proc.wait()
        sink.close()

    ops = opts.ops // 3 * 3
    us = 1e6 / ops
    bare = "bare pymemcache"
    bare_median = statistics.median(walls[bare])
    bare_best = min(walls[bare])
    bare_cpu = statistics.median(cpus[bare])

    def paired(series: dict[str, list[float]], name: str) -> float:
        """The median over the rounds of the round's own ratio to bare's round."""
        return statistics.median(v / b for v, b in zip(series[name], series[bare], strict=True))

    print(
        f"{opts.rounds} interleaved rounds of {ops} operations (get hit, get miss, set "
        f"of {len(VALUE)} B) against memcached on loopback; per operation, median and best "
        f"round,\n  and the ratios to bare: the median of each round's own ratio (wall, "
        f"client CPU)"
    )
    print(
        f"  {'':28s} {'median':>8s} {'best':>8s} {'client CPU':>11s} {'added':>7s}"
        f" {'ratio: wall':>12s} {'CPU':>6s}"
    )
    for name in names:
        median, best = statistics.median(walls[name]), min(walls[name])
        cpu = statistics.median(cpus[name])
        print(
            f"  {name:28s} {median * us:6.2f}us {best * us:6.2f}us {cpu * us:9.2f}us "
            f"{(cpu - bare_cpu) * us:+6.2f}us {paired(walls, name):12.3f} "
            f"{paired(cpus, name):6.3f}"
        )
    print(f"  ({through_sflow} operations through sflow)")

    print(
        f"in memory: the same Client on a fake socket with canned replies (no network, no "
        f"system call; 1-in-100 is every 100th):\n  CPU per call, best of {repeats} x {WINDOWS} "
        f"interleaved windows of {loops} calls; added: over bare"
    )
    print(f"  {'':28s} " + " ".join(f"{op:>9s}" for op in FAKE_OPS))
    print(f"  {bare:28s} " + " ".join(f"{fake[bare][op]:7.3f}us" for op in FAKE_OPS))
    added: dict[str, float] = {}
    for name in names[1:]:
        if name not in fake:
            continue
        per_op = [fake[name][op] - fake[bare][op] for op in FAKE_OPS]
        added[name] = fake[name]["mix"] - fake[bare]["mix"]  # the workload's mix, in turn
        print(f"  {name:28s} " + " ".join(f"{t:+7.3f}us" for t in per_op))

    best_rt, median_rt = bare_best * us, bare_median * us
    print(
        f"ratio to bare pymemcache on loopback, per operation: measured (the paired ratios "
        f"above: wall, client CPU),\n  and estimated = 1 + added CPU in memory (mix) / "
        f"bare's round trip above: its best round ({best_rt:.2f}us, the least disturbed) "
        f"or its median ({median_rt:.2f}us)"
    )
    print(f"  {'':28s} {'measured':>15s} {'estimated':>19s}")
    print(f"  {'':28s} {'wall':>7s} {'CPU':>7s} {'vs best':>9s} {'vs median':>9s}")
    for name in names[1:]:
        wall, cpu = paired(walls, name), paired(cpus, name)
        if name in added:
            estimate = f"{1 + added[name] / best_rt:9.3f} {1 + added[name] / median_rt:9.3f}"
        else:
            estimate = f"{'-':>9s} {'-':>9s}"
        print(f"  {name:28s} {wall:7.3f} {cpu:7.3f} {estimate}")
        if name.startswith(("sflow", "OpenTelemetry", "floor: counting")):
            target = "<= 1.02" if name == "sflow, sampling off" else None
            report.add(f"{name} / bare, wall (median)", wall, "x", target)
    print(
        "  (an estimate, not a measurement: it assumes the added code costs as much next to "
        "real socket calls as in memory,\n  where it costs more after each blocking recv "
        "(see the doc string), and leaves out\n  the exporter thread's encoding and sending "
        "of samples)"
    )
    serde_costs(200 if opts.smoke else 10_000, 2 if opts.smoke else 25)
    report.write(opts.json)


if __name__ == "__main__":
    main()

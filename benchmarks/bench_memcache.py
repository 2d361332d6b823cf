"""pymemcache instrumentation cost, as a ratio to bare pymemcache in the same run.

A real memcached on a loopback port (started here; ``scripts/setup --with-servers``
installs it) serves one ``pymemcache`` Client doing a get hit, a get miss and a set of a
100-byte value, in turn. Measured, interleaved round by round so that drift and noise hit
every variant alike:

- bare pymemcache (nothing instrumented);
- two floors: the three round-trip methods replaced by pass-throughs -- plain functions
  (the least any Python-level hook there costs; sflow_app's replacements are plain
  functions too) and wrapt FunctionWrappers (what wrapt itself would cost per round trip);
- sflow_app.memcache.instrument() with sampling off (only the unsampled path; goal <= 1.02);
- the same at 1-in-100 (the exporter thread runs and sends to a loopback UDP socket
  nobody reads);
- OpenTelemetry's PymemcacheInstrumentor at 1 % (SDK TracerProvider with
  TraceIdRatioBased(0.01), no span processor or exporter), for comparison.

Rounds are short and many, the variants' order rotates every round, and each variant
reports its median and best round (wall clock) plus the client thread's CPU time per
operation: on a shared or loaded machine the median is the figure to read, and the CPU
column shows the added work without the scheduler's noise. Printed, not asserted.

Then, without the server, the per-call cost of the counting serde a client with a
non-default serde gets (sflow_app's ``__slots__`` class, and the same as a
``wrapt.ObjectProxy``) over pickle_serde alone.

    .venv/bin/python benchmarks/bench_memcache.py [--ops N] [--rounds N]

``BENCH_ROUNDS`` sets the default number of rounds (40), as for bench_wsgi/bench_asgi.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import wrapt
from _harness import Sink
from pymemcache.client.base import Client

VALUE = b"v" * 100
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 40))


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
            self.written += (len(data) if isinstance(data, bytes)
                             else len(str(data).encode(self._self_encoding)))
        except Exception:
            pass
        return result

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        self.read += len(value)
        return self._self_de(key, value, flags)


def serde_costs(number: int = 200_000, repeat: int = 7) -> None:
    """Per call, best of ``repeat``: serialize and deserialize of a 100-byte value."""
    import timeit

    from pymemcache.serde import pickle_serde

    from sflow_app.memcache import _CountingSerde

    data, flags = pickle_serde.serialize("k", VALUE)
    serdes = {"pickle_serde alone": pickle_serde,
              "sflow counting serde (__slots__)": _CountingSerde(pickle_serde, "ascii"),
              "the same as a wrapt.ObjectProxy": ProxySerde(pickle_serde, "ascii")}
    print(f"serde, per call (best of {repeat} x {number})")
    print(f"  {'':34s} {'serialize':>10s} {'deserialize':>12s}")
    for name, serde in serdes.items():
        ser = min(timeit.repeat(lambda s=serde: s.serialize("k", VALUE), number=number,
                                repeat=repeat)) / number * 1e6
        de = min(timeit.repeat(lambda s=serde: s.deserialize("k", data, flags),
                               number=number, repeat=repeat)) / number * 1e6
        print(f"  {name:34s} {ser:8.3f}us {de:10.3f}us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=1500, help="operations per round")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="interleaved rounds (default: $BENCH_ROUNDS, else 40)")
    opts = parser.parse_args()

    sink = Sink()  # the collector (bound, never read) and the hsflowd.auto pointing at it
    os.environ.setdefault("SFLOW_APP_STATE_DIR", tempfile.mkdtemp(prefix="sfa-"))
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

    originals = {name: Client.__dict__[name] for name in ("_fetch_cmd", "_store_cmd",
                                                          "_misc_cmd")}

    def floor_on() -> None:
        """The least any Python-level hook on the round trip costs: a pass-through."""
        for name, original in originals.items():
            def method(self: Client, *args: object, _original=original, **kwargs: object):
                return _original(self, *args, **kwargs)
            setattr(Client, name, method)

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
            lambda: otel.instrument(tracer_provider=provider), otel.uninstrument)
    except ImportError:
        print("(opentelemetry-instrumentation-pymemcache or -sdk missing: not compared)")

    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    try:
        for setup, teardown in variants.values():  # warm up every path once
            setup()
            workload(client, 300)
            teardown()
        for i in range(opts.rounds):
            for name in names[i % len(names):] + names[:i % len(names)]:
                setup, teardown = variants[name]
                setup()
                try:
                    wall, cpu = workload(client, opts.ops)
                finally:
                    teardown()
                walls[name].append(wall)
                cpus[name].append(cpu)
    finally:
        source = AGENT.memcache_source()
        AGENT.shutdown()
        proc.kill()
        proc.wait()
        sink.close()

    ops = opts.ops // 3 * 3
    us = 1e6 / ops
    bare_median = statistics.median(walls["bare pymemcache"])
    bare_best = min(walls["bare pymemcache"])
    bare_cpu = statistics.median(cpus["bare pymemcache"])
    print(f"{opts.rounds} interleaved rounds of {ops} operations (get hit, get miss, set "
          f"of {len(VALUE)} B) against memcached on loopback")
    print(f"  {'':28s} {'median':>8s} {'ratio':>6s} {'best':>8s} {'ratio':>6s}"
          f" {'client CPU':>11s} {'added':>7s}")
    for name in names:
        median, best = statistics.median(walls[name]), min(walls[name])
        cpu = statistics.median(cpus[name])
        print(f"  {name:28s} {median * us:6.2f}us {median / bare_median:6.3f} "
              f"{best * us:6.2f}us {best / bare_best:6.3f} {cpu * us:9.2f}us "
              f"{(cpu - bare_cpu) * us:+6.2f}us")
    print(f"  ({source.sampler.sample_pool} operations through sflow)")
    serde_costs()


if __name__ == "__main__":
    main()

"""pymemcache instrumentation cost, as a ratio to bare pymemcache in the same run.

A real memcached on a loopback port (started here; ``scripts/setup --with-servers``
installs it) serves one ``pymemcache`` Client doing a get hit, a get miss and a set of a
100-byte value, in turn. Measured, interleaved round by round so that drift and noise hit
every variant alike:

- bare pymemcache (nothing instrumented);
- a floor: the three round-trip methods replaced by pass-through functions, the least any
  Python-level hook there costs;
- sflow_app.memcache.instrument() with sampling off (only the unsampled path; goal <= 1.02);
- the same at 1-in-100 (the exporter thread runs and sends to a loopback UDP socket
  nobody reads);
- OpenTelemetry's PymemcacheInstrumentor at 1 % (SDK TracerProvider with
  TraceIdRatioBased(0.01), no span processor or exporter), for comparison.

Rounds are short and many, the variants' order rotates every round, and each variant
reports its median and best round (wall clock) plus the client thread's CPU time per
operation: on a shared or loaded machine the median is the figure to read, and the CPU
column shows the added work without the scheduler's noise. Printed, not asserted.

    .venv/bin/python benchmarks/bench_memcache.py [--ops N] [--rounds N]
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
from pathlib import Path

from pymemcache.client.base import Client

VALUE = b"v" * 100


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=1500, help="operations per round")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds")
    opts = parser.parse_args()

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))  # the collector: bound, never read
    config = Path(tempfile.mkdtemp()) / "hsflowd.auto"

    def auto(sampling: int) -> None:
        config.write_text(f"rev_start=1\nsampling={sampling}\npolling=20\n"
                          f"collector=127.0.0.1 {sink.getsockname()[1]}\n"
                          f"agentIP=127.0.0.1\nds_index=1\nrev_end=1\n")

    auto(0)
    os.environ["SFLOW_APP_CONFIG"] = str(config)
    os.environ.setdefault("SFLOW_APP_STATE_DIR", tempfile.mkdtemp(prefix="sfa-"))
    import sflow_app.memcache as sfm
    from sflow_app._agent import AGENT

    AGENT.reload()
    proc, port = start_memcached()
    client = Client(("127.0.0.1", port), default_noreply=False)
    client.set("hot", VALUE)

    def sflow(sampling: int) -> tuple[Callable[[], None], Callable[[], None]]:
        def setup() -> None:
            auto(sampling)
            AGENT.reload()
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

    def floor_off() -> None:
        for name, original in originals.items():
            setattr(Client, name, original)

    variants: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "bare pymemcache": (lambda: None, lambda: None),
        "floor: pass-through hook": (floor_on, floor_off),
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


if __name__ == "__main__":
    main()

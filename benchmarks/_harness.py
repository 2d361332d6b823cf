"""What the benchmarks share: a collector nobody reads (and one that counts, in its own
process), an hsflowd.auto whose sampling rate each measured variant sets, interleaved
timing, CPU time of threads and processes, and the figures each benchmark reports to the
suite (``benchmarks/run.py``, run by ``./scripts/bench``)."""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def scratch(prefix: str = "sfa-bench-") -> str:
    """A new temporary directory, removed with what is in it when this process exits (the
    servers and workers that wrote there are stopped by then)."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


def isolate() -> None:
    """A state directory of our own: the agent's shared state file (pre-fork sharing and
    sender election) must not be shared with other processes on the machine."""
    if "SFLOW_APP_STATE_DIR" not in os.environ:
        os.environ["SFLOW_APP_STATE_DIR"] = scratch()


class Sink:
    """A loopback collector (bound, never read) and the config file pointing at it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.config = Path(scratch()) / "hsflowd.auto"
        self.write(0)
        os.environ["SFLOW_APP_CONFIG"] = str(self.config)
        isolate()

    def write(self, sampling: int) -> None:
        # Written beside and renamed over (hsflowd rewrites in place; its readers rely on
        # the rev guard): the exporter's own re-check never reads it half-written.
        part = self.config.with_suffix(".part")
        part.write_text(
            f"rev_start=1\nsampling={sampling}\npolling=30\n"
            f"collector=127.0.0.1 {self.sock.getsockname()[1]}\n"
            f"agentIP=127.0.0.1\nds_index=1\nrev_end=1\n"
        )
        os.replace(part, self.config)

    def rate(self, sampling: int) -> Callable[[], None]:
        """A setter run before each measurement of a variant: file, then agent reload."""
        from sflow_app._agent import AGENT

        def apply() -> None:
            self.write(sampling)
            AGENT.reload()

        return apply

    def close(self) -> None:
        self.sock.close()


def report_flushed() -> None:
    """Flush the agent and say how much went through it."""
    from sflow_app._agent import AGENT

    source = AGENT.http_source()
    AGENT.shutdown()  # flush, so the count below is complete
    print(
        f"  ({source.sampler.sample_pool} requests through sflow, "
        f"{AGENT.stats['samples']} samples sent)"
    )


# --- the suite: figures, targets, JSON ------------------------------------------------------


def median_costs(
    apps: dict[str, T],
    seconds: Callable[[T], float],
    rounds: int,
    repeats: int,
    before: dict[str, Callable[[], None]],
) -> dict[str, float]:
    """Microseconds per request, median of ``repeats`` interleaved runs whose order rotates
    from repeat to repeat, so drift and noise on a shared machine hit every variant alike."""
    times: dict[str, list[float]] = {name: [] for name in apps}
    names = list(apps)
    for name in names:  # warm every path (and the agent's threads) up once, unmeasured
        before.get(name, lambda: None)()
        seconds(apps[name])
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            before.get(name, lambda: None)()
            times[name].append(seconds(apps[name]))
    return {name: statistics.median(t) / rounds * 1e6 for name, t in times.items()}


class Report:
    """The figures of one benchmark: printed as they come, written as JSON for the suite.

    A figure may carry a target (``"<= 1.3"``, ``">= 0.98"``): pass/fail is worked out here,
    and is information only (a missed target never makes a benchmark fail)."""

    def __init__(self, bench: str) -> None:
        self.bench = bench
        self.figures: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}

    def add(
        self, name: str, value: float, unit: str, target: str | None = None, note: str = ""
    ) -> None:
        ok = None if target is None else meets(value, target)
        self.figures.append(
            {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note}
        )
        mark = "" if ok is None else ("  PASS" if ok else "  FAIL")
        goal = f"  (target {target})" if target else ""
        print(f"  = {name}: {fmt(value)} {unit}{goal}{mark}{'  ' + note if note else ''}")

    def write(self, path: str | None) -> None:
        if path:
            # Which package was measured (compare.py checks), imported here or not.
            spec = importlib.util.find_spec("sflow_app")
            data = {
                "bench": self.bench,
                "figures": self.figures,
                "info": self.info,
                "package": spec.origin if spec else None,
            }
            Path(path).write_text(json.dumps(data, indent=1, default=str))


def meets(value: float, target: str) -> bool:
    op, _, bound = target.partition(" ")
    if not math.isfinite(value):
        return False
    return value <= float(bound) if op == "<=" else value >= float(bound)


def fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def bench_args(doc: str | None, **defaults: Any) -> argparse.ArgumentParser:
    """Every benchmark's command line: ``--smoke`` (tiny counts: the harness works, the
    figures mean nothing) and ``--json PATH`` (its figures, for ``benchmarks/run.py``)."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts: check the harness")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    return parser


# --- CPU time of threads and processes ---------------------------------------------------


def other_threads_cpu() -> float:
    """CPU seconds used so far by every thread of this process but the calling one: the
    agent's exporter (and config watcher), measured on each thread's own clock."""
    me = threading.get_ident()
    total = 0.0
    for thread in threading.enumerate():
        if thread.ident is None or thread.ident == me:
            continue
        try:
            total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, AttributeError):
            pass  # ended meanwhile
    return total


def threads_cpu(pid: int) -> float:
    """CPU seconds of a process's live threads, in ns resolution (each thread's
    /proc/<pid>/task/<tid>/schedstat): for small amounts, where /proc/<pid>/stat's clock
    ticks (10 ms) are too coarse. Threads that ended are not in it."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(task.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def thread_cpu(tid: int) -> float:
    """CPU seconds of one thread of this process (its native id), in ns resolution."""
    try:
        return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server's master and workers)."""
    found = [pid]
    for p in found:
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                found += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants, in ns resolution (their threads'
    schedstat): /proc/<pid>/stat's 10 ms ticks are 1-2 % of a one-second round, per
    reading. Threads that ended between two readings are missed: fine for servers whose
    threads live as long as their worker (measured rounds recycle none)."""
    return sum(threads_cpu(p) for p in process_tree(pid))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now, below the kernel's ephemeral range: a port from that range
    (what binding to 0 gives) can be taken by any client's connect() before the server
    binds it (seen under load: gunicorn's "Address already in use")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    for port in random.sample(range(10000, max(first, 10001)), min(200, max(first - 10000, 1))):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(family, socket.SOCK_STREAM) as s:  # none free there: any port
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- a counting collector in its own process ---------------------------------------------


class Collector:
    """benchmarks/_collector.py in a subprocess: counts the flow samples that reach it, so
    delivery is measured where a collector sees it, and its CPU is not ours."""

    def __init__(self) -> None:
        here = Path(__file__).parent
        isolate()
        self.proc = subprocess.Popen(
            [sys.executable, str(here / "_collector.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def flows(self) -> int:
        """Flow samples received so far."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline().split()[0])

    def auto(self, path: Path, sampling: int, polling: int = 20) -> Path:
        path.write_text(
            f"rev_start=1\nsampling={sampling}\npolling={polling}\n"
            f"collector=127.0.0.1 {self.port}\nagentIP=127.0.0.1\nds_index=1\nrev_end=1\n"
        )
        return path

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- in-process: what a sampled request costs, threads ------------------------------------


def queue_length() -> int:
    import sflow_app

    queue = sflow_app.status().get("queue") or {}
    return int(queue.get("length", 0))


def drops() -> int:
    """Samples the agent dropped so far: the data sources' ``drops`` (what the wire says)."""
    import sflow_app

    sources = sflow_app.status().get("data_sources") or {}
    return sum(int(s.get("drops", 0)) for s in sources.values())


def wait_drained(timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while queue_length() and time.monotonic() < deadline:
        time.sleep(0.0005)


def sampled_costs(
    variants: dict[str, tuple[Callable[[int], None], Callable[[], None]]],
    total: int,
    burst: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """(request thread, in all: request thread + exporter) CPU microseconds per request of
    each variant: ``(run, before)``, where ``run(n)`` serves ``n`` requests and ``before()``
    sets the variant up (its sampling rate).

    The agent's thread is stopped for this: its passes are made right here after each
    burst (``AGENT.tick``), on the same thread CPU clock, until the queue is empty -- the
    samples encoded and sent. So no other thread's time is mixed in, no sample is dropped,
    and nothing sleeps between the clocks (a thread back from a sleep runs cold). Bursts of
    ``burst`` requests, the variants taking turns burst by burst (order rotating); the
    figure is each variant's median burst: paired this finely, drift and other load on a
    shared machine hit every variant alike, and one preempted burst does not move it. A
    live exporter thread adds its wake-ups, per pass rather than per sample."""
    from sflow_app._agent import AGENT

    AGENT.shutdown()  # stop the thread (its queue flushed); requests no longer start it
    autostart, AGENT._autostart = AGENT._autostart, False

    runner = getattr(AGENT, "runner", AGENT)  # older agents kept the queue themselves
    queue = getattr(runner, "queue", None)
    if queue is None:
        queue = getattr(runner, "_queue", None)
    assert queue is not None, "no queue found on the agent"

    def export() -> None:
        for _ in range(100):  # a pass takes everything queued; a few more at most
            AGENT.tick(time.monotonic())
            if not queue:  # (status() would be on the clock, and reloads when stopped)
                return

    names = list(variants)
    own: dict[str, list[float]] = {name: [] for name in names}
    whole: dict[str, list[float]] = {name: [] for name in names}
    try:
        for i in range(-1, max(1, total // burst)):  # -1: warm-up, unmeasured
            for name in names[i % len(names) :] + names[: i % len(names)]:
                run, before = variants[name]
                before()
                export()  # whatever the change of settings queued, unmeasured
                started = time.thread_time()
                run(burst)
                served = time.thread_time()
                export()
                done = time.thread_time()
                if i >= 0:
                    own[name].append((served - started) / burst * 1e6)
                    whole[name].append((done - started) / burst * 1e6)
    finally:
        AGENT._autostart = autostart
    return (
        {name: statistics.median(v) for name, v in own.items()},
        {name: statistics.median(v) for name, v in whole.items()},
    )


def add_sampled(
    report: Report, own: dict[str, float], whole: dict[str, float], bare: str, off: str, one: str
) -> None:
    """The sampled-request figures of ``sampled_costs``' results (``one``: 1-in-1)."""
    print(
        "per request, CPU us: request thread / in all (request thread + exporter): "
        + ", ".join(f"{n} {own[n]:.2f} / {whole[n]:.2f}" for n in own)
    )
    report.add(
        "sampled request, in all",
        whole[one] - whole[bare],
        "us CPU",
        "<= 10",
        "added to a bare request, request thread + exporter",
    )
    report.add(
        "sampled / unsampled, request thread",
        ratio(own[one], own[off]),
        "x",
        "<= 5",
        "totals, trivial app included",
    )


def threaded_cpu(serve: Callable[[int], None], threads: int, total: int) -> float:
    """Process CPU microseconds per request (every thread, the exporter's too) when
    ``threads`` threads each call ``serve(total // threads)`` at once."""
    each = total // threads
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        serve(each)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    started = time.process_time()
    barrier.wait()
    for t in pool:
        t.join()
    return (time.process_time() - started) / (each * threads) * 1e6

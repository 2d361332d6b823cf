"""Real servers under load: gunicorn (sync worker) and uvicorn, bare and behind sflow_app.

Each server runs one worker. What the target compares runs in one worker: its app serves
``/b`` bare, ``/f`` through the floor (method and status-class counting only, the least
any per-request counter does: ``_floor.py``) and ``/s`` through sflow_app's middleware at
1-in-100 (``_server_sflow.paths_*``), so bare, floor and sflow are the same process -- same
memory layout, same CPU, same neighbours -- and only the path loaded differs. Beside it, a
bare server (``bare process``: the app alone, sflow_app never imported) and one sampling
1-in-1, each with its own hsflowd.auto pointing at a loopback collector nobody reads. The
variants are loaded in turn, round after round, the order rotating, by wrk
(``wrk -t1 -c4 --latency``) or, where wrk is not installed, a small Python load generator
(``_loadgen.py``). With two CPUs or more the servers run on the last one and wrk on the
others (``sched_setaffinity``): identical bare servers' CPU per request spread by 6-10 %
unpinned, 3 % pinned (benchmarks/README.md). Measured: the server's CPU per request
(every thread of every process of the server; the exporter thread's included) and wrk's
p99 latency. Wall-clock requests/s is not used: on a shared 2-core machine it is +-15 %
noise, CPU per request is what the middleware changes.

Throughput first, from blocks (``_blocks.py``): the paths worker is loaded for 20 s with
blocks of 2,000 requests to ``/b``, ``/f``, ``/s`` in turn (the order rotating), and reads
its own CPU clock (ns, every thread) where the path changes, so each block's CPU per
request is exact and each comparison is within a second of its pair. "throughput vs bare"
= the median over cycles of blocks of ``/b``'s CPU per request / ``/s``'s (target >= 0.98),
with the middle half of those ratios; the same for the floor (what counting alone costs in
this server: code run once a request, after the worker blocked in the kernel, runs with
cold caches and costs several times what it costs in a loop) and for sflow against the
floor. p99 at 1-in-100 / bare's (target <= 1.10): ``/b`` and ``/s`` loaded at once by two
wrk runs of 2 connections, 12 rounds of 1 s, the median of the rounds' own ratios -- the
two paths share the worker's queue and the machine's hiccups, so their tails differ only
by what each path does (a round's p99 alone varies by +-20 % here). What that leaves out
is work ours causes for both paths alike: the exporter's passes for the samples (at
1-in-100 under uvicorn ~27 wake-ups and ~3.5 ms of CPU a second). Then rounds: every
variant loaded for 1 s in turn, 12 times -- the same p99 ratio from loads in turn (which
has that work in it, and the noise), the same throughput ratio from the rounds' CPU
(noisier than the blocks), the ratio against the bare process (different processes:
their spread, a few per cent, is in it), and the CPU a request sampled at 1-in-1 adds
over the bare process. CPU is read in ns (schedstat); /proc's 10 ms ticks were 1-2 % of a
round.

    .venv/bin/python benchmarks/bench_servers.py [--smoke] [--json PATH] [--python-load]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

from _blocks import BLOCK, paired_ratios, summary
from _harness import Report, Sink, bench_args, free_port, ratio, scratch, tree_cpu
from _loadgen import load, load_blocks, load_together, wrk_path

HERE = Path(__file__).resolve().parent
# variant -> (process, path loaded): the first three are paths of one worker.
VARIANTS = {
    "bare": ("paths", "/b"),
    "floor": ("paths", "/f"),
    "sflow 1-in-100": ("paths", "/s"),
    "bare process": ("bare", "/"),
    "sflow 1-in-1": ("sflow", "/"),
}
SAMPLING = {"paths": 100, "bare": 0, "sflow": 1}
APP = {"paths": "_server_sflow:paths", "bare": "_server_apps:bare", "sflow": "_server_sflow:sflow"}


def command(server: str, process: str, port: int) -> list[str]:
    if server == "gunicorn":
        return [
            sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}",
            "--chdir", str(HERE), "--log-level", "warning", f"{APP[process]}_wsgi",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning", "--no-access-log",
        f"{APP[process]}_asgi",
    ]  # fmt: skip


def cpu_split() -> tuple[set[int] | None, set[int] | None]:
    """(the servers' CPUs, the load generator's): the last CPU and the others, or
    (None, None) with one CPU (or no affinity to set)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                r.read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer in {timeout} s")


def start(
    server: str, process: str, sink: Sink, state: str, cpus: set[int] | None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(os.environ, SFLOW_APP_STATE_DIR=state, SFLOW_APP_MAX_SAMPLES="0")
    sampling = SAMPLING[process]
    if sampling:
        auto = Path(scratch()) / "hsflowd.auto"
        auto.write_text(sink.config.read_text().replace("sampling=0", f"sampling={sampling}"))
        env["SFLOW_APP_CONFIG"] = str(auto)
    proc = subprocess.Popen(
        command(server, process, port),
        env=env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    wait_ready(proc, port)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(
    procs: dict[str, tuple[subprocess.Popen[bytes], int]],
    seconds: float,
    use_wrk: bool,
    load_cpus: set[int] | None,
    variant: str,
) -> tuple[float, float]:
    """(the server's CPU us per request, p99 ms) of one round of ``variant``."""
    process, path = VARIANTS[variant]
    proc, port = procs[process]
    before = tree_cpu(proc.pid)
    done, tail = load(port, seconds, 4, use_wrk, path, load_cpus)
    return (tree_cpu(proc.pid) - before) / done * 1e6, tail


def blocks(port: int, seconds: float, use_wrk: bool, cpus: set[int] | None, block: int) -> Any:
    """The paths worker's (path, CPU ns, requests) blocks under ``seconds`` of block load."""
    url = f"http://127.0.0.1:{port}/blocks"
    with urllib.request.urlopen(url + "/start", timeout=10) as r:
        r.read()
    load_blocks(port, seconds, 4, use_wrk, cpus, block)
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def own_ratios(top: list[float], bottom: list[float]) -> tuple[float, float, float]:
    """The median of the rounds' own ``top / bottom`` ratios (the paths of one worker,
    loaded seconds apart: drift hits both alike), and the middle half's ends."""
    return summary([ratio(t, b) for t, b in zip(top, bottom, strict=True)])


def main() -> None:
    parser = bench_args(__doc__)
    parser.add_argument("--python-load", action="store_true", help="do not use wrk")
    opts = parser.parse_args()
    use_wrk = not opts.python_load and wrk_path() is not None
    rounds, seconds = (1, 0.5) if opts.smoke else (12, 1.0)
    if use_wrk and opts.smoke:
        seconds = 1.0  # wrk's shortest run
    # The blocks: the throughput figures (their load, whole seconds for wrk).
    block_seconds, block = (seconds, 100) if opts.smoke else (20.0, BLOCK)
    servers_cpus, load_cpus = cpu_split()
    report = Report("servers")
    report.info["load"] = "wrk -t1 -c4" if use_wrk else "python (_loadgen.py), 4 connections"
    print(
        f"load: {report.info['load']}, {block_seconds:g} s of blocks of {block} requests "
        f"per path, {rounds} rounds of {seconds:g} s per variant; "
        + (f"servers on CPU {servers_cpus}, load on {load_cpus}" if servers_cpus else "unpinned")
    )
    sink = Sink()
    names = list(VARIANTS)
    for server in ("gunicorn", "uvicorn"):
        procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            for process in SAMPLING:
                state = scratch()
                procs[process] = start(server, process, sink, state, servers_cpus)
            cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
            p99: dict[str, list[float]] = {v: [] for v in VARIANTS}
            run = partial(measure, procs, seconds, use_wrk, load_cpus)
            for variant in names:  # warm-up, unmeasured
                run(variant)
            port = procs["paths"][1]
            cycles = blocks(port, block_seconds, use_wrk, load_cpus, block)
            # p99: /b and /s loaded at once (2 connections each), round after round.
            together = [
                load_together(port, seconds, 2, use_wrk, ("/b", "/s"), load_cpus)
                for _ in range(rounds)
            ]
            for i in range(rounds):
                for variant in names[i % len(names) :] + names[: i % len(names)]:
                    per_request, tail = run(variant)
                    cpu[variant].append(per_request)
                    p99[variant].append(tail)
        finally:
            for proc, _ in procs.values():
                stop(proc)
        c = {v: statistics.median(x) for v, x in cpu.items()}
        p = {v: statistics.median(x) for v, x in p99.items()}
        print(f"{server}: server CPU us/request and p99 ms (medians of {rounds} rounds)")
        for v in VARIANTS:
            rounds_p99 = " ".join(f"{x:.2f}" for x in p99[v])
            print(f"  {v:16s} {c[v]:8.1f} us  {p[v]:7.2f} ms  (p99 by round: {rounds_p99})")
        report.add(f"{server} bare: server CPU per request", c["bare"], "us")

        least = block // 2
        for path, name, target in (("/f", "floor", None), ("/s", "1-in-100", ">= 0.98")):
            pairs = paired_ratios(cycles, "/b", path, least)
            median, low, high = summary(pairs)
            report.add(
                f"{server} {name}: throughput vs bare (CPU/request)",
                median,
                "x",
                target,
                f"{len(pairs)} cycles of blocks, middle half {low:.3f}-{high:.3f}",
            )
        pairs = paired_ratios(cycles, "/f", "/s", least)
        median, low, high = summary(pairs)
        report.add(
            f"{server} 1-in-100: throughput vs the floor (CPU/request)",
            median,
            "x",
            None,
            f"what sflow_app costs beyond counting; middle half {low:.3f}-{high:.3f}",
        )
        # The same from the rounds (one-second loads of each path in turn), as before.
        median, low, high = own_ratios(cpu["bare"], cpu["sflow 1-in-100"])
        report.add(
            f"{server} 1-in-100: throughput vs bare, rounds (CPU/request)",
            median,
            "x",
            None,
            f"rounds' own ratios, middle half {low:.3f}-{high:.3f}",
        )
        median, low, high = own_ratios([s[1] for _, s in together], [b[1] for b, _ in together])
        report.add(
            f"{server} 1-in-100: p99 vs bare",
            median,
            "x",
            "<= 1.1",
            f"paths loaded at once, {rounds} rounds, middle half {low:.3f}-{high:.3f}",
        )
        median, low, high = own_ratios(p99["sflow 1-in-100"], p99["bare"])
        report.add(
            f"{server} 1-in-100: p99 vs bare, rounds",
            median,
            "x",
            None,
            f"paths loaded in turn: rounds' own ratios, middle half {low:.3f}-{high:.3f}",
        )
        report.add(
            f"{server} 1-in-100: throughput vs a bare process",
            ratio(c["bare process"], c["sflow 1-in-100"]),
            "x",
            None,
            "another process: its spread (a few %) is in it",
        )
        report.add(
            f"{server} 1-in-1: CPU added per request", c["sflow 1-in-1"] - c["bare process"], "us"
        )
    sink.close()
    report.write(opts.json)


if __name__ == "__main__":
    main()

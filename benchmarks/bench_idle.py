"""Idle CPU per worker: what the agent costs a process that serves no traffic.

Four "workers" of each kind run side by side (``_idle_worker.py``): bare, and with
sflow_app's WSGI middleware, each having served one request (so sflow's exporter runs)
and then idle, with hsflowd.auto's ``polling=20``. Their CPU (user + system, from /proc)
is read over the same window after a settling second, in ns resolution (the threads'
/proc schedstat); reported per worker in ms of CPU per second, sflow's minus bare's
(target <= 0.5 ms/s). The window is one polling interval: each worker's periodic counter
poll falls in it once, whatever its random first offset (with a shorter window, whether
a poll fell in it decided the figure).

    .venv/bin/python benchmarks/bench_idle.py [--smoke] [--json PATH]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from _harness import Report, Sink, bench_args, scratch, threads_cpu

HERE = Path(__file__).resolve().parent
WORKERS = 4  # per kind: averages the scheduler noise of tiny CPU figures
POLLING = 20  # seconds: hsflowd's default


def main() -> None:
    opts = bench_args(__doc__).parse_args()
    window = 1.0 if opts.smoke else float(POLLING)
    report = Report("idle")
    sink = Sink()
    sink.config.write_text(sink.config.read_text().replace("sampling=0", "sampling=100"))
    sink.config.write_text(sink.config.read_text().replace("polling=30", f"polling={POLLING}"))
    procs: dict[str, list[subprocess.Popen[str]]] = {"bare": [], "sflow": []}
    try:
        for kind, group in procs.items():
            for _ in range(WORKERS):
                env = dict(
                    os.environ,
                    SFLOW_APP_STATE_DIR=scratch(),
                    SFLOW_APP_DS_INDEX="8000",
                )
                proc = subprocess.Popen(
                    [sys.executable, str(HERE / "_idle_worker.py"), kind],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
                group.append(proc)
        for group in procs.values():
            for proc in group:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError("an idle worker did not start")
        time.sleep(0.5 if opts.smoke else 1.0)
        before = {k: [threads_cpu(p.pid) for p in g] for k, g in procs.items()}
        started = time.monotonic()
        time.sleep(window)
        took = time.monotonic() - started
        per = {
            k: (sum(threads_cpu(p.pid) for p in g) - sum(before[k])) / len(g) / took * 1e3
            for k, g in procs.items()
        }
    finally:
        for group in procs.values():
            for proc in group:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(10)
        sink.close()
    print(
        f"{WORKERS} workers each, {took:.1f} s window: CPU per worker "
        f"bare {per['bare']:.3f} ms/s, sflow {per['sflow']:.3f} ms/s"
    )
    report.add("idle CPU per worker (sflow - bare)", per["sflow"] - per["bare"], "ms/s", "<= 0.5")
    report.write(opts.json)


if __name__ == "__main__":
    main()

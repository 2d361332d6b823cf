"""Load for ``bench_servers``: wrk (Debian's ``wrk`` package, which ``./scripts/bench``
installs) when it is on the PATH, else a small Python load generator (threads with
keep-alive ``http.client`` connections), so the smoke mode runs anywhere."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import threading
import time

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk(
    port: int, seconds: float, connections: int, path: str = "/", cpus: set[int] | None = None
) -> tuple[int, float]:
    """(requests completed, p99 latency in ms) from one wrk run (on ``cpus`` if given)."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            f"http://127.0.0.1:{port}{path}",
        ],
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    done = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    if not done or not p99:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return int(done.group(1)), float(p99.group(1)) * UNITS[p99.group(2)]


def python_load(port: int, seconds: float, connections: int, path: str = "/") -> tuple[int, float]:
    """The same from ``connections`` Python threads, each a keep-alive client (it reconnects
    when the server closes, as gunicorn's sync worker does after every response)."""
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors: list[BaseException] = []
    end = time.monotonic() + seconds

    def client(out: list[float]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while time.monotonic() < end:
                started = time.perf_counter()
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                out.append(time.perf_counter() - started)
                if response.will_close:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        except BaseException as exc:  # reported below: a broken load is a broken harness
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(out,)) for out in latencies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    every = sorted(x for out in latencies for x in out)
    if not every:
        raise RuntimeError("no request completed")
    return len(every), every[min(len(every) - 1, int(len(every) * 0.99))] * 1e3


def load(
    port: int,
    seconds: float,
    connections: int,
    use_wrk: bool,
    path: str = "/",
    cpus: set[int] | None = None,
) -> tuple[int, float]:
    """wrk's figures (on ``cpus``, if given), else the Python load generator's."""
    if use_wrk:
        return wrk(port, seconds, connections, path, cpus)
    return python_load(port, seconds, connections, path)

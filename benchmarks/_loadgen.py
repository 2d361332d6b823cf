"""Load for ``bench_servers``: wrk (Debian's ``wrk`` package, which ``./scripts/bench``
installs) when it is on the PATH, else a small Python load generator (threads with
keep-alive ``http.client`` connections), so the smoke mode runs anywhere."""

from __future__ import annotations

import http.client
import itertools
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from _blocks import BLOCK, block_path, wrk_script
from _harness import scratch

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk(
    port: int,
    seconds: float,
    connections: int,
    path: str = "/",
    cpus: set[int] | None = None,
    script: str | None = None,
) -> tuple[int, float]:
    """(requests completed, p99 latency in ms) from one wrk run (on ``cpus`` if given;
    ``script``: a Lua file choosing each request)."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            *(["-s", script] if script else []),
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


def python_load(
    port: int,
    seconds: float,
    connections: int,
    path: str = "/",
    sequence: Callable[[int], str] | None = None,
) -> tuple[int, float]:
    """The same from ``connections`` Python threads, each a keep-alive client (it reconnects
    when the server closes, as gunicorn's sync worker does after every response);
    ``sequence(i)``: the path of the i-th request sent, in place of ``path``."""
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors: list[BaseException] = []
    end = time.monotonic() + seconds
    sent = itertools.count()

    def client(out: list[float]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while time.monotonic() < end:
                started = time.perf_counter()
                conn.request("GET", sequence(next(sent)) if sequence else path)
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


def load_blocks(
    port: int,
    seconds: float,
    connections: int,
    use_wrk: bool,
    cpus: set[int] | None = None,
    block: int = BLOCK,
) -> int:
    """Requests in blocks of ``block`` to one path after another (``_blocks.block_path``):
    wrk with a Lua script, else the Python load generator; the requests completed."""
    if use_wrk:
        script = Path(scratch()) / "blocks.lua"
        script.write_text(wrk_script(block=block))
        return wrk(port, seconds, connections, "/", cpus, str(script))[0]
    return python_load(port, seconds, connections, sequence=partial(block_path, block=block))[0]


def load_together(
    port: int,
    seconds: float,
    connections: int,
    use_wrk: bool,
    paths: tuple[str, ...],
    cpus: set[int] | None = None,
) -> list[tuple[int, float]]:
    """One load per path, all at once (``connections`` each): their (requests, p99 ms).
    The paths share the server's queue and its hiccups, so their latencies differ only by
    what each path does."""
    results: list[tuple[int, float] | BaseException] = [RuntimeError("no result")] * len(paths)

    def run(i: int) -> None:
        try:
            results[i] = load(port, seconds, connections, use_wrk, paths[i], cpus)
        except BaseException as exc:  # raised below, on the caller's thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        out.append(result)
    return out

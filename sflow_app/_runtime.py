"""Runtime figures of this process and of its server, for app_resources and app_workers.

Read by the exporter thread, at most once per polling interval, never on the request
path: CPU time from ``os.times()``, resident memory from ``/proc/self/statm`` (elsewhere
the peak from ``resource``), open descriptors from ``/proc/self/fd`` (or ``/dev/fd``),
the descriptor limit from ``RLIMIT_NOFILE``. Requests in progress come from the HTTP
counters (a request counts from its method to its status).

What a *worker* is follows the server (and mod_sflow / Tomcat, which count Apache's
scoreboard slots and a thread pool's threads): gunicorn sync and async workers are
processes; gthread, processes x threads; uWSGI, processes x threads; uvicorn, processes.
The server's configuration (workers, threads, connection limits) is found once per
process; what cannot be known is 0 (see docs/prefork.md, "Runtime counters").
"""

from __future__ import annotations

import contextlib
import os
import resource  # POSIX, as fcntl elsewhere: the package runs on Linux and macOS
import sys
import threading
from typing import Any

from ._layout import (
    R_BUSY,
    R_CONF_CONNS,
    R_CONF_WORKERS,
    R_CONN_OPEN,
    R_COUNTERS,
    R_FD_MAX,
    R_FD_OPEN,
    R_RSS,
    R_SYSTEM_MS,
    R_UNITS,
    R_USER_MS,
    RUNTIME_WORDS,
)


class ServerShape:
    """How many request-serving units this process has, and what the server's
    configuration says for the whole service (0: not known)."""

    def __init__(self, units: int = 1, workers: int = 0, conns: int = 0, name: str = "") -> None:
        self.units = max(1, units)
        self.workers = workers
        self.conns = conns
        self.name = name


def _main_thread_self(cls: type | None) -> Any:
    """The ``self`` of a frame of the main thread that is a ``cls`` (the server's worker
    or server object, whose method runs the serving loop), or None."""
    if cls is None:
        return None
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None:
        if frame.f_code.co_varnames[:1] == ("self",):
            with contextlib.suppress(Exception):
                candidate = frame.f_locals.get("self")
                if isinstance(candidate, cls):
                    return candidate
        frame = frame.f_back
    return None


def _class(module: str, name: str) -> type | None:
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _int(value: Any) -> int:
    try:
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, list | tuple):
            value = value[-1]
        return max(0, int(value))
    except (TypeError, ValueError, IndexError, UnicodeDecodeError):
        return 0


def server_shape() -> ServerShape:
    """This process's server: gunicorn, uWSGI or uvicorn worker, or anything else."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None:
        opt = getattr(uwsgi, "opt", {}) or {}
        threads = _int(opt.get("threads", 1)) or 1
        processes = _int(getattr(uwsgi, "numproc", 0))
        return ServerShape(threads, processes * threads, processes * threads, "uwsgi")
    if "gunicorn.workers.base" in sys.modules:
        worker = _main_thread_self(_class("gunicorn.workers.base", "Worker"))
        cfg = getattr(worker, "cfg", None)
        if cfg is not None:
            processes = _int(getattr(cfg, "workers", 0))
            threads = _int(getattr(cfg, "threads", 1)) or 1
            kind = type(worker).__name__
            if kind == "ThreadWorker":  # gthread: a worker is a thread
                return ServerShape(threads, processes * threads, processes * threads, "gthread")
            if kind == "SyncWorker":
                return ServerShape(1, processes, processes, "gunicorn sync")
            # gevent, eventlet, tornado: a worker is a process serving many connections
            conns = _int(getattr(cfg, "worker_connections", 0))
            return ServerShape(1, processes, processes * conns, f"gunicorn {kind}")
    if "uvicorn.server" in sys.modules:
        server = _main_thread_self(_class("uvicorn.server", "Server"))
        config = getattr(server, "config", None)
        if config is not None:
            processes = _int(getattr(config, "workers", 1) or 1)
            limit = _int(getattr(config, "limit_concurrency", 0) or 0)
            return ServerShape(1, processes, processes * limit, "uvicorn")
    return ServerShape()


def mem_max() -> int:
    """The cgroup's memory limit, if any, else physical memory (bytes)."""
    limit = _cgroup_limit()
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 0
    if limit and (not physical or limit < physical):
        return limit
    return max(physical, 0)


def _cgroup_limit() -> int:
    """The smallest memory limit of this process's cgroup and its ancestors (v2), or the
    v1 memory controller's limit; 0 when there is none."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    found = 0
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, name = "/sys/fs/cgroup", "memory.max"
        elif "memory" in controllers.split(","):
            base, name = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(base, *parts[:depth], name)) as f:
                    text = f.read().strip()
                if text != "max":
                    value = int(text)
                    if 0 < value < (1 << 60):  # v1's "no limit" is a huge number
                        found = min(found, value) if found else value
    return found


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the peak: all there is
    return peak if sys.platform == "darwin" else peak * 1024


def _fds() -> int:
    for path in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return max(0, len(os.listdir(path)) - 1)  # less the one listdir opened
    return 0


def _fd_max() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if 0 <= soft < (1 << 32) else 0xFFFFFFFF


def process_figures(shape: ServerShape, in_flight: int) -> list[int]:
    """This process's runtime words (see _layout's R_*)."""
    times = os.times()
    values = [0] * RUNTIME_WORDS
    values[R_USER_MS] = int(times.user * 1000)
    values[R_SYSTEM_MS] = int(times.system * 1000)
    values[R_RSS] = _rss()
    values[R_FD_OPEN] = _fds()
    values[R_FD_MAX] = _fd_max()
    values[R_CONN_OPEN] = max(0, in_flight)
    values[R_BUSY] = min(max(0, in_flight), shape.units)
    values[R_UNITS] = shape.units
    values[R_CONF_WORKERS] = shape.workers
    values[R_CONF_CONNS] = shape.conns
    return values


class RuntimeCollector:
    """This process's figures, read at most once per interval, and what earlier openings
    of a shared file already hold (a process that reopens it publishes nothing twice)."""

    def __init__(self) -> None:
        self.shape: ServerShape | None = None
        self.due = float("-inf")
        self.last: list[int] | None = None
        self.offsets: dict[str, list[int]] = {}
        self.offset: list[int] | None = None

    def collect(self, now: float, interval: float, in_flight: int, final: bool) -> list[int] | None:
        if not final and (interval <= 0 or now < self.due):
            return None
        self.due = now + interval
        if self.shape is None:
            self.shape = server_shape()
        values = process_figures(self.shape, in_flight)
        self.last = values[:]
        if self.offset is not None:
            for i in R_COUNTERS:
                values[i] = max(0, values[i] - self.offset[i])
        return values

    def opened(self, key: str | None, shared: bool) -> None:
        self.offset = self.offsets.get(key or "") if shared else None
        self.due = float("-inf")

    def closed(self, key: str | None) -> None:
        if self.last is not None and key is not None:
            self.offsets[key] = self.last
        self.last = None

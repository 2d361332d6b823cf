"""Pre-fork servers end to end: one service, many worker processes, one sFlow agent.

Real servers on loopback (gunicorn sync/gthread/gevent/--preload, uWSGI with and without
``py-call-osafterfork`` and ``--enable-threads``, ``uvicorn --workers``) run
tests/apps/prefork_app.py / prefork_asgi.py -- the one-line middleware, no server hook --
following an hsflowd.auto with sampling 1-in-10 and polling 1 s. Each receives N = 2,000
requests ``GET /r/<i>`` from a few client threads; tests/prefork_check.py then checks the
decoded stream: one identity, datagram and sample sequence numbers stepping by one, uptime,
one data source per kind, counters never decreasing and summing to exactly N, every
``sample_pool`` bounded by the requests sent, and every sampled request arriving (the app
tells the client which ones were sampled).

Kill tests SIGKILL one worker mid-run and assert the stated loss bound.
"""

from __future__ import annotations

import contextlib
import glob
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, missing, state_files, write_auto
from memcached import Memcached
from prefork_check import (
    POOL_LAG,
    Expect,
    Load,
    TimedCollector,
    check_datagrams,
    check_independent_sampling,
    check_stream,
    counter_record,
    latest_total,
    run_load,
    sources,
    start_load,
    total_of,
    wait_for_total,
)

from sflow_app import _agent, _layout
from sflow_app._exporter import FLUSH_AFTER, TICK
from sflow_app.records import CountersSample

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "tests" / "apps"
N = 2000
RATE = 10
CONCURRENCY = 6
SERVICE = "prefork-e2e"
# Counts a SIGKILLed worker can lose: what it counted since its last publish (every
# TICK). What a killed process may still hold, in wall-clock time before the kill: it publishes
# counts every TICK and sends a partial datagram after FLUSH_AFTER, but on a loaded machine
# its exporter thread can wait seconds for the CPU (or for the GIL behind a busy request
# thread). Generous on purpose; what must hold by construction is asserted exactly.
KILL_WINDOW = max(15 * TICK, 1.5)
SENDER_WINDOW = max(FLUSH_AFTER + KILL_WINDOW, 5.0)
UWSGI = shutil.which("uwsgi", path=os.path.dirname(sys.executable)) or shutil.which("uwsgi")


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError), open(path) as f:
            found += [int(p) for p in f.read().split()]
    return sorted(set(found))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Server:
    """A server in a subprocess (its own session), its log, and graceful stop."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        cwd: Path,
        port: int,
        log: Path,
        workers: int,
    ) -> None:
        self.name = name
        self.port = port
        self.workers = workers
        self.log_path = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{self.log()}")
            try:  # connect-only probe: no request, nothing counted
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"{name} did not start:\n{self.log()}") from None
                time.sleep(0.05)
        # Every worker up (uvicorn's and uWSGI's start after the socket is bound).
        while len(self.workers_now()) < workers and time.monotonic() < deadline:
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers_now(self) -> list[int]:
        # Worker processes: children of the master, not multiprocessing's helpers.
        out = []
        for pid in children(self.proc.pid):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"resource_tracker" not in f.read():
                    out.append(pid)
        return [p for p in out if alive(p)]

    def settle_workers(self, quiet: float = 1.0, timeout: float = 10.0) -> None:
        """Wait until no worker was (re)spawned for ``quiet`` s. uWSGI's race: a worker
        runs the master's SIGINT/SIGTERM handler until it sets its own (after the post-fork
        hooks), so one respawned just as the master gets SIGTERM takes itself for the
        master ("killing workers..." logged twice) and never exits."""
        end = time.monotonic() + timeout
        seen, since = set(self.workers_now()), time.monotonic()
        while time.monotonic() < end and time.monotonic() - since < quiet:
            time.sleep(0.05)
            now = set(self.workers_now())
            if now != seen:
                seen, since = now, time.monotonic()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"{self.name} did not stop on {sig!r}:\n{self.log()}"
                ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the session we started
            self.proc.wait(10)


def read_state(state_dir: str) -> tuple[int, int, int]:
    """(sender pid, slots used, file size) of the one service state file."""
    [path] = state_files(state_dir, ".state")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        words = memoryview(m).cast("Q")
        try:
            sender = words[_layout.H_SENDER_PID]
            assert len(m) == _layout.file_size(words[_layout.H_SLOTS])
            used = sum(
                1
                for s in range(words[_layout.H_SLOTS])
                if words[_layout.SLOTS_AT + s * _layout.SLOT_WORDS]
            )
        finally:
            words.release()
        return sender, used, os.fstat(f.fileno()).st_size


class Service:
    """One test's service: collector, hsflowd.auto, environment, and the server."""

    def __init__(self, tmp: Path, state_dir: str) -> None:
        self.tmp = tmp
        self.state_dir = state_dir
        self.collector = TimedCollector()
        self.auto = write_auto(tmp / "hsflowd.auto", self.collector.port, sampling=RATE, polling=1)
        self.server: Server | None = None
        self.memcached: Memcached | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SFLOW_APP_", "PREFORK_"))}
        env.update(
            SFLOW_APP_CONFIG=str(self.auto),
            SFLOW_APP_STATE_DIR=self.state_dir,
            SFLOW_APP_NAME=SERVICE,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join([str(APPS), str(ROOT)]),
            **extra,
        )
        return env

    def start(
        self, name: str, cmd: list[str], workers: int, cwd: Path = APPS, **env: str
    ) -> Server:
        self.port = port = free_port()
        cmd = [part.replace("{port}", str(port)) for part in cmd]
        self.server = Server(
            name, cmd, self.env(**env), cwd, port, self.tmp / f"{name}.log", workers
        )
        return self.server

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
        if self.memcached is not None:
            self.memcached.stop()
        self.collector.close()


@pytest.fixture
def service(tmp_path: Path, state_dir: str) -> Iterator[Service]:
    svc = Service(tmp_path, state_dir)
    try:
        yield svc
    finally:
        svc.close()


def gunicorn(*args: str, workers: int = 4) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        str(workers),
        "-b",
        "127.0.0.1:{port}",
        "--timeout",
        "30",
        "--graceful-timeout",
        "10",
        "--no-control-socket",  # gunicorn's default is one fixed path for every run
        *args,
        "prefork_app:application",
    ]


def uwsgi(*args: str, processes: int = 4) -> list[str]:
    if not UWSGI:
        missing("uWSGI", "./scripts/setup --with-servers installs it")
    return [
        UWSGI,
        "--http-socket",
        "127.0.0.1:{port}",
        "--master",
        "--processes",
        str(processes),
        "--wsgi-file",
        "prefork_app.py",
        "--callable",
        "application",
        "--need-app",
        "--die-on-term",
        "--disable-logging",
        "--virtualenv",
        sys.prefix,
        "--min-worker-lifetime",
        "0",  # else --max-requests waits 10 s per worker
        # else the master sleeps 2 s whenever a worker lived < 2 s -- and a worker it
        # respawns from that sleep after SIGTERM never gets the signal (uWSGI's race)
        "--forkbomb-delay",
        "0",
        *args,
    ]


def uvicorn(workers: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "tests.apps.prefork_asgi:app",
        "--workers",
        str(workers),
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--log-level",
        "warning",
    ]


def finish(
    service: Service,
    load: Load,
    expects: list[Expect],
    *,
    exact: bool = True,
    stop_signal: int = signal.SIGTERM,
) -> str:
    """Wait for the final counters, stop the server gracefully, check everything."""
    server = service.server
    assert server is not None
    if exact:
        for e in expects:
            want = e.ops_per_request * N
            got = wait_for_total(service.collector, want, e.kind)
            assert got == want, (
                f"{e.kind}: counters reached {got}, not {want}, within 15 s\n{server.log()[-3000:]}"
            )
    else:  # settle: a counter sample polled after every worker published its last counts
        settle(service, load.t_end + 1.5)
    if server.name.startswith("uwsgi"):
        server.settle_workers()
    workers = server.workers_now()
    server.stop(stop_signal)
    time.sleep(1.5)  # what the exiting workers send last
    # A pass or an exit flush that raised is logged (the agent carries on): none should.
    failed = ("sflow_app: exporter error", "sflow_app: final flush failed")
    errors = [line for line in server.log().splitlines() if any(f in line for f in failed)]
    assert not errors, f"{errors[0]}\n{server.log()[-3000:]}"
    try:
        report = check_stream(
            service.collector, load, expects, rate=RATE, sub_agent_id=service.port
        )
    except AssertionError as exc:
        agent_log = [line for line in server.log().splitlines() if "sflow_app" in line]
        raise AssertionError(f"{exc}\nagent log lines:\n" + "\n".join(agent_log[-30:])) from None
    # Bounded state: one file (and at most one socket) whatever the churn, and no more
    # worker slots than workers alive at once.
    files = state_files(service.state_dir)
    # ... and the status sidecars: the sender's, and one per slot that dropped samples.
    status = [f for f in files if f.endswith(".json")]
    files = [f for f in files if f not in status]
    assert len(files) <= 2 and all(f.endswith((".state", ".sock")) for f in files), files
    assert len(status) <= 1 + max(_layout.INITIAL_SLOTS, 2 * server.workers), status
    _, used, size = read_state(service.state_dir)
    assert size <= _layout.file_size(max(_layout.INITIAL_SLOTS, 2 * server.workers))
    assert used <= server.workers, (
        f"{used} worker slots used by {server.workers} workers (pids seen: "
        f"{len(load.pids())}, alive at the end: {len(workers)})"
    )
    independent = check_independent_sampling(load)
    summary = (
        f"{server.name}: {report}; slots used {used}; worker pids "
        f"{len(load.pids())}; first samples {independent}"
    )
    print(summary)
    return summary


def settle(service: Service, after: float, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(
            t >= after and any(not hasattr(s, "sampling_rate") for s in dg.samples)
            for t, dg in service.collector.received()
        ):
            return
        time.sleep(0.1)
    raise AssertionError("no counter sample after the load settled")


def http_only() -> list[Expect]:
    return [Expect("http", exact_samples=True)]


# -- gunicorn ------------------------------------------------------------------------------


def test_gunicorn_sync_recycled_with_memcache_and_decorator(service: Service) -> None:
    """4 sync workers recycled every 50 requests (~40 workers in all); each request also
    does a memcache set + get and one decorated call: three data sources, one agent."""
    service.memcached = Memcached().start()
    server = service.memcached.server
    assert isinstance(server, tuple)
    host, port = server
    service.start(
        "gunicorn-sync",
        gunicorn("--max-requests", "50"),
        4,
        PREFORK_MEMCACHED=f"{host}:{port}",
        PREFORK_DECORATED="1",
    )
    load = run_load(service.port, N, CONCURRENCY)
    assert not load.errors, load.errors[:5]
    assert len(load.pids()) >= N // 100, "workers were not recycled"
    finish(
        service,
        load,
        [Expect("http", exact_samples=True), Expect("memcache", ops_per_request=2), Expect("app")],
    )


@pytest.mark.parametrize("variant", ["gthread", "preload"])
def test_gunicorn_recycled(service: Service, variant: str) -> None:
    args = ["-k", "gthread", "--threads", "4"] if variant == "gthread" else ["--preload"]
    service.start(f"gunicorn-{variant}", gunicorn(*args, "--max-requests", "50"), 4)
    load = run_load(service.port, N, CONCURRENCY)
    assert not load.errors, load.errors[:5]
    assert len(load.pids()) >= N // 100, "workers were not recycled"
    finish(service, load, http_only())


@pytest.mark.parametrize("variant", ["sync", "preload"])
def test_gunicorn_more_workers_than_initial_slots(service: Service, variant: str) -> None:
    """More workers alive at once than the file first has slots for: it grows, and every
    process that mapped it small maps it again. Closing the old mapping must not release
    that process's record locks (POSIX drops all of a process's locks on a file when it
    closes any descriptor of it, and an ``mmap`` holds one): a sender would lose its role
    and a worker its slot -- which a recycled worker then takes while the owner still
    writes it (counters going back and forth)."""
    workers = 2 * _layout.INITIAL_SLOTS
    args = ["--preload"] if variant == "preload" else []
    service.start(
        f"gunicorn-{workers}-{variant}",
        gunicorn(*args, "--max-requests", "50", workers=workers),
        workers,
    )
    load = run_load(service.port, N, CONCURRENCY)
    assert not load.errors, load.errors[:5]
    assert len(load.pids()) > workers, "workers were not recycled"
    server = service.server
    assert server is not None
    # What lost locks break: one sender at a time, sample_pool and counters never going
    # back (the stream checks); and every count arrives: a worker that opened the file
    # while another grew it took a slot past its mapping (its 50 counts were lost, about
    # once in 60 runs under coverage; test_hostile reproduces it every time).
    finish(service, load, http_only())
    replaced = [line for line in server.log().splitlines() if "replaced as the sender" in line]
    assert not replaced, replaced  # nothing here stalls: no sender lost its role


def test_gunicorn_gevent(service: Service) -> None:
    service.start(
        "gunicorn-gevent", gunicorn("-k", "gevent", "--max-requests", "200", workers=2), 2
    )
    load = run_load(service.port, N, CONCURRENCY)
    assert not load.errors, load.errors[:5]
    finish(service, load, http_only())


# -- uvicorn -------------------------------------------------------------------------------


def test_uvicorn_workers(service: Service) -> None:
    service.start("uvicorn", uvicorn(2), 2, cwd=ROOT)
    load = run_load(service.port, N, CONCURRENCY)
    assert not load.errors, load.errors[:5]
    assert len(load.pids()) == 2
    finish(service, load, http_only())


# -- uWSGI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("osafterfork", [False, True], ids=["fork-from-C", "osafterfork"])
def test_uwsgi_processes(service: Service, osafterfork: bool) -> None:
    extra = ["--py-call-osafterfork"] if osafterfork else []
    service.start("uwsgi", uwsgi("--enable-threads", "--max-requests", "50", *extra), 4)
    load = run_load(service.port, N, CONCURRENCY)
    assert not load.errors, load.errors[:5]
    assert len(load.pids()) >= N // 100, "workers were not recycled"
    finish(service, load, http_only())


WARNING = "uWSGI runs without --enable-threads"


def test_uwsgi_without_enable_threads(service: Service) -> None:
    """Without --enable-threads. uWSGI 2.0.31 runs Python threads anyway (the option is a
    stub there, and it logs "python threads support enabled"): then the agent must not
    warn and everything must work as with it. A uWSGI that really runs no Python thread
    must get one warning per worker (the inline fallback itself is tested in
    test_shared.py with ``uwsgi.has_threads == 0``)."""
    service.start("uwsgi-no-enable-threads", uwsgi("--max-requests", "50"), 4)
    load = run_load(service.port, N, CONCURRENCY)
    assert not load.errors, load.errors[:5]
    server = service.server
    assert server is not None
    log = server.log()
    warnings = [line for line in log.splitlines() if WARNING in line]
    if "python threads support enabled" in log:
        assert not warnings, warnings[:3]
    else:
        assert 1 <= len(warnings) <= len(load.pids()), warnings[:3]
    finish(service, load, http_only())


# -- a worker killed with SIGKILL ----------------------------------------------------------


def dead_at(pid: int, timeout: float = 10.0) -> float:
    """When ``pid`` stopped holding its sockets: gone, or a zombie whose other threads are
    gone too. The main thread turns zombie first; the descriptors are closed when the last
    thread exits (the exporter's, which a loaded machine may run milliseconds later: a
    worker's forward to the killed sender's socket still succeeded then)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            threads = len(os.listdir(f"/proc/{pid}/task"))
        except (OSError, IndexError):
            return time.monotonic()
        if state in (b"Z", b"X") and threads <= 1:
            return time.monotonic()
        time.sleep(0.001)
    raise AssertionError(f"pid {pid} still alive {timeout} s after SIGKILL")


def kill_mid_run(service: Service, *, sender: bool) -> tuple[Load, int, float, float]:
    """Start the load, SIGKILL one worker (the sender, or one that is not) half-way.
    Returns the load, the victim, when it was killed and when it was dead: on a loaded
    machine a killed process can take a while to run its exit, and until then a worker
    can still forward to its socket."""
    server = service.server
    assert server is not None
    load, thread = start_load(service.port, N, CONCURRENCY)
    while load.started < N // 2 and thread.is_alive():
        time.sleep(0.005)
    sender_pid, _, _ = read_state(service.state_dir)
    workers = server.workers_now()
    assert sender_pid in workers, (sender_pid, workers)
    if sender:
        victim = sender_pid
    else:
        victim = next(p for p in workers if p != sender_pid and p in load.pids())
    t_kill = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    t_dead = dead_at(victim)
    thread.join()
    assert victim not in server.workers_now()
    deadline = time.monotonic() + 10
    while len(server.workers_now()) < server.workers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.workers_now()) == server.workers, "the killed worker was not replaced"
    return load, victim, t_kill, t_dead


@pytest.mark.parametrize("who", ["worker", "sender"])
def test_gunicorn_worker_killed(service: Service, who: str) -> None:
    """SIGKILL one of 4 workers half-way through the load; gunicorn replaces it.

    Bounds asserted (KILL_WINDOW and SENDER_WINDOW: generous wall-clock windows, see above):
    - requests failing at the client: at most the concurrency (in flight on the victim);
    - counters: final total in [N_ok - L, N], L = requests the victim answered within
      KILL_WINDOW before the kill (what it may have counted but not yet published);
    - samples: every sampled request the client saw answered arrives, except those the
      victim answered within KILL_WINDOW (not yet forwarded) and, when the victim was the
      sender, those any worker answered from SENDER_WINDOW before the kill that were sent
      before the victim was dead, every thread of it (its partial datagram and its
      socket's unread forwards);
    - and every stream check of the clean runs (sequence numbers, monotonic counters,
      sample_pool bounds less L, one data source).
    """
    service.start(f"gunicorn-kill-{who}", gunicorn(), 4)
    load, victim, t_kill, t_dead = kill_mid_run(service, sender=who == "sender")
    assert len(load.errors) <= CONCURRENCY, load.errors
    lost_counts = load.completed_in(t_kill - KILL_WINDOW, victim)
    may_lose = {i for i in lost_counts if load.sampled[i]}
    if who == "sender":
        window = t_kill - SENDER_WINDOW
        may_lose |= {
            i
            for i in load.completed_in(window)
            # A sample forwarded before the sender was dead may have reached its socket
            # and died with it: any request sent before then (the client may see it done
            # later than the worker forwarded it, so not "done before").
            if load.sampled[i] and load.sent[i] <= t_dead
        }
    after = sum(1 for t in load.sent[1:] if t > t_kill)
    assert after >= N // 4, f"the kill was not mid-run: {after} requests sent after it"
    summary = finish(
        service,
        load,
        [
            Expect(
                "http",
                count_loss=len(lost_counts),
                may_lose=frozenset(may_lose),
                exact_samples=True,
            )
        ],
        exact=False,
    )
    print(
        f"killed {who} {victim}: N_ok={load.ok} failed={len(load.errors)} "
        f"count bound L={len(lost_counts)} samples that may be lost={len(may_lose)} "
        f"pool lag {POOL_LAG} s; {summary}"
    )
    total = latest_total(service.collector)
    assert total is not None and load.ok - len(lost_counts) <= total <= N


# -- idle: counters keep coming without traffic ---------------------------------------------

IDLE_SERVERS = {
    "gunicorn": lambda: gunicorn("--max-requests", "10", workers=2),
    "gunicorn-preload": lambda: gunicorn("--preload", "--max-requests", "10", workers=2),
    "uwsgi": lambda: uwsgi("--enable-threads", "--max-requests", "10", processes=2),
    "uvicorn": lambda: uvicorn(2),
}


def http_counters_after(service: Service, after: float) -> list[tuple[float, int]]:
    """(arrival, total) of the service's HTTP counter samples that arrived after ``after``;
    every datagram must carry the service's one identity."""
    out = []
    for t, dg in service.collector.received():
        assert (dg.agent_address, dg.sub_agent_id) == ("127.0.0.1", service.port), dg
        for sample in dg.samples:
            if isinstance(sample, CountersSample) and t > after:
                assert sample.ds_index == service.port, sample
                out.append((t, total_of("http", counter_record(sample))))
    return out


@pytest.mark.parametrize("server", list(IDLE_SERVERS))
def test_idle_service_keeps_reporting(service: Service, server: str) -> None:
    """No request at all, then 40 requests (which recycle every worker but uvicorn's),
    then none again: counter samples arrive all along (polling 1 s) under the service's
    identity, learnt from the listener the workers inherited -- not from a request."""
    started = time.monotonic()
    service.start(server, IDLE_SERVERS[server](), 2, cwd=ROOT if server == "uvicorn" else APPS)
    # Two polls (1 s, the first at a random offset) after the start, however slow a loaded
    # machine makes the start: polled for generously, not slept for.
    deadline = time.monotonic() + 15
    while len(http_counters_after(service, started)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    idle = http_counters_after(service, started)
    assert len(idle) >= 2 and all(total == 0 for _, total in idle), idle
    load = run_load(service.port, 40, 2)
    assert not load.errors, load.errors[:5]
    assert wait_for_total(service.collector, 40) == 40
    settled = time.monotonic()
    # Two more counter samples, from the fresh workers (a new sender may take a couple
    # of seconds to take over from a recycled one: poll generously). An exiting worker
    # no longer repeats the last counts (issue 12), so these are regular polls.
    deadline = settled + 10
    while len(http_counters_after(service, settled)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    later = http_counters_after(service, settled)
    assert len(later) >= 2 and all(total == 40 for _, total in later), later


def sender_generation(state_dir: str) -> int:
    [path] = state_files(state_dir, ".state")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        words = memoryview(m).cast("Q")
        try:
            return int(words[_layout.H_GEN])
        finally:
            words.release()


def test_idle_sender_is_not_taken_for_a_stalled_one(service: Service) -> None:
    """Idle, every process sleeps up to IDLE_CHECK_EVERY (5 s) between passes -- the
    sender too, with a polling interval longer than that -- which is longer than the stall
    bound (3 s). The sleeping sender says when its next pass is due; the other workers,
    waking meanwhile, must not replace it: one sender all along, no warning."""
    service.auto = write_auto(service.tmp / "polling30.auto", service.collector.port, polling=30)
    server = service.start("gunicorn-idle-sender", gunicorn(), 4)
    deadline = time.monotonic() + 15
    while not state_files(service.state_dir, ".state") and time.monotonic() < deadline:
        time.sleep(0.1)
    while sender_generation(service.state_dir) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sender_generation(service.state_dir) == 1
    # Sparse traffic: each (sampled) request wakes the worker that serves it, which then
    # wakes every 5 s from there -- the workers' idle wake-ups end up spread out.
    for _ in range(8):
        run_load(service.port, 1, 1)
        time.sleep(_agent.IDLE_CHECK_EVERY / 8)
    # Several idle wake-ups of every worker (each a look at the sender's heartbeat).
    time.sleep(4 * _agent.IDLE_CHECK_EVERY)
    assert sender_generation(service.state_dir) == 1, server.log()[-2000:]
    server.stop()
    assert "replaced as the sender" not in server.log(), server.log()[-2000:]


def test_gunicorn_on_a_full_tmpfs(service: Service) -> None:
    """Issue 11's repro: gunicorn -w 2 with the state on an 8 KB tmpfs. No worker dies
    (SIGBUS); each reports alone under a sub-agent of its own, every stream valid, and
    together they count every request."""
    from test_hostile import tmpfs

    with tmpfs("8k") as full:
        service.state_dir = full
        server = service.start("gunicorn-full", gunicorn(workers=2), 2)
        pids = set(server.workers_now())
        load = run_load(service.port, 400, CONCURRENCY)
        assert not load.errors, load.errors[:5]
        time.sleep(2.5)  # a counter poll (1 s) after the last request
        assert set(server.workers_now()) == pids, f"workers died:\n{server.log()[-2000:]}"
        server.stop()
        log = server.log()
        assert "signal 7" not in log and "SIGBUS" not in log, log[-2000:]
        assert log.count("reports alone as sub_agent_id") == 2, log[-2000:]
        by_agent: dict[tuple[str, int], list] = {}
        for arrival, dg in service.collector.received():
            by_agent.setdefault((dg.agent_address, dg.sub_agent_id), []).append((arrival, dg))
        assert len(by_agent) == 2 and all(sub >= 1 << 24 for _, sub in by_agent), by_agent.keys()
        total = 0
        for received in by_agent.values():
            check_datagrams(received)
            [view] = sources(received)["http"]
            seqs = [s.sequence_number for _, s in view.counters]
            assert seqs == list(range(1, len(seqs) + 1)), seqs
            gets = [total_of("http", counter_record(s)) for _, s in view.counters]
            assert gets == sorted(gets), f"counters went back: {gets}"
            total += gets[-1]
        assert total == 400

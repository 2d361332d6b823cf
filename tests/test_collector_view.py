"""What a collector sees from a pre-fork service (issue 12), end to end under real servers:
sample_pool stamped at sample time, and the runtime counters (app_resources, app_workers)
compared with /proc and the server's configuration.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import TypeVar

import pytest
from prefork_check import run_load
from test_prefork import Service, gunicorn, service, uvicorn, uwsgi  # noqa: F401  (fixture)

from sflow_app.records import (
    AppResources,
    AppWorkers,
    CountersSample,
    FlowSample,
    HttpCounters,
    HttpRequest,
)

pytestmark = pytest.mark.slow

RATE = 10
T = TypeVar("T")


def http_flows(svc: Service) -> list[FlowSample]:
    flows = [
        s
        for _, dg in svc.collector.received()
        for s in dg.samples
        if isinstance(s, FlowSample) and any(isinstance(r, HttpRequest) for r in s.records)
    ]
    return sorted(flows, key=lambda s: s.sequence_number)


def test_sample_pool_at_sample_time_gunicorn(service: Service) -> None:  # noqa: F811
    """1-in-10 under gunicorn -w 2: each sample's pool is the service's candidates up to
    it (mod_sflow's way), so consecutive samples step by about 10, never by 0, and the
    first sample of the run shows a small pool."""
    service.start("gunicorn-pool", gunicorn(workers=2), 2)
    run_load(service.port, 2000, 4)
    server = service.server
    assert server is not None
    server.stop()
    time.sleep(1.5)
    flows = http_flows(service)
    assert len(flows) >= 100, len(flows)
    seqs = [f.sequence_number for f in flows]
    assert seqs == list(range(1, len(flows) + 1)), "sample sequence numbers"
    pools = [f.sample_pool for f in flows]
    bad = [(a, b) for a, b in itertools.pairwise(pools) if b <= a]
    assert not bad, f"non-increasing pool in {len(bad)} of {len(pools) - 1} pairs: {bad[:5]}"
    mean = (pools[-1] - pools[0]) / (len(pools) - 1)
    assert abs(mean - RATE) <= 0.2 * RATE, f"mean pool step {mean:.2f}"
    assert pools[0] <= 100, f"first sample's pool {pools[0]}"
    assert pools[-1] <= 2000


# -- runtime counters: app_resources and app_workers -----------------------------------------


def http_counters(svc: Service, after: float = 0.0) -> list[tuple[float, CountersSample]]:
    """(arrival, sample) of the HTTP source's counter samples, in sequence order."""
    out = [
        (t, s)
        for t, dg in svc.collector.received()
        if t >= after
        for s in dg.samples
        if isinstance(s, CountersSample) and any(isinstance(r, HttpCounters) for r in s.records)
    ]
    return sorted(out, key=lambda ts: ts[1].sequence_number)


def record(sample: CountersSample, cls: type[T]) -> T:
    [found] = [r for r in sample.records if isinstance(r, cls)]
    return found


def proc_figures(pids: list[int]) -> dict[str, int]:
    """What /proc says about ``pids``: RSS, open descriptors, their soft limit, CPU ms."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"rss": 0, "fds": 0, "fd_max": 0, "cpu_ms": 0}
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        out["rss"] += rss_kb * 1024
        out["fds"] += len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/limits") as f:
            line = next(line for line in f if line.startswith("Max open files"))
        out["fd_max"] += int(line.split()[3])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out["cpu_ms"] += (int(fields[11]) + int(fields[12])) * 1000 // tick
    return out


def settled_counters(svc: Service, after: float) -> CountersSample:
    """A counter sample polled after every worker read its figures once more (they do
    at most once per polling interval, 1 s here)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        later = http_counters(svc, after + 2.5)
        if later:
            return later[-1][1]
        time.sleep(0.1)
    raise AssertionError("no counter sample after the load")


def check_against_proc(svc: Service, workers: int) -> CountersSample:
    server = svc.server
    assert server is not None
    served: set[int] = set()
    pids = server.workers_now()
    for _ in range(20):  # until every worker served (a worker counts from then on)
        load = run_load(svc.port, 50 * workers, 2 * workers)
        served |= load.pids()
        if set(pids) <= served:
            break
    assert len(pids) == workers and set(pids) <= served, "every worker served"
    sample = settled_counters(svc, load.t_end)
    proc = proc_figures(pids)
    res = record(sample, AppResources)
    work = record(sample, AppWorkers)
    assert abs(res.mem_used - proc["rss"]) <= 0.25 * proc["rss"], (res, proc)
    assert abs(res.fd_open - proc["fds"]) <= 4 * workers, (res, proc)
    assert res.fd_max == proc["fd_max"], (res, proc)
    cpu = res.user_time + res.system_time
    assert 0 < cpu <= proc["cpu_ms"] + 100 * workers, (res, proc)  # read earlier: not more
    assert cpu >= 0.5 * proc["cpu_ms"] - 500, (res, proc)  # generous: loaded machine
    assert 0 < res.mem_max <= physical_memory(), res
    assert res.conn_open <= workers and work.workers_active <= workers
    assert work.workers_max == workers, work
    assert work.workers_active + work.workers_idle == work.workers_max, work
    assert (work.req_delayed, work.req_dropped) == (0, 0)
    return sample


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_runtime_counters_gunicorn_sync(service: Service) -> None:  # noqa: F811
    """gunicorn -w 4 (sync): a worker is a process; figures match /proc for the same
    processes; at shutdown no counter sample repeats the last one's counts."""
    service.start("gunicorn-runtime", gunicorn(workers=4), 4)
    sample = check_against_proc(service, 4)
    assert record(sample, AppResources).conn_max == 4


def test_no_duplicate_counter_samples_at_exit(service: Service) -> None:  # noqa: F811
    """Audit fix 2: gunicorn -w 3 stopped after its counters settled: each exiting worker
    used to send a last counter sample with the same counts (3 within a few ms), and a
    poll due before the previous one left put the source twice in one datagram."""
    service.start("gunicorn-exit", gunicorn(workers=3), 3)
    load = run_load(service.port, 300, 6)
    settled_counters(service, load.t_end)
    stopped = time.monotonic()
    server = service.server
    assert server is not None
    server.stop()
    time.sleep(1.5)
    # By the datagrams' uptime (the instance's clock at sending): a stop slower than the
    # polling interval (1 s) has regular polls repeat the settled counts -- after a sender
    # handover the next one's first poll may come ~0.5 s after the last -- but never
    # within a few ms, as the exiting workers' last samples did.
    sent_at: dict[HttpCounters, list[int]] = {}
    for t, dg in service.collector.received():
        for s in dg.samples:
            if t >= stopped and isinstance(s, CountersSample):
                for r in s.records:
                    if isinstance(r, HttpCounters):
                        sent_at.setdefault(r, []).append(dg.uptime_ms)
    for counts, times in sent_at.items():
        times.sort()
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= 250 for gap in gaps), f"identical samples {gaps} ms apart: {counts}"
    # Nor twice in one datagram (a poll due before the previous one was flushed).
    for _, dg in service.collector.received():
        polled = [s.ds_index for s in dg.samples if isinstance(s, CountersSample)]
        assert len(polled) == len(set(polled)), f"one source twice in datagram {dg}"


def test_runtime_counters_gunicorn_gthread(service: Service) -> None:  # noqa: F811
    """gthread: a worker is a thread -- 2 processes x 3 threads give workers_max 6."""
    service.start("gunicorn-gthread-runtime", gunicorn("--threads", "3", workers=2), 2)
    server = service.server
    assert server is not None
    run_load(service.port, 100, 4)
    sample = settled_counters(service, time.monotonic() - 2.0)
    work = record(sample, AppWorkers)
    assert (work.workers_max, record(sample, AppResources).conn_max) == (6, 6), work
    assert work.workers_active + work.workers_idle == 6


def test_runtime_counters_uwsgi(service: Service) -> None:  # noqa: F811
    """uWSGI 2 processes x 2 threads: a worker is a thread, workers_max 4."""
    service.start("uwsgi-runtime", uwsgi("--threads", "2", processes=2), 2)
    run_load(service.port, 100, 4)
    sample = settled_counters(service, time.monotonic() - 2.0)
    work = record(sample, AppWorkers)
    assert (work.workers_max, record(sample, AppResources).conn_max) == (4, 4), work
    assert work.workers_active + work.workers_idle == 4


def test_runtime_counters_uvicorn(service: Service) -> None:  # noqa: F811
    """uvicorn --workers 2: a worker is a process; no concurrency limit: conn_max 0."""
    service.start("uvicorn-runtime", uvicorn(2), 2)
    sample = check_against_proc(service, 2)
    assert record(sample, AppResources).conn_max == 0


def test_cpu_time_never_falls_across_recycling(service: Service) -> None:  # noqa: F811
    """Workers recycled every 20 requests: CPU time (summed over live and exited
    workers) never goes back from one counter sample to the next."""
    service.start("gunicorn-recycle-cpu", gunicorn("--max-requests", "20", workers=2), 2)
    load = run_load(service.port, 600, 4)
    assert len(load.pids()) > 4, "workers were recycled"
    settled_counters(service, load.t_end)
    cpu = [
        record(s, AppResources).user_time + record(s, AppResources).system_time
        for _, s in http_counters(service)
    ]
    assert len(cpu) >= 3
    assert all(b >= a for a, b in itertools.pairwise(cpu)), cpu
    assert cpu[-1] > 0

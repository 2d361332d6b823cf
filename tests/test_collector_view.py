"""What a collector sees from a pre-fork service (issue 12), end to end under real servers:
sample_pool stamped at sample time, and the runtime counters (app_resources, app_workers)
compared with /proc and the server's configuration.
"""

from __future__ import annotations

import itertools
import time

import pytest
from prefork_check import run_load
from test_prefork import Service, gunicorn, service  # noqa: F401  (fixture)

from sflow_app.records import FlowSample, HttpRequest

pytestmark = pytest.mark.slow

RATE = 10


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

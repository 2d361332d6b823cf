"""The overload guard (SFLOW_APP_MAX_SAMPLES): a cap on flow samples per second, per
process and data source, decided on the sampled path.

Driven by an injected clock, so every "second" is a window of the sampler's own clock and
nothing here depends on how fast the machine is; the end-to-end test at the bottom goes
through the agent's thread and a real UDP collector.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import Counter
from typing import Any

import pytest
from helpers import Collector

from sflow_app._agent import Agent
from sflow_app._config import DEFAULT_MAX_SAMPLES, resolve
from sflow_app._sampler import Sampler
from sflow_app.records import HttpRequest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guarded_agent(clock: Clock, collector: Collector, cap: int, state_dir: str) -> Agent:
    env = {
        "SFLOW_APP_COLLECTORS": f"127.0.0.1:{collector.port}",
        "SFLOW_APP_SAMPLING": "1",
        "SFLOW_APP_POLLING": "0",
        "SFLOW_APP_MAX_SAMPLES": str(cap),
        "SFLOW_APP_NAME": "guard",
        "SFLOW_APP_DS_INDEX": "8000",
        "SFLOW_APP_STATE_DIR": state_dir,
        "SFLOW_APP_CONFIG": "/nonexistent/hsflowd.auto",
    }
    agent = Agent(autostart=False, env=env, clock=clock)
    agent.reload()
    return agent


def drive(
    agent: Agent, clock: Clock, start: float, seconds: float, per_second: int
) -> tuple[int, list[tuple[float, int]]]:
    """Candidates at a steady rate on the surfaces' path (pool, compare, slow path,
    submit), the agent's pass every 0.1 s; (candidates, [(time, sampling_rate)])."""
    source = agent.http_source()
    sampler = source.sampler
    taken: list[tuple[float, int]] = []
    count = int(seconds * per_second)
    next_pass = start
    for i in range(count):
        clock.now = start + i / per_second
        if clock.now >= next_pass:
            for item in agent.runner.drain():
                taken.append((item[-1][0], item[2]))
            agent.tick(clock.now)
            next_pass += 0.1
        n = sampler.pool()
        if n >= sampler.next_at and (rate := source.sample(n)):
            source.submit(n, (clock.now,), rate)
    for item in agent.runner.drain():
        taken.append((item[-1][0], item[2]))
    return count, taken


def most_in_any_second(times: list[float]) -> int:
    """The most samples in any one-second window [t, t + 1) (sliding, not aligned)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


def test_burst_far_above_the_cap(collector: Collector, state_dir: str) -> None:
    """6 s at 200x the cap, then a low load: raised and reported rates, no second above
    1.5x the cap, the scaled estimate right, and 1-in-1 again within 2 s after."""
    cap = 100
    clock = Clock()
    agent = guarded_agent(clock, collector, cap, state_dir)
    try:
        start = clock.now
        requests, burst = drive(agent, clock, start, 6.0, 20_000)
        fall = clock.now
        _, after = drive(agent, clock, fall, 4.0, 50)
    finally:
        agent.exporter.close()
    times = [t for t, _ in burst + after]
    assert most_in_any_second(times) <= 1.5 * cap
    per_window = Counter(int(t - start) for t in times)
    assert max(per_window.values()) <= 1.5 * cap, per_window
    # Raised well above the configured 1-in-1, and reported in the samples.
    rates = [rate for t, rate in burst if t >= start + 1.0]
    assert rates and min(rates) > 50, rates[:20]
    assert len(burst) >= 0.5 * 6 * cap  # raised, not starved
    estimate = sum(rate for _, rate in burst)
    assert abs(estimate - requests) <= 0.15 * requests, (estimate, requests)
    # The load fell to half the cap: back to the configured 1-in-N within 2 s.
    late = [rate for t, rate in after if t >= fall + 2.0]
    assert len(late) >= 50 and set(late) == {1}, late
    assert not agent.http_source().sampler.raised


def test_rate_recorded_is_the_one_in_force_when_sampled(
    collector: Collector, state_dir: str
) -> None:
    clock = Clock()
    agent = guarded_agent(clock, collector, 10, state_dir)
    try:
        source = agent.http_source()
        sampler = source.sampler
        first = sampler.pool()
        assert first >= sampler.next_at
        first_rate = source.sample(first)
        assert first_rate == sampler.rate == 1
        for _ in range(20_000):  # a burst: the guard raises N meanwhile
            clock.now += 1e-4
            n = sampler.pool()
            if n >= sampler.next_at and (rate := source.sample(n)):
                assert rate == sampler.rate  # the N in force at the decision
                source.submit(n, (), rate)
        assert sampler.rate > 1
        agent.runner.drain()
        source.submit(first, (), first_rate)  # the long request sampled before the burst
        [(_, pool, rate, _)] = agent.runner.drain()
        assert (pool, rate) == (first, 1)
    finally:
        agent.exporter.close()


def test_no_cap_samples_everything(collector: Collector, state_dir: str) -> None:
    clock = Clock()
    agent = guarded_agent(clock, collector, 0, state_dir)
    try:
        requests, taken = drive(agent, clock, clock.now, 1.0, 20_000)
    finally:
        agent.exporter.close()
    assert len(taken) == requests and {rate for _, rate in taken} == {1}


def test_refused_candidates_are_drops_and_the_bound_holds_by_construction() -> None:
    """Load that jumps 100x within each window: the bucket, not the estimate, holds the
    bound; a due candidate without a token is counted as a drop."""
    clock = Clock()
    sampler = Sampler(1, random.Random(5), clock=clock)
    refused: list[int] = []
    sampler.on_refuse = lambda: refused.append(1)
    sampler.set_cap(50)
    times: list[float] = []
    for step in range(40):
        per_second = 100 if step % 2 else 10_000
        for _ in range(per_second // 4):
            clock.now += 1 / per_second
            n = sampler.pool()
            if n >= sampler.next_at and (rate := sampler.decide(n)):
                assert rate == sampler.rate  # the N in force at the decision
                times.append(clock.now)
    assert most_in_any_second(times) <= 75


def test_capture_lifts_the_cap(collector: Collector, state_dir: str) -> None:
    from sflow_app.testing import Capture

    clock = Clock()
    agent = guarded_agent(clock, collector, 100, state_dir)
    try:
        source = agent.http_source()
        assert source.sampler.cap == 100
        capture = Capture(agent)
        agent.begin_capture(capture)
        assert (source.sampler.cap, source.sampler.rate) == (0, 1)
        agent.end_capture(capture)
        assert source.sampler.cap == 100
    finally:
        agent.exporter.close()


def test_setting_is_registered() -> None:
    path = "/nonexistent"
    assert resolve({}, {}, None, path).max_samples == DEFAULT_MAX_SAMPLES == 2000
    assert resolve({}, {"SFLOW_APP_MAX_SAMPLES": "0"}, None, path).max_samples == 0
    assert resolve({"max_samples": 50}, {}, None, path).max_samples == 50
    bad = resolve({}, {"SFLOW_APP_MAX_SAMPLES": "lots"}, None, path)
    assert bad.max_samples == 2000 and any("SFLOW_APP_MAX_SAMPLES" in w for w in bad.warnings)


# -- end to end: the agent's thread, a real UDP collector ------------------------------------


@pytest.mark.slow
def test_guard_end_to_end(agent, collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 6 s burst through the WSGI middleware far above a cap of 100/s, then 50
    requests/s: what a collector receives. Each URI carries the time it was requested
    (the sampling time), so windows are counted on the requests' own clock."""
    from sflow_app.wsgi import SFlowMiddleware

    cap = 100
    monkeypatch.setenv("SFLOW_APP_MAX_SAMPLES", str(cap))
    monkeypatch.setenv("SFLOW_APP_DS_INDEX", "8000")
    monkeypatch.setenv("SFLOW_APP_QUEUE", "65536")
    ag = agent(sampling=1, polling=0)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wrapped = SFlowMiddleware(app)
    environ = {
        "REQUEST_METHOD": "GET",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }

    def one(path: str) -> None:
        result = wrapped({**environ, "PATH_INFO": path}, lambda *a: None)  # type: ignore[arg-type]
        for _ in result:
            pass
        getattr(result, "close", lambda: None)()

    t0 = time.monotonic()
    burst = 0
    while (now := time.monotonic()) < t0 + 6.0:
        one(f"/b/{now - t0:.6f}")
        burst += 1
    fall = time.monotonic()
    while (now := time.monotonic()) < fall + 4.0:
        one(f"/a/{now - fall:.6f}")
        time.sleep(0.02)
    ag.shutdown()  # the last partial datagram
    collector.poll(0.5)
    if burst < 6 * 10 * cap:
        pytest.skip(f"the machine issued only {burst} requests in 6 s (too slow for a burst)")
    samples = [
        (s.sampling_rate, str(r.uri))
        for s in collector.flow_samples()
        for r in s.records
        if isinstance(r, HttpRequest)
    ]
    burst_samples = [(rate, float(uri[3:])) for rate, uri in samples if uri.startswith("/b/")]
    after = [(rate, float(uri[3:])) for rate, uri in samples if uri.startswith("/a/")]
    assert most_in_any_second([t for _, t in burst_samples]) <= 1.5 * cap
    assert max(rate for rate, _ in burst_samples) > 5
    estimate = sum(rate for rate, _ in burst_samples)
    drops = ag.http_source().drops
    assert abs(estimate - burst) <= 0.15 * burst, (estimate, burst, drops)
    late = [rate for rate, t in after if t >= 2.0]
    assert late and set(late) == {1}, late

"""Process lifecycle: lazy start, a bounded flush at exit, IPv6, explicit collectors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import Collector, write_auto

from sflow_app.records import CountersSample, FlowSample, HttpCounters

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, {tests!r})
    from sflow_app._agent import AGENT
    from test_exporter import request
    assert threading.active_count() == 1  # nothing started by importing
    source = AGENT.http_source()
    assert threading.active_count() == 2  # the exporter, started with the first surface
    AGENT.set_http_port(8080, "test")
    for _ in range(7):
        request(source)
    assert threading.active_count() == 2
    # Exit at once: the samples are still queued, the counters never polled.
""")


def run_script(env: dict[str, str]) -> float:
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tests=str(ROOT / "tests"))],
        env={**os.environ, **env},
        check=True,
        timeout=30,
        cwd=ROOT,
    )
    return time.monotonic() - start


def test_exit_flushes_samples_and_final_counters(tmp_path: Path, collector: Collector) -> None:
    path = write_auto(tmp_path / "hsflowd.auto", collector.port, sampling=1, polling=30)
    elapsed = run_script({"SFLOW_APP_CONFIG": str(path), "SFLOW_APP_NAME": "exit"})
    collector.poll(0.5)
    flows = [s for s in collector.samples() if isinstance(s, FlowSample)]
    assert len(flows) == 7
    # The last counters, sent on the way out (a regular poll may come before it: the first
    # one is due at a random point of the 30 s interval, ~1 run in 30 within the script).
    polled = sorted(
        (s for s in collector.samples() if isinstance(s, CountersSample)),
        key=lambda s: s.sequence_number,
    )
    assert polled
    [hc] = [r for r in polled[-1].records if isinstance(r, HttpCounters)]
    assert hc.method_get_count == 7
    assert elapsed < 10  # generous: interpreter start plus a bounded flush


def test_exit_is_not_delayed_by_a_dead_collector(tmp_path: Path) -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens: sends get ICMP port unreachable
    path = write_auto(tmp_path / "hsflowd.auto", port, sampling=1, polling=1)
    elapsed = run_script({"SFLOW_APP_CONFIG": str(path), "SFLOW_APP_NAME": "dead"})
    assert elapsed < 10


def test_explicit_collectors_without_a_file_and_ipv6(tmp_path: Path) -> None:
    collector = Collector(socket.AF_INET6)
    try:
        env = {
            "SFLOW_APP_CONFIG": str(tmp_path / "missing.auto"),
            "SFLOW_APP_COLLECTORS": f"[::1]:{collector.port}",
            "SFLOW_APP_SAMPLING": "1",
            "SFLOW_APP_NAME": "v6",
        }
        run_script(env)
        collector.poll(0.5)
        assert collector.datagrams
        # No agentIP anywhere: the local address that routes to the first collector.
        assert {d.agent_address for d in collector.datagrams} == {"::1"}
        assert len([s for s in collector.samples() if isinstance(s, FlowSample)]) == 7
        assert any(isinstance(s, CountersSample) for s in collector.samples())
    finally:
        collector.close()


def test_disabled_sends_nothing(tmp_path: Path, collector: Collector) -> None:
    path = write_auto(tmp_path / "hsflowd.auto", collector.port, sampling=1, polling=1)
    run_script({"SFLOW_APP_CONFIG": str(path), "SFLOW_APP_DISABLE": "1", "SFLOW_APP_NAME": "off"})
    assert collector.poll(0.3) == []

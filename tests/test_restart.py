"""An agent stopped and started again in one process counts nothing twice."""

from __future__ import annotations

from test_exporter import request

from sflow_app.records import HttpCounters


def test_counts_survive_shutdown_and_restart_without_doubling(agent, collector) -> None:
    a = agent(sampling=0, polling=1)
    source = a.http_source()
    a.set_http_port(8080, "test")
    for _ in range(5):
        request(source)
    a.shutdown()  # sends the last counters
    collector.poll(0.5)
    assert collector.latest_counters(HttpCounters).method_get_count == 5
    for _ in range(3):
        request(source)  # the first of these restarts the exporter
    a.shutdown()
    collector.poll(0.5)
    assert collector.latest_counters(HttpCounters).method_get_count == 8

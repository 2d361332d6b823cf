"""The exporter end to end through a real UDP socket, driven by an injected clock."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pytest
from helpers import Collector, write_auto

from sflow_app._agent import Agent
from sflow_app._http import METHODS, status_slot, submit_http
from sflow_app._source import Deferred
from sflow_app.records import (
    INTERNAL,
    AppOperations,
    AppResources,
    AppWorkers,
    CountersSample,
    ExtendedSocketIPv4,
    FlowSample,
    HostParent,
    HttpCounters,
    HttpRequest,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_agent(tmp_path: Path, collector: Collector, clock: Clock, state_dir: str):
    def make(**auto) -> Agent:
        path = write_auto(tmp_path / "hsflowd.auto", collector.port, **auto)
        env = {
            "SFLOW_APP_CONFIG": str(path),
            "SFLOW_APP_NAME": "unit",
            "SFLOW_APP_STATE_DIR": state_dir,
        }
        agent = Agent(autostart=False, env=env, clock=clock)
        agent.reload()
        made.append(agent)
        return agent

    made: list[Agent] = []
    yield make
    for agent in made:
        agent.exporter.close()


def request(source, method: str = "GET", status: int = 200, uri: str = "/x") -> bool:
    """The surfaces' hot path, then a sampled record when due."""
    n = source.sampler.pool()
    sampled = n >= source.sampler.next_at and source.sample(n)
    incr = source.counters.incr
    incr[METHODS.get(method, (0, 8))[1]]()
    incr[status_slot(status)]()
    if sampled:
        submit_http(
            source,
            n,
            sampled,
            method=method,
            protocol=1001,
            uri=uri,
            status=status,
            resp_bytes=10,
            duration_us=5,
            local=("127.0.0.1", 8080),
            remote=("127.0.0.1", 50000),
        )
    return bool(sampled)


def test_samples_and_counters_arrive_over_udp(make_agent, collector: Collector, clock: Clock):
    agent = make_agent(sampling=1, polling=5)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    for i in range(3):
        assert request(source, "POST" if i else "GET", 200 + 100 * i, f"/r{i}")
    agent.tick(clock.now)  # samples staged, not yet a second old
    assert collector.poll(0.05) == []
    clock.now += 1.01
    agent.tick(clock.now)
    [dg] = collector.poll(0.5)
    assert (dg.agent_address, dg.sub_agent_id, dg.sequence_number) == ("127.0.0.1", 8080, 1)
    flows = [s for s in dg.samples if isinstance(s, FlowSample)]
    assert [s.sequence_number for s in flows] == [1, 2, 3]
    assert [s.sample_pool for s in flows] == [1, 2, 3]  # the pool at each sample
    first = flows[0]
    assert (first.ds_class, first.ds_index, first.sampling_rate) == (3, 8080, 1)
    assert (first.input_value, first.output_value) == (0, INTERNAL)
    http = [r for s in flows for r in s.records if isinstance(r, HttpRequest)]
    assert [(r.method, r.status, r.uri) for r in http] == [
        (2, 200, "/r0"),
        (4, 300, "/r1"),
        (4, 400, "/r2"),
    ]
    assert all(isinstance(s.records[1], ExtendedSocketIPv4) for s in flows)
    # Counters: the first poll falls at a random offset within the interval.
    clock.now += 5.01
    agent.tick(clock.now)
    clock.now += 1.01
    agent.tick(clock.now)
    collector.poll(0.5)
    counters = [s for s in collector.samples() if isinstance(s, CountersSample)]
    assert counters and counters[0].sequence_number == 1, collector.datagrams
    hc, ops, resources, workers, parent = counters[0].records
    assert isinstance(hc, HttpCounters) and isinstance(parent, HostParent)
    assert isinstance(ops, AppOperations) and (ops.application, ops.success) == ("unit", 2)
    assert ops.bad_request == 1  # a 400
    assert isinstance(resources, AppResources) and resources.mem_used > 0
    assert isinstance(workers, AppWorkers) and workers.workers_max == 1
    assert (hc.method_get_count, hc.method_post_count) == (1, 2)
    assert (hc.status_2XX_count, hc.status_3XX_count, hc.status_4XX_count) == (1, 1, 1)
    assert (parent.container_type, parent.container_index) == (2, 1)
    assert [d.sequence_number for d in collector.datagrams] == list(
        range(1, len(collector.datagrams) + 1)
    )


def test_a_new_identity_heads_the_next_datagram(make_agent, collector: Collector, clock: Clock):
    # The header's start (version, agent address, sub-agent) is packed once per identity:
    # an agent address or sub-agent that changes is in the next datagram.
    agent = make_agent(sampling=1, polling=0)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    heads = []
    for agent_ip, sub_agent in (("127.0.0.1", None), ("::1", None), ("::1", 7), ("10.1.2.3", 7)):
        agent.configure(agent_ip=agent_ip, sub_agent_id=sub_agent)
        assert request(source)
        agent.tick(clock.now, final=True)
        [dg] = collector.poll(0.5)
        heads.append((dg.agent_address, dg.sub_agent_id, dg.sequence_number))
    # (the strict decoder takes the whole datagram: 28- and 40-byte headers alike)
    assert heads == [("127.0.0.1", 8080, 1), ("::1", 8080, 2), ("::1", 7, 1), ("10.1.2.3", 7, 2)]


def test_interleaved_sources_each_number_by_one(make_agent, collector: Collector, clock: Clock):
    # A datagram holding runs of two sources' samples (and counter samples): each source
    # and kind numbers its own samples, by one, in the order they are in the datagram.
    agent = make_agent(sampling=1, polling=0)
    http = agent.http_source()
    agent.set_http_port(8080, "test")
    app = agent.app_source("shop")
    record = HttpRequest(method=2, protocol=1001, uri="/x", status=200)
    for round_ in range(3):
        for source, runs in ((http, 2), (app, 1), (http, 1), (app, 2)):
            for _ in range(runs):
                n = source.sampler.pool()
                source.submit(n, (record,), source.sample(n))
        agent.tick(clock.now, final=round_ == 2)
        clock.now += 0.1
    dgs = collector.poll(0.5)
    seqs: dict[int, list[int]] = {}
    for dg in dgs:
        for sample in dg.samples:
            if isinstance(sample, FlowSample):
                seqs.setdefault(sample.ds_index, []).append(sample.sequence_number)
    assert seqs == {8080: list(range(1, 10)), app.ds_index: list(range(1, 10))}


def test_partial_datagram_waits_about_a_second(make_agent, collector: Collector, clock: Clock):
    agent = make_agent(sampling=1, polling=0)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    request(source)
    agent.tick(clock.now)
    clock.now += 0.9
    agent.tick(clock.now)
    assert collector.poll(0.05) == []
    clock.now += 0.11
    agent.tick(clock.now)
    assert len(collector.poll(0.5)) == 1


def test_packing_respects_datagram_size(make_agent, collector: Collector, clock: Clock):
    agent = make_agent(sampling=1, polling=0)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    for i in range(200):
        request(source, uri=f"/item/{i}/" + "x" * 50)
    agent.tick(clock.now, final=True)
    dgs = collector.poll(0.5)
    assert len(dgs) > 1
    assert all(len(raw) <= 1400 for raw in collector.raw)
    uris = [r.uri for d in dgs for s in d.samples for r in s.records if isinstance(r, HttpRequest)]
    assert uris == [f"/item/{i}/" + "x" * 50 for i in range(200)]
    seqs = [s.sequence_number for d in dgs for s in d.samples]
    assert seqs == list(range(1, 201))


def test_no_identity_no_sending_until_port_known(make_agent, collector: Collector, clock: Clock):
    agent = make_agent(sampling=1, polling=1)
    source = agent.http_source()
    request(source)
    agent.tick(clock.now, final=True)
    assert collector.poll(0.1) == []
    agent.set_http_port(9090, "test")
    clock.now += 2
    agent.tick(clock.now, final=True)
    dgs = collector.poll(0.5)
    assert dgs and dgs[0].sub_agent_id == 9090
    assert any(isinstance(s, FlowSample) and s.ds_index == 9090 for s in dgs[0].samples)


def test_queue_overflow_is_counted_as_drops(
    make_agent, collector: Collector, clock: Clock, monkeypatch: pytest.MonkeyPatch
):
    agent = make_agent(sampling=1, polling=0)
    agent.configure(queue_capacity=64)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    for _ in range(100):
        request(source)
    assert source.drops == 36
    assert agent.status()["queue_drops"] == 36
    agent.tick(clock.now, final=True)
    flows = [s for d in collector.poll(0.5) for s in d.samples]
    assert len(flows) == 64
    assert {s.drops for s in flows} == {36}


def test_config_reload_applies_within_a_tick(
    make_agent, tmp_path: Path, collector: Collector, clock: Clock
):
    agent = make_agent(sampling=1, polling=0)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    agent.tick(clock.now)
    assert source.sampler.rate == 1
    other = Collector()
    try:
        write_auto(tmp_path / "hsflowd.auto", other.port, rev=2, sampling=7, polling=0)
        os.utime(tmp_path / "hsflowd.auto", ns=(1, 2))  # a new mtime_ns, whatever the clock
        clock.now += 0.5
        agent.tick(clock.now)
        assert source.sampler.rate == 1  # not checked yet: once a second
        clock.now += 0.6
        agent.tick(clock.now)
        assert source.sampler.rate == 7
        for _ in range(100):
            request(source)
        agent.tick(clock.now, final=True)
        assert other.poll(0.5) and collector.poll(0.1) == []
    finally:
        other.close()


def test_config_removed_turns_sending_off(
    make_agent, tmp_path: Path, collector: Collector, clock: Clock
):
    agent = make_agent(sampling=1, polling=0)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    (tmp_path / "hsflowd.auto").unlink()
    clock.now += 1.1
    agent.tick(clock.now)
    assert not agent.settings.enabled and source.sampler.rate == 0
    assert not request(source)
    agent.tick(clock.now, final=True)
    assert collector.poll(0.1) == []


def test_send_errors_never_raise(make_agent, collector: Collector, clock: Clock):
    agent = make_agent(sampling=1, polling=0)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    broken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    broken.close()  # send() on it fails with EBADF, as a dead socket would
    agent.exporter._socks[("127.0.0.1", collector.port)] = broken
    request(source)
    agent.tick(clock.now, final=True)
    status = agent.status()
    assert status["send_errors"] == 1 and "127.0.0.1" in status["last_send_error"]


def _closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_failing_collectors_are_visible(make_agent, collector: Collector, clock: Clock, caplog):
    """A collector whose port is closed (ICMP port-unreachable) and one that refuses every
    send (a broadcast address: EACCES) are counted per collector, with the errno, and
    warned about once each; the healthy collector beside them gets every datagram."""
    closed = _closed_port()
    agent = make_agent(sampling=1, polling=0)
    agent.configure(
        collectors=f"127.0.0.1:{closed},255.255.255.255:{closed},127.0.0.1:{collector.port}"
    )
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    with caplog.at_level(logging.WARNING, logger="sflow_app"):
        for _ in range(6):
            request(source)
            agent.tick(clock.now, final=True)
            time.sleep(0.05)  # the ICMP error arrives
    assert len(collector.poll(0.5)) == 6
    status = agent.status()
    health = status["collector_health"]
    refused = health[f"127.0.0.1:{closed}"]
    assert refused["errors"] >= 2 and refused["last_errno"] == "ECONNREFUSED"
    assert refused["failing"]
    broadcast = health[f"255.255.255.255:{closed}"]
    assert broadcast["errors"] == 6 and broadcast["last_errno"] == "EACCES"
    assert health[f"127.0.0.1:{collector.port}"] == {
        "sent": 6,
        "errors": 0,
        "failing": False,
        "last_errno": "",
        "last_error": "",
    }
    assert "failing" in status["state"]
    warnings = [r.getMessage() for r in caplog.records if "sending fails" in r.getMessage()]
    assert len(warnings) == 2, warnings


def test_recovered_collector_gets_one_line(
    make_agent, collector: Collector, clock: Clock, caplog, monkeypatch
):
    from sflow_app import _send

    monkeypatch.setattr(_send, "RECOVER_AFTER", 0.0)
    agent = make_agent(sampling=1, polling=0)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    broken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    broken.close()
    agent.exporter._socks[("127.0.0.1", collector.port)] = broken
    with caplog.at_level(logging.INFO, logger="sflow_app"):
        for _ in range(3):
            request(source)
            agent.tick(clock.now, final=True)
    lines = [r.getMessage() for r in caplog.records if "collector" in r.getMessage()]
    assert len(lines) == 2 and "fails" in lines[0] and "again" in lines[1], lines
    assert not agent.status()["collector_health"][f"127.0.0.1:{collector.port}"]["failing"]


def test_oversized_sample_is_trimmed_to_fit(make_agent, collector: Collector, clock: Clock):
    agent = make_agent(sampling=1, polling=0)
    agent.configure(datagram=200)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    n = source.sampler.pool()
    rate = source.sample(n)
    assert rate
    submit_http(
        source,
        n,
        rate,
        method="GET",
        protocol=1001,
        uri="/" + "u" * 254,
        useragent="a" * 128,
        referer="r" * 255,
        host="h" * 64,
    )
    agent.tick(clock.now, final=True)
    [dg] = collector.poll(0.5)
    assert len(collector.raw[0]) <= 200
    [rec] = dg.samples[0].records
    assert rec.uri.startswith("/uuu") and len(rec.uri) < 255


def test_each_sample_is_encoded_once(
    make_agent, collector: Collector, clock: Clock, monkeypatch: pytest.MonkeyPatch
):
    from sflow_app import _encode

    encoded: list[object] = []
    encode_http = _encode._ENCODERS[HttpRequest]

    def counting(rec: object) -> bytes:
        encoded.append(rec)
        return encode_http(rec)

    monkeypatch.setitem(_encode._ENCODERS, HttpRequest, counting)
    agent = make_agent(sampling=1, polling=0)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    for i in range(3):
        assert request(source, uri=f"/r{i}")
    agent.tick(clock.now, final=True)
    [dg] = collector.poll(0.5)
    assert len(dg.samples) == 3
    assert len(encoded) == 3  # not once to learn its size and once more to send it


class Kept(Deferred):
    """A surface's sample left to the exporter to encode (as WSGI and ASGI leave theirs)."""

    def __init__(self, record: HttpRequest) -> None:
        self.record = record

    def build(self) -> tuple[HttpRequest]:
        return (self.record,)


@pytest.mark.parametrize("deferred", [False, True])
@pytest.mark.parametrize("spare", [0, -1, -4])
def test_sample_exactly_at_the_datagram_limit(
    make_agent, collector: Collector, clock: Clock, spare: int, deferred: bool
):
    # The exporter encodes each sample once and sends those bytes: one that is exactly as
    # long as the room in a datagram goes out whole, one byte more and it is trimmed. A
    # sample a surface left to the exporter (deferred) is staged as it is encoded.
    from sflow_app._encode import encode_flow_sample
    from sflow_app._staging import HEADER_MAX

    uri = "/" + "u" * 200
    record = HttpRequest(method=2, protocol=1001, uri=uri, useragent="a" * 100, status=200)
    size = len(encode_flow_sample(FlowSample(0, 3, 8080, 1, 1, 0, 0, 0, 0, INTERNAL, (record,))))
    agent = make_agent(sampling=1, polling=0)
    agent.configure(datagram=size + HEADER_MAX + spare)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    for _ in range(2):
        n = source.sampler.pool()
        rate = source.sample(n)
        assert rate
        if deferred:
            source.submit(n, Kept(record), rate)
        else:
            fields = {"uri": uri, "useragent": "a" * 100, "status": 200}
            submit_http(source, n, rate, method="GET", protocol=1001, **fields)
    agent.tick(clock.now, final=True)
    dgs = collector.poll(0.5)
    assert [len(dg.samples) for dg in dgs] == [1, 1]
    samples = [dg.samples[0] for dg in dgs]
    assert [(s.sequence_number, s.sample_pool, s.drops) for s in samples] == [(1, 1, 0), (2, 2, 0)]
    for sample, raw in zip(samples, collector.raw, strict=True):
        [rec] = sample.records
        if spare == 0:
            assert rec == record and len(raw) == size + 28  # IPv4 agent header
        else:
            assert rec.useragent == record.useragent and rec.uri.startswith("/uuu")
            assert len(rec.uri) < len(uri) and len(raw) <= size + 28 + spare
    assert source.drops == 0


def test_a_deferred_sample_with_a_number_out_of_range_is_clamped(
    make_agent, collector: Collector, clock: Clock
):
    # A rate the compact header cannot hold takes the clamping path, its pool step intact.
    agent = make_agent(sampling=1, polling=0)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    record = HttpRequest(method=2, protocol=1001, uri="/x", status=200)
    for rate in (1, 2**32 + 7, 1):
        n = source.sampler.pool()
        assert source.sample(n)
        source.submit(n, Kept(record), rate)
    agent.tick(clock.now, final=True)
    [dg] = collector.poll(0.5)
    got = [(s.sequence_number, s.sampling_rate, s.sample_pool) for s in dg.samples]
    assert got == [(1, 1, 1), (2, 0xFFFFFFFF, 2), (3, 1, 3)]
    assert source.drops == 0


def test_status_reports_config_and_identity(make_agent, clock: Clock):
    agent = make_agent(sampling=10, polling=30)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    request(source)
    agent.tick(clock.now)
    status = agent.status()
    assert status["enabled"] and status["source"] == "file"
    assert status["agent_address"] == "127.0.0.1" and status["sub_agent_id"] == 8080
    assert status["data_sources"]["http"]["ds_index"] == 8080
    assert status["data_sources"]["http"]["sample_pool"] == 1
    assert status["data_sources"]["http"]["counters"]["method_get_count"] == 1
    assert status["sender"] is True


def test_the_application_random_stream_is_left_alone(
    make_agent, collector: Collector, clock: Clock
):
    """The agent draws from its own generators, never from the ``random`` module's shared
    one: an application (or a test framework) that seeds ``random`` gets the same stream
    with the agent running beside it. Hypothesis noticed: the exporter thread's first
    poll offset moved the global state while it drew (HypothesisDeprecationWarning)."""
    import random

    agent = make_agent(sampling=1, polling=5)
    source = agent.http_source()
    agent.set_http_port(8080, "test")
    random.seed(1234)
    before = random.getstate()
    assert request(source)
    for _ in range(3):  # samples, the first poll (at a random offset), counters
        clock.now += 3.0
        agent.tick(clock.now)
    agent.exporter._fall_back("a test")  # the fallback's random sub-agent
    clock.now += 3.0
    agent.tick(clock.now)
    assert collector.poll(0.5)
    assert random.getstate() == before

"""Beside OpenTelemetry's pymemcache instrumentation (both wrap pymemcache's Client):
each sees every operation once, in either order, and each undoes only its own wrapping,
in either order of removal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.instrumentation.pymemcache")

from helpers import close_clients, keep
from memcached import Memcached, running
from opentelemetry.instrumentation.pymemcache import PymemcacheInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheIllegalInputError

import sflow_app.memcache as sfm
from sflow_app._agent import AGENT
from sflow_app.records import MemcacheCmd, MemcacheOperation, MemcacheStatus


@pytest.fixture(autouse=True)
def closed_clients() -> Iterator[None]:
    yield
    close_clients()


@pytest.fixture
def server() -> Iterator[Memcached]:
    with running() as mc:
        yield mc


@pytest.fixture
def otel() -> Iterator[tuple[PymemcacheInstrumentor, InMemorySpanExporter, TracerProvider]]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    instrumentor = PymemcacheInstrumentor()
    yield instrumentor, spans, provider
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    sfm.uninstrument()


def workload(server: Memcached) -> None:
    c = keep(Client(server.server, default_noreply=False))
    c.set("k", b"value")
    c.get("k")
    c.get("missing")
    c.delete("k")
    c.close()


def sflow_counts() -> dict[str, int]:
    counters = AGENT.memcache_source().counters
    counts = dict(zip(counters.names, counters.snapshot(), strict=True))
    return {k: counts[k] for k in ("cmd_set", "get_hits", "get_misses", "delete_hits")}


ONE_EACH = {"cmd_set": 1, "get_hits": 1, "get_misses": 1, "delete_hits": 1}


@pytest.mark.parametrize("first", ["otel", "sflow"])
def test_both_see_every_operation_once(agent, server, otel: Any, first: str) -> None:
    agent(sampling=0)
    instrumentor, spans, provider = otel
    for which in (first, "sflow" if first == "otel" else "otel"):
        if which == "otel":
            instrumentor.instrument(tracer_provider=provider)
        else:
            sfm.instrument()
    workload(server)
    assert sflow_counts() == ONE_EACH
    assert sorted(s.name for s in spans.get_finished_spans()) == ["delete", "get", "get", "set"]
    # Removed last-in first-out: the outer one goes, the inner one still works alone.
    if first == "otel":
        sfm.uninstrument()
        workload(server)
        assert sflow_counts() == ONE_EACH  # sflow no longer counts
        assert len(spans.get_finished_spans()) == 8  # OpenTelemetry still traces
    else:
        instrumentor.uninstrument()
        workload(server)
        assert sflow_counts() == {k: 2 * v for k, v in ONE_EACH.items()}
        assert len(spans.get_finished_spans()) == 4


def test_out_of_order_removal_takes_out_only_our_layer(agent, server, otel: Any, caplog) -> None:
    """sflow_app first, OpenTelemetry on top, then sflow_app removed first: its layer
    leaves OpenTelemetry's chain, which goes on tracing; then OpenTelemetry's removal
    leaves pymemcache as it was."""
    agent(sampling=0)
    instrumentor, spans, provider = otel
    pristine = dict(vars(Client))
    sfm.instrument()
    instrumentor.instrument(tracer_provider=provider)
    workload(server)
    assert sflow_counts() == ONE_EACH and len(spans.get_finished_spans()) == 4
    sfm.uninstrument()
    assert "cannot unlink" not in caplog.text
    workload(server)
    assert sflow_counts() == ONE_EACH  # sflow_app counts no more
    assert sorted(s.name for s in spans.get_finished_spans()[4:]) == ["delete", "get", "get", "set"]
    instrumentor.uninstrument()
    assert dict(vars(Client)) == pristine


def test_under_opentelemetry_removed_first(agent, server, otel: Any) -> None:
    """OpenTelemetry first, sflow_app on top, then OpenTelemetry removed first: its
    removal takes its wrappers off (sflow_app went in under them), so it traces no more,
    sflow_app counts on, and sflow_app's removal leaves pymemcache as it was."""
    agent(sampling=0)
    instrumentor, spans, provider = otel
    pristine = dict(vars(Client))
    instrumentor.instrument(tracer_provider=provider)
    sfm.instrument()
    workload(server)
    assert sflow_counts() == ONE_EACH and len(spans.get_finished_spans()) == 4
    instrumentor.uninstrument()
    workload(server)
    assert sflow_counts() == {k: 2 * v for k, v in ONE_EACH.items()}
    assert len(spans.get_finished_spans()) == 4  # OpenTelemetry traces no more
    sfm.uninstrument()
    assert dict(vars(Client)) == pristine


@pytest.mark.parametrize("how", ["instrument", "wrap"])
def test_opentelemetry_first_keeps_its_span_attributes(agent, server, otel: Any, how: str) -> None:
    """Under sflow_app, OpenTelemetry's wrappers (installed first) still get the client
    their command runs for: the spans of the commands sflow_app guards name the server and
    the key, as the others do."""
    agent(sampling=0)
    instrumentor, spans, provider = otel
    instrumentor.instrument(tracer_provider=provider)

    class Own(Client):  # wrap() makes its subclass now, under OpenTelemetry's wrappers
        pass

    c = keep(Own(server.server, default_noreply=False))
    if how == "instrument":
        sfm.instrument()
    else:
        sfm.wrap(c)
    c.set("k", b"v")
    c.delete("k")
    sfm.uninstrument()  # a no-op after wrap()
    attrs = {span.name: dict(span.attributes or {}) for span in spans.get_finished_spans()}
    assert "delete k" in attrs["delete"].values()
    assert {k: v for k, v in attrs["delete"].items() if v != "delete k"} == {
        k: v for k, v in attrs["set"].items() if v != "set k"
    }


@pytest.mark.parametrize("first", ["otel", "sflow"])
def test_refusals_through_an_alias_are_recorded(
    agent, collector, server, otel: Any, first: str
) -> None:
    """delete_multi is delete_many under another name, and OpenTelemetry wraps only
    delete_many: a refused key is recorded through either name, in either order."""
    agent(sampling=1, polling=0)
    instrumentor, _, provider = otel
    order = [first, "sflow" if first == "otel" else "otel"]
    for which in order:
        if which == "otel":
            instrumentor.instrument(tracer_provider=provider)
        else:
            sfm.instrument()
    c = keep(Client(server.server, default_noreply=False))
    for delete in (c.delete_many, c.delete_multi):
        with pytest.raises(MemcacheIllegalInputError):
            delete(["bad key"])
    for which in reversed(order):  # last in, first out
        if which == "otel":
            instrumentor.uninstrument()
        else:
            sfm.uninstrument()
    AGENT.tick(time.monotonic(), final=True)
    collector.poll(0.05)
    got = [
        (r.cmd, r.key, r.nkeys, r.status)
        for sample in collector.flow_samples()
        for r in sample.records
        if isinstance(r, MemcacheOperation)
    ]
    assert got == [(MemcacheCmd.DELETE, "bad key", 1, MemcacheStatus.CLIENT_ERROR)] * 2


def every_command(c: Client) -> None:
    """Each command OpenTelemetry traces, the ones sflow_app guards included."""
    c.set("k", b"1")
    c.set_many({"n": b"1"})
    c.add("a", b"1")
    _, token = c.gets("k")
    c.cas("k", b"2", token)
    c.get("k")
    c.get_many(["k", "n"])
    c.incr("n", 1)
    c.decr("n", 1)
    c.touch("k")
    c.delete("k")
    c.delete_many(["n"])
    c.flush_all()


@pytest.mark.parametrize("otel_first", [False, True], ids=["wrap-first", "otel-first"])
def test_wrap_follows_opentelemetry_added_or_removed_later(
    agent, server, otel: Any, otel_first: bool
) -> None:
    """wrap() does not freeze the class's public commands as they were: OpenTelemetry
    installed after it traces every command of a wrapped client, as of any other; removed
    after it, it traces none."""
    agent(sampling=0)
    instrumentor, spans, provider = otel
    if otel_first:
        instrumentor.instrument(tracer_provider=provider)
    wrapped = sfm.wrap(keep(Client(server.server, default_noreply=False)))
    if otel_first:
        instrumentor.uninstrument()
    else:
        instrumentor.instrument(tracer_provider=provider)
    other = keep(Client(server.server, default_noreply=False))  # never wrapped
    every_command(other)
    expected = sorted(s.name for s in spans.get_finished_spans())
    spans.clear()
    every_command(wrapped)
    assert sorted(s.name for s in spans.get_finished_spans()) == expected
    assert len(expected) == (0 if otel_first else 13)
    counts = dict(
        zip(
            AGENT.memcache_source().counters.names,
            AGENT.memcache_source().counters.snapshot(),
            strict=True,
        )
    )
    assert counts["cmd_touch"] == counts["cmd_flush"] == counts["decr_hits"] == 1

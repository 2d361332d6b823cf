"""sflow_app.memcache against a real memcached: every command and outcome, field by field.

Each test starts its own memcached on an ephemeral loopback port (tests/memcached.py), the
in-process agent follows an hsflowd.auto pointing at the UDP ``collector``, and what
arrives there is decoded with ``sflow_app.decode``.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import hmac
import inspect
import logging
import pickle
import subprocess
import sys
import threading
import time
import types
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import wrapt
from helpers import close_clients, keep
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memcached import Memcached, free_port, ipv6_loopback, running
from pymemcache.client.base import Client, PooledClient
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheIllegalInputError,
    MemcacheServerError,
    MemcacheUnknownCommandError,
)
from pymemcache.serde import pickle_serde

import sflow_app.memcache as sfm
from sflow_app._agent import AGENT
from sflow_app._identity import local_index
from sflow_app._source import MEMCACHE_COUNTERS
from sflow_app.memcache._state import STATE
from sflow_app.records import (
    INTERNAL,
    ExtendedSocketIPv4,
    ExtendedSocketIPv6,
    MemcacheCmd,
    MemcacheCounters,
    MemcacheOperation,
    MemcacheStatus,
)

Cmd, Status = MemcacheCmd, MemcacheStatus
ASCII = 1


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def collected() -> Iterator[None]:
    """Every test starts and ends with no client open: the curr_connections gauge counts
    this test's connections only, and no socket outlives its test."""
    close_clients()
    yield
    close_clients()


@pytest.fixture
def server() -> Iterator[Memcached]:
    with running() as mc:
        yield mc


@pytest.fixture
def instrumented(agent) -> Iterator[Any]:
    """The agent at 1-in-1 with 1 s polling, and pymemcache instrumented class-wide."""
    ag = agent(sampling=1, polling=1)
    sfm.instrument()
    yield ag
    sfm.uninstrument()


def client(server: Memcached, **kwargs: Any) -> Client:
    kwargs.setdefault("default_noreply", False)
    return keep(Client(server.server, **kwargs))


def flush(collector) -> None:
    if AGENT.runner.started:
        AGENT.shutdown()  # stops the exporter thread and sends what is left, counters too
    else:
        AGENT.tick(time.monotonic(), final=True)
    collector.poll(0.05)


def operations(collector) -> list[tuple[Any, MemcacheOperation, Any]]:
    """(flow sample, memcache_operation, socket record or None), in the order sent."""
    out = []
    for sample in sorted(collector.flow_samples(), key=lambda s: s.sequence_number):
        ops = [r for r in sample.records if isinstance(r, MemcacheOperation)]
        if not ops:
            continue
        assert len(ops) == 1
        socks = [
            r for r in sample.records if isinstance(r, ExtendedSocketIPv4 | ExtendedSocketIPv6)
        ]
        assert len(socks) <= 1
        assert len(sample.records) == 1 + len(socks)
        out.append((sample, ops[0], socks[0] if socks else None))
    return out


def op(cmd: int, key: str | bytes, nkeys: int, value_bytes: int, status: int) -> MemcacheOperation:
    return MemcacheOperation(
        protocol=ASCII, cmd=cmd, key=key, nkeys=nkeys, value_bytes=value_bytes, uS=0, status=status
    )


def timeless(record: MemcacheOperation) -> MemcacheOperation:
    return dataclasses.replace(record, uS=0)


def check_ops(
    collector,
    expected: list[MemcacheOperation],
    *,
    round_trip: bool = True,
) -> list[tuple[Any, MemcacheOperation, Any]]:
    got = operations(collector)
    assert [timeless(o) for _, o, _ in got] == expected
    for _, record, _ in got:
        if round_trip:
            assert 0 < record.uS < 5_000_000, record
    return got


def check_flow_header(sample, pool: int, total: int) -> None:
    """``pool``: the candidate's ordinal. The sender reports the service-wide pool when it
    sends, so sample_pool is at least the ordinal and at most all candidates so far."""
    assert sample.ds_class == 3
    assert sample.ds_index == local_index("tests", "memcache")
    assert sample.sampling_rate == 1
    assert pool <= sample.sample_pool <= total
    assert sample.drops == 0
    assert (sample.input_format, sample.input_value) == (0, INTERNAL)  # client side
    assert (sample.output_format, sample.output_value) == (0, 0)


def counters(collector) -> dict[str, int]:
    found = collector.latest_counters(MemcacheCounters)
    assert found is not None, "no memcache_counters received"
    return dataclasses.asdict(found)


def expected_counters(**nonzero: int) -> dict[str, int]:
    values = dict.fromkeys(MEMCACHE_COUNTERS, 0)
    # The gauge: connections held now, as the last flush read them.
    values["curr_connections"] = STATE.open_connections()
    for name, value in nonzero.items():
        assert name in values, name
        values[name] = value
    return values


def v4(local_port: int, server: Memcached) -> ExtendedSocketIPv4:
    return ExtendedSocketIPv4(
        protocol=6,
        local_ip="127.0.0.1",
        remote_ip="127.0.0.1",
        local_port=local_port,
        remote_port=server.port,
    )


# --------------------------------------------------------------------------- commands


def test_store_commands_and_outcomes(instrumented, collector, server) -> None:
    c = client(server)
    assert c.set("k1", b"v" * 10) is True
    port = c.sock.getsockname()[1]
    assert c.set("k1", b"v" * 3, noreply=True) is True
    assert c.add("k2", b"abc") is True
    assert c.add("k2", b"abcd") is False
    assert c.replace("k3", b"r") is False
    assert c.replace("k2", b"rr") is True
    assert c.append("k2", b"++") is True
    assert c.append("nope", b"++") is False
    assert c.prepend("k2", b"--") is True
    assert c.prepend("nope", b"--") is False
    assert c.set_many({"m1": b"12345", "m2": b"678"}) == []
    assert c.set_multi({"m3": b"1", "m4": b"22", "m5": b"333"}) == []
    c["k9"] = b"item"  # __setitem__: noreply
    c.get("k9")  # after a noreply, one reply proves the server processed it
    flush(collector)
    got = check_ops(
        collector,
        [
            op(Cmd.SET, "k1", 1, 10, Status.STORED),
            op(Cmd.SET, "k1", 1, 3, Status.UNKNOWN),
            op(Cmd.ADD, "k2", 1, 3, Status.STORED),
            op(Cmd.ADD, "k2", 1, 4, Status.NOT_STORED),
            op(Cmd.REPLACE, "k3", 1, 1, Status.NOT_STORED),
            op(Cmd.REPLACE, "k2", 1, 2, Status.STORED),
            op(Cmd.APPEND, "k2", 1, 2, Status.STORED),
            op(Cmd.APPEND, "nope", 1, 2, Status.NOT_STORED),
            op(Cmd.PREPEND, "k2", 1, 2, Status.STORED),
            op(Cmd.PREPEND, "nope", 1, 2, Status.NOT_STORED),
            op(Cmd.SET, "m1", 2, 8, Status.STORED),
            op(Cmd.SET, "m3", 3, 6, Status.STORED),
            op(Cmd.SET, "k9", 1, 4, Status.UNKNOWN),
            op(Cmd.GET, "k9", 1, 4, Status.OK),
        ],
    )
    for i, (sample, _, sock) in enumerate(got, start=1):
        check_flow_header(sample, pool=i, total=len(got))
        assert sock == v4(port, server)
    pools = [sample.sample_pool for sample, _, _ in got]
    assert pools == sorted(pools)
    assert server.bare_get(b"k2") == b"--rr++"
    assert counters(collector) == expected_counters(
        cmd_set=16,
        total_items=10,
        get_hits=1,
        total_connections=1,
        bytes_written=10 + 3 + 3 + 4 + 1 + 2 + 2 + 2 + 2 + 2 + 8 + 6 + 4,
        bytes_read=4,
    )


def test_cas_outcomes(instrumented, collector, server) -> None:
    c = client(server)
    c.set("c", b"one")
    _, token = c.gets("c")
    assert c.cas("c", b"two", token) is True
    assert c.cas("c", b"three", token) is False  # the token is stale now
    assert c.cas("missing", b"x", token) is None
    assert c.cas("c", b"four", token, noreply=True) is True
    flush(collector)
    check_ops(
        collector,
        [
            op(Cmd.SET, "c", 1, 3, Status.STORED),
            op(Cmd.GETS, "c", 1, 3, Status.OK),
            op(Cmd.CAS, "c", 1, 3, Status.STORED),
            op(Cmd.CAS, "c", 1, 5, Status.EXISTS),
            op(Cmd.CAS, "missing", 1, 1, Status.NOT_FOUND),
            op(Cmd.CAS, "c", 1, 4, Status.UNKNOWN),
        ],
    )
    assert counters(collector) == expected_counters(
        cmd_set=5,
        total_items=2,
        get_hits=1,
        cas_hits=1,
        cas_badval=1,
        cas_misses=1,
        total_connections=1,
        bytes_written=3 + 3 + 5 + 1 + 4,
        bytes_read=3,
    )


def test_fetch_commands_and_outcomes(instrumented, collector, server) -> None:
    c = client(server)
    c.set_many({"a": b"1" * 7, "b": b"2" * 5})
    assert c.get("a") == b"1" * 7
    assert c.get("zz", default=b"dflt") == b"dflt"
    assert c.get_many(["a", "x", "b"]) == {"a": b"1" * 7, "b": b"2" * 5}  # partial hit: OK
    assert c.get_multi(["x", "y"]) == {}
    assert c.gets("b")[0] == b"2" * 5
    assert c.gets("nope") == (None, None)
    assert set(c.gets_many(["a", "b", "c"])) == {"a", "b"}
    assert c["a"] == b"1" * 7
    with pytest.raises(KeyError):
        c["missing"]
    assert c.get_many([]) == {}  # no round trip: nothing recorded
    flush(collector)
    check_ops(
        collector,
        [
            op(Cmd.SET, "a", 2, 12, Status.STORED),
            op(Cmd.GET, "a", 1, 7, Status.OK),
            op(Cmd.GET, "zz", 1, 0, Status.NOT_FOUND),
            op(Cmd.GET, "a", 3, 12, Status.OK),
            op(Cmd.GET, "x", 2, 0, Status.NOT_FOUND),
            op(Cmd.GETS, "b", 1, 5, Status.OK),
            op(Cmd.GETS, "nope", 1, 0, Status.NOT_FOUND),
            op(Cmd.GETS, "a", 3, 12, Status.OK),
            op(Cmd.GET, "a", 1, 7, Status.OK),
            op(Cmd.GET, "missing", 1, 0, Status.NOT_FOUND),
        ],
    )
    assert counters(collector) == expected_counters(
        cmd_set=2,
        total_items=2,
        get_hits=1 + 2 + 1 + 2 + 1,
        get_misses=1 + 1 + 2 + 1 + 1 + 1,
        total_connections=1,
        bytes_written=12,
        bytes_read=7 + 12 + 5 + 12 + 7,
    )


@pytest.mark.parametrize("cls", [Client, "OtherSignatures"])
def test_calls_that_send_nothing_are_no_operations(agent, collector, server, cls: Any) -> None:
    """set_many({}) sends no command (pymemcache writes nothing, reads no reply), as
    get_many([]) and delete_many([]) do: no operation, no candidate for sampling."""
    agent(sampling=1, polling=1)
    cls = OtherSignatures if cls == "OtherSignatures" else cls  # generic replacements too
    c = sfm.wrap(keep(cls(server.server, default_noreply=False)))
    assert c.set_many({}) == []
    assert c.set_many({}, noreply=True) == []
    assert c.get_many([]) == {}
    assert c.gets_many([]) == {}
    assert c.delete_many([]) is True
    assert c.get("a") is None
    flush(collector)
    got = check_ops(collector, [op(Cmd.GET, "a", 1, 0, Status.NOT_FOUND)])
    assert got[0][0].sample_pool == 1  # the get was the first candidate
    assert counters(collector) == expected_counters(get_misses=1, total_connections=1)


def test_delete_incr_decr_touch(instrumented, collector, server) -> None:
    c = client(server)
    c.set_many({"d1": b"x", "d2": b"y", "n": b"10"})
    assert c.delete("d1") is True
    assert c.delete("d1") is False
    assert c.delete("d2", noreply=True) is True
    c.set("d3", b"z")
    assert c.delete_many(["d3", "gone"]) is True
    assert c.delete_multi(["gone", "gone2"]) is True
    assert c.incr("n", 5) == 15
    assert c.incr("nokey", 1) is None
    assert c.decr("n", 20) == 0
    assert c.decr("nokey", 1) is None
    assert c.incr("n", 1, noreply=True) is None
    assert c.touch("n", 100) is True
    assert c.touch("nokey", 100) is False
    assert c.touch("n", 0, noreply=True) is True
    del c["n"]  # __delitem__: noreply
    c.version()
    flush(collector)
    check_ops(
        collector,
        [
            op(Cmd.SET, "d1", 3, 4, Status.STORED),
            op(Cmd.DELETE, "d1", 1, 0, Status.DELETED),
            op(Cmd.DELETE, "d1", 1, 0, Status.NOT_FOUND),
            op(Cmd.DELETE, "d2", 1, 0, Status.UNKNOWN),
            op(Cmd.SET, "d3", 1, 1, Status.STORED),
            op(Cmd.DELETE, "d3", 2, 0, Status.DELETED),  # one of two deleted
            op(Cmd.DELETE, "gone", 2, 0, Status.NOT_FOUND),
            op(Cmd.INCR, "n", 1, 0, Status.OK),
            op(Cmd.INCR, "nokey", 1, 0, Status.NOT_FOUND),
            op(Cmd.DECR, "n", 1, 0, Status.OK),
            op(Cmd.DECR, "nokey", 1, 0, Status.NOT_FOUND),
            op(Cmd.INCR, "n", 1, 0, Status.UNKNOWN),
            op(Cmd.TOUCH, "n", 1, 0, Status.OK),
            op(Cmd.TOUCH, "nokey", 1, 0, Status.NOT_FOUND),
            op(Cmd.TOUCH, "n", 1, 0, Status.UNKNOWN),
            op(Cmd.DELETE, "n", 1, 0, Status.UNKNOWN),
            op(Cmd.VERSION, "", 0, 0, Status.OK),
        ],
    )
    assert server.bare_get(b"n") is None
    assert counters(collector) == expected_counters(
        cmd_set=4,
        total_items=4,
        delete_hits=2,
        delete_misses=4,
        incr_hits=1,
        incr_misses=1,
        decr_hits=1,
        decr_misses=1,
        cmd_touch=3,
        total_connections=1,
        bytes_written=5,
    )


def test_admin_and_raw_commands(instrumented, collector, server) -> None:
    c = client(server)
    assert isinstance(c.stats(), dict)
    assert isinstance(c.stats("slabs"), dict)  # an argument is not a key
    assert c.version().startswith(b"1.")
    assert c.cache_memlimit(64) is True
    assert c.flush_all() is True
    assert c.flush_all(noreply=True) is True
    c.set("r", b"abc")
    assert c.raw_command("get r", "END\r\n") == b"VALUE r 0 3\r\nabc\r\n"
    assert c.raw_command("get nothing", "END\r\n") == b""
    assert c.raw_command("delete nothing") == b"NOT_FOUND"
    assert c.raw_command("touch r 10") == b"TOUCHED"
    assert c.raw_command("mn") == b"MN"  # meta no-op: a command without a code
    c.quit()
    assert c.sock is None
    flush(collector)
    check_ops(
        collector,
        [
            op(Cmd.STATS, "", 0, 0, Status.OK),
            op(Cmd.STATS, "", 0, 0, Status.OK),
            op(Cmd.VERSION, "", 0, 0, Status.OK),
            op(Cmd.OTHER, "", 0, 0, Status.OK),
            op(Cmd.FLUSH, "", 0, 0, Status.OK),
            op(Cmd.FLUSH, "", 0, 0, Status.UNKNOWN),
            op(Cmd.SET, "r", 1, 3, Status.STORED),
            op(Cmd.GET, "r", 1, 3, Status.OK),
            op(Cmd.GET, "nothing", 1, 0, Status.NOT_FOUND),
            op(Cmd.DELETE, "nothing", 1, 0, Status.NOT_FOUND),
            op(Cmd.TOUCH, "r", 1, 0, Status.OK),
            op(Cmd.OTHER, "", 0, 0, Status.OK),
            op(Cmd.QUIT, "", 0, 0, Status.UNKNOWN),
        ],
    )
    # raw_command counts as the command it is (test_raw_command_counts_as_its_command).
    assert counters(collector) == expected_counters(
        cmd_flush=2,
        cmd_set=1,
        cmd_touch=1,
        total_items=1,
        get_hits=1,
        get_misses=1,
        delete_misses=1,
        total_connections=1,
        bytes_written=3,
        bytes_read=3,
    )


BIG = 2 * 1024 * 1024  # over memcached's 1 MB item limit


def raw_workload(c: Client) -> list[MemcacheOperation]:
    """raw_command for every command with a counter and every outcome; what a sampled
    run records (the same operations through the client's own methods would count the
    same, see raw_counters)."""
    c.set("r", b"abc")
    assert c.raw_command("set a 0 0 5\r\nhello") == b"STORED"
    assert c.raw_command(b"add a 0 0 2\r\nxy") == b"NOT_STORED"
    assert c.raw_command("get r a nothing", "END\r\n") == (
        b"VALUE r 0 3\r\nabc\r\nVALUE a 0 5\r\nhello\r\n"
    )
    assert c.raw_command("get nothing", "END\r\n") == b""
    reply = c.raw_command("gets r", "END\r\n")
    token = reply.split(b"\r\n")[0].split()[4].decode()
    assert c.raw_command(f"cas r 0 0 3 {token}\r\nxyz") == b"STORED"
    assert c.raw_command(f"cas r 0 0 1 {token}\r\nq") == b"EXISTS"
    assert c.raw_command("cas nokey 0 0 1 1\r\nq") == b"NOT_FOUND"
    assert c.raw_command("set n 0 0 2\r\n10") == b"STORED"
    assert c.raw_command("incr n 5") == b"15"
    assert c.raw_command("incr nokey 1") == b"NOT_FOUND"
    assert c.raw_command("decr n 1") == b"14"
    assert c.raw_command("decr nokey 1") == b"NOT_FOUND"
    assert c.raw_command("delete a") == b"DELETED"
    assert c.raw_command("delete a") == b"NOT_FOUND"
    assert c.raw_command("touch r 10") == b"TOUCHED"
    assert c.raw_command("touch nokey 10") == b"NOT_FOUND"
    assert c.raw_command("gat 10 r nothing", "END\r\n") == b"VALUE r 0 3\r\nxyz\r\n"
    with pytest.raises(MemcacheClientError):
        c.raw_command("incr r 1")  # not a number: the server's CLIENT_ERROR
    with pytest.raises(MemcacheServerError):
        c.raw_command(b"set big 0 0 %d\r\n" % BIG + b"x" * BIG)
    with pytest.raises(MemcacheUnknownCommandError):
        c.raw_command("bogus")
    assert c.raw_command("mn") == b"MN"
    assert c.raw_command("version").startswith(b"VERSION 1.")
    assert c.raw_command("flush_all") == b"OK"
    return [
        op(Cmd.SET, "r", 1, 3, Status.STORED),
        op(Cmd.SET, "a", 1, 5, Status.STORED),
        op(Cmd.ADD, "a", 1, 2, Status.NOT_STORED),
        op(Cmd.GET, "r", 3, 3 + 5, Status.OK),
        op(Cmd.GET, "nothing", 1, 0, Status.NOT_FOUND),
        op(Cmd.GETS, "r", 1, 3, Status.OK),
        op(Cmd.CAS, "r", 1, 3, Status.STORED),
        op(Cmd.CAS, "r", 1, 1, Status.EXISTS),
        op(Cmd.CAS, "nokey", 1, 1, Status.NOT_FOUND),
        op(Cmd.SET, "n", 1, 2, Status.STORED),
        op(Cmd.INCR, "n", 1, 0, Status.OK),
        op(Cmd.INCR, "nokey", 1, 0, Status.NOT_FOUND),
        op(Cmd.DECR, "n", 1, 0, Status.OK),
        op(Cmd.DECR, "nokey", 1, 0, Status.NOT_FOUND),
        op(Cmd.DELETE, "a", 1, 0, Status.DELETED),
        op(Cmd.DELETE, "a", 1, 0, Status.NOT_FOUND),
        op(Cmd.TOUCH, "r", 1, 0, Status.OK),
        op(Cmd.TOUCH, "nokey", 1, 0, Status.NOT_FOUND),
        op(Cmd.GET, "r", 2, 3, Status.OK),  # gat: get and touch
        op(Cmd.INCR, "r", 1, 0, Status.CLIENT_ERROR),
        op(Cmd.SET, "big", 1, BIG, Status.SERVER_ERROR),
        op(Cmd.OTHER, "", 0, 0, Status.ERROR),
        op(Cmd.OTHER, "", 0, 0, Status.OK),
        op(Cmd.VERSION, "", 0, 0, Status.OK),
        op(Cmd.FLUSH, "", 0, 0, Status.OK),
    ]


RAW_COUNTERS = dict(  # expected_counters(**RAW_COUNTERS) when checking
    cmd_set=1 + 2 + 3 + 1 + 1,  # set r; set a, add a; three cas; set n; set big (failed)
    total_items=4,
    cas_hits=1,
    cas_badval=1,
    cas_misses=1,
    get_hits=2 + 1 + 1,
    get_misses=1 + 1 + 1,  # get r a nothing; get nothing; gets; gat
    incr_hits=1,
    incr_misses=1,
    decr_hits=1,
    decr_misses=1,  # incr r failed: none
    delete_hits=1,
    delete_misses=1,
    cmd_touch=2 + 2,  # touch x2; gat touches each of its 2 keys
    cmd_flush=1,
    total_connections=4,  # each error closes the connection
    bytes_written=3 + 5 + 2 + 3 + 1 + 1 + 2,  # the failed set big: none
    bytes_read=3 + 5 + 3 + 3,
)


@pytest.mark.parametrize("sampling", [1, 0])
def test_raw_command_counts_as_its_command(agent, collector, server, sampling: int) -> None:
    """raw_command counts like the command it sends, sampled (1) or not (0)."""
    agent(sampling=sampling, polling=1)
    sfm.instrument()
    try:
        expected = raw_workload(client(server))
    finally:
        sfm.uninstrument()
    flush(collector)
    if sampling:
        check_ops(collector, expected)
    else:
        assert collector.flow_samples() == []
    assert counters(collector) == expected_counters(**RAW_COUNTERS)
    assert AGENT.memcache_source().sampler.sample_pool == len(expected)


def test_shutdown(instrumented, collector) -> None:
    with running(extra=("-A",)) as enabled, running() as disabled:
        client(enabled).shutdown()
        with pytest.raises(MemcacheUnknownCommandError):
            client(disabled).shutdown()
    flush(collector)
    check_ops(
        collector,
        [
            op(Cmd.OTHER, "", 0, 0, Status.OK),
            op(Cmd.OTHER, "", 0, 0, Status.ERROR),  # the server's ERROR reply
        ],
    )


# ----------------------------------------------------------------------------- errors


def test_server_replies_client_server_and_generic_errors(instrumented, collector, server) -> None:
    c = client(server)
    c.set("text", b"abc")
    with pytest.raises(MemcacheClientError) as exc_info:
        c.incr("text", 1)
    assert type(exc_info.value) is MemcacheClientError  # the server's CLIENT_ERROR
    with pytest.raises(MemcacheServerError):
        c.set("huge", b"x" * (2 * 1024 * 1024))  # over memcached's 1 MB item limit
    with pytest.raises(MemcacheUnknownCommandError):
        c.raw_command("bogus_command")
    c.get("text")  # the client reconnects after each error
    last_port = c.sock.getsockname()[1]
    flush(collector)
    got = check_ops(
        collector,
        [
            op(Cmd.SET, "text", 1, 3, Status.STORED),
            op(Cmd.INCR, "text", 1, 0, Status.CLIENT_ERROR),
            op(Cmd.SET, "huge", 1, 2 * 1024 * 1024, Status.SERVER_ERROR),
            op(Cmd.OTHER, "", 0, 0, Status.ERROR),
            op(Cmd.GET, "text", 1, 3, Status.OK),
        ],
    )
    # Each operation names its own connection (four of them).
    first_port = got[0][2].local_port
    assert got[1][2] == v4(first_port, server)
    assert got[-1][2] == v4(last_port, server) and last_port != first_port
    assert len({sock.local_port for _, _, sock in got[1:]}) == 4
    assert counters(collector) == expected_counters(
        cmd_set=2, total_items=1, get_hits=1, total_connections=4, bytes_written=3, bytes_read=3
    )


def test_rejected_before_sending(instrumented, collector, server) -> None:
    """pymemcache's own client errors: CLIENT_ERROR, uS 0 when no round trip started."""
    c = client(server)
    c.set("ok", b"1")
    long_key = "k" * 251
    calls = [
        (lambda: c.get("bad key"), op(Cmd.GET, "bad key", 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.get_many(["fine", "bad key"]), op(Cmd.GET, "fine", 2, 0, Status.CLIENT_ERROR)),
        (lambda: c.set(long_key, b"v"), op(Cmd.SET, long_key, 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.delete("bad key"), op(Cmd.DELETE, "bad key", 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.delete_many(["ok", "bad key"]), op(Cmd.DELETE, "ok", 2, 0, Status.CLIENT_ERROR)),
        (lambda: c.incr("bad key", 1), op(Cmd.INCR, "bad key", 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.incr("ok", "x"), op(Cmd.INCR, "ok", 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.decr("bad key", 1), op(Cmd.DECR, "bad key", 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.touch("bad key"), op(Cmd.TOUCH, "bad key", 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.cas("ok", b"v", "not-a-number"), op(Cmd.CAS, "ok", 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.cas("bad key", b"v", 1), op(Cmd.CAS, "bad key", 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.flush_all(delay="soon"), op(Cmd.FLUSH, "", 0, 0, Status.CLIENT_ERROR)),
        (lambda: c.cache_memlimit("lots"), op(Cmd.OTHER, "", 0, 0, Status.CLIENT_ERROR)),
    ]
    for call, _ in calls:
        with pytest.raises(MemcacheIllegalInputError):
            call()
    assert c.get("ok") == b"1"
    flush(collector)
    got = operations(collector)
    expected = [
        op(Cmd.SET, "ok", 1, 1, Status.STORED),
        *(e for _, e in calls),
        op(Cmd.GET, "ok", 1, 1, Status.OK),
    ]
    assert [timeless(o) for _, o, _ in got] == expected
    # No round trip: rejected before anything was sent.
    assert all(o.uS == 0 for _, o, _ in got[1:-1])
    port = c.sock.getsockname()[1]
    assert all(sock == v4(port, server) for _, _, sock in got)
    assert counters(collector) == expected_counters(
        cmd_set=1 + 1 + 2,
        cmd_touch=1,
        cmd_flush=1,
        total_items=1,
        get_hits=1,
        total_connections=1,
        bytes_written=1,
        bytes_read=1,
    )


@pytest.mark.parametrize("sampling", [1, 0])
@pytest.mark.parametrize("key", [5, None, 2.5], ids=["int", "None", "float"])
def test_a_key_of_no_key_type_is_refused_alike_by_every_command(
    agent, collector, server, sampling: int, key: Any
) -> None:
    """pymemcache sends str and bytes keys; any other (an int, None) fails its key check
    with a TypeError before anything is sent. Every command records that as a refusal:
    CLIENT_ERROR, uS 0, the key as str(key), counted as a refused command is."""
    agent(sampling=sampling, polling=1)
    c = sfm.wrap(client(server))
    c.set("ok", b"1")
    shown = str(key)
    calls = [
        (lambda: c.get(key), op(Cmd.GET, shown, 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.gets(key), op(Cmd.GETS, shown, 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.get_many(["ok", key]), op(Cmd.GET, "ok", 2, 0, Status.CLIENT_ERROR)),
        (lambda: c.set(key, b"v"), op(Cmd.SET, shown, 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.add(key, b"v"), op(Cmd.ADD, shown, 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.set_many({key: b"v"}), op(Cmd.SET, shown, 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.cas(key, b"v", 1), op(Cmd.CAS, shown, 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.delete(key), op(Cmd.DELETE, shown, 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.delete_many([key]), op(Cmd.DELETE, shown, 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.incr(key, 1), op(Cmd.INCR, shown, 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.decr(key, 1), op(Cmd.DECR, shown, 1, 0, Status.CLIENT_ERROR)),
        (lambda: c.touch(key), op(Cmd.TOUCH, shown, 1, 0, Status.CLIENT_ERROR)),
    ]
    for call, _ in calls:
        with pytest.raises(TypeError):
            call()
    with pytest.raises(TypeError):
        c.delete()  # type: ignore[call-arg]  # a wrong call, not a refused key: no operation
    assert c.get("ok") == b"1"
    flush(collector)
    if sampling:
        got = check_ops(
            collector,
            [
                op(Cmd.SET, "ok", 1, 1, Status.STORED),
                *(e for _, e in calls),
                op(Cmd.GET, "ok", 1, 1, Status.OK),
            ],
            round_trip=False,
        )
        assert all(o.uS == 0 for _, o, _ in got[1:-1])  # nothing was sent
    assert counters(collector) == expected_counters(
        cmd_set=1 + 4,
        cmd_touch=1,
        total_items=1,
        get_hits=1,
        total_connections=1,
        bytes_written=1,
        bytes_read=1,
    )


def test_connection_refused_and_server_gone(instrumented, collector) -> None:
    port = free_port()
    c = keep(Client(("127.0.0.1", port), default_noreply=False))
    with pytest.raises(ConnectionRefusedError):
        c.get("k")
    with running() as mc:
        live = client(mc)
        live.set("k", b"v")
        local_port = live.sock.getsockname()[1]
        mc.stop()
        time.sleep(0.05)
        with pytest.raises((OSError, MemcacheServerError)):  # reset, or closed mid-reply
            live.get("k")
    flush(collector)
    got = check_ops(
        collector,
        [
            op(Cmd.GET, "k", 1, 0, Status.ERROR),
            op(Cmd.SET, "k", 1, 1, Status.STORED),
            op(Cmd.GET, "k", 1, 0, Status.ERROR),
        ],
    )
    # No connection was made: the configured address, our end unspecified.
    assert got[0][2] == ExtendedSocketIPv4(6, "0.0.0.0", "127.0.0.1", 0, port)
    assert got[1][2] == got[2][2] == v4(local_port, mc)
    assert counters(collector) == expected_counters(
        cmd_set=1, total_items=1, rejected_connections=1, total_connections=1, bytes_written=1
    )


def test_ignore_exc_error_is_not_a_miss(instrumented, collector) -> None:
    c = keep(Client(("127.0.0.1", free_port()), ignore_exc=True))
    assert c.get("k", default=b"d") == b"d"
    assert c.get_many(["a", "b"]) == {}
    flush(collector)
    check_ops(
        collector, [op(Cmd.GET, "k", 1, 0, Status.ERROR), op(Cmd.GET, "a", 2, 0, Status.ERROR)]
    )
    assert counters(collector) == expected_counters(rejected_connections=2)


# ------------------------------------------------------------------ sockets, keys, values


def test_unix_socket_server_has_no_socket_record(instrumented, collector) -> None:
    with running(unix=True) as mc:
        c = client(mc)
        c.set("u", b"unix")
        assert c.get("u") == b"unix"
    flush(collector)
    got = check_ops(
        collector, [op(Cmd.SET, "u", 1, 4, Status.STORED), op(Cmd.GET, "u", 1, 4, Status.OK)]
    )
    assert all(sock is None for _, _, sock in got)
    assert all(len(sample.records) == 1 for sample, _, _ in got)


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_server_socket_record(instrumented, collector) -> None:
    with running("::1") as mc:
        c = client(mc)
        c.set("six", b"6")
        local_port = c.sock.getsockname()[1]
    flush(collector)
    got = check_ops(collector, [op(Cmd.SET, "six", 1, 1, Status.STORED)])
    assert got[0][2] == ExtendedSocketIPv6(6, "::1", "::1", local_port, mc.port)


def test_keys_as_sent_with_prefix_and_binary(instrumented, collector, server) -> None:
    c = client(server, key_prefix=b"app:")
    c.set("user:42", b"x")
    u = client(server, allow_unicode_keys=True)
    u.set("caf\u00e9", b"y")
    c.get_many([b"bin\xff"])
    flush(collector)
    check_ops(
        collector,
        [
            op(Cmd.SET, "app:user:42", 1, 1, Status.STORED),
            op(Cmd.SET, "caf\u00e9", 1, 1, Status.STORED),
            op(Cmd.GET, b"app:bin\xff", 1, 0, Status.NOT_FOUND),  # not UTF-8: bytes
        ],
    )
    assert server.bare_get(b"app:user:42") == b"x"


@pytest.mark.parametrize("how", ["instrument", "wrap"])
def test_key_modes(agent, collector, server, how: str) -> None:
    agent(sampling=1, polling=1)
    secret = b"s3cret"
    plain, hashed, hidden = (client(server, key_prefix=b"p:") for _ in range(3))
    if how == "instrument":
        sfm.instrument(keys="hmac", secret=secret)
        hashed.set("user:42", b"1")
        sfm.uninstrument()
        sfm.instrument(keys="none")
        hidden.set("user:42", b"1")
        sfm.uninstrument()
        sfm.instrument()
        plain.set("user:42", b"1")
        sfm.uninstrument()
    else:
        sfm.wrap(plain)
        sfm.wrap(hashed, keys="hmac", secret=secret.decode())
        sfm.wrap(hidden, keys="none")
        hashed.set("user:42", b"1")
        hidden.set("user:42", b"1")
        plain.set("user:42", b"1")
    flush(collector)
    digest = hmac.new(secret, b"p:user:42", hashlib.sha256).hexdigest()[:32]
    check_ops(
        collector,
        [
            op(Cmd.SET, digest, 1, 1, Status.STORED),
            op(Cmd.SET, "", 1, 1, Status.STORED),
            op(Cmd.SET, "p:user:42", 1, 1, Status.STORED),
        ],
    )


def test_key_mode_validation() -> None:
    with pytest.raises(ValueError, match="secret"):
        sfm.instrument(keys="hmac")
    with pytest.raises(ValueError, match="keys"):
        sfm.wrap(keep(Client(("127.0.0.1", 1))), keys="sha1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sfm.wrap(object())


def test_value_bytes_are_serialized_sizes(instrumented, collector, server) -> None:
    c = client(server, serde=pickle_serde)
    value = {"user": 42, "tags": ["a", "b"]}
    c.set("obj", value)
    assert c.get("obj") == value
    c.set("int", 12345)  # pickle_serde sends ints as text
    plain = client(server)
    plain.set("s", "text")  # the default serde sends str(value) encoded
    flush(collector)
    size = len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    check_ops(
        collector,
        [
            op(Cmd.SET, "obj", 1, size, Status.STORED),
            op(Cmd.GET, "obj", 1, size, Status.OK),
            op(Cmd.SET, "int", 1, 5, Status.STORED),
            op(Cmd.SET, "s", 1, 4, Status.STORED),
        ],
    )
    assert c.serde.inner is pickle_serde  # the counting proxy wraps the client's serde


@pytest.mark.parametrize("twice", [("a", "a"), ("a", b"a")], ids=["same", "str-and-bytes"])
@pytest.mark.parametrize("generic", [False, True], ids=["client", "other-signatures"])
@pytest.mark.parametrize("serde", [None, pickle_serde], ids=["default-serde", "pickle"])
@pytest.mark.parametrize("sampling", [1, 0])
def test_a_key_asked_twice_is_two_hits(
    agent, collector, server, sampling: int, serde: Any, generic: bool, twice: tuple[Any, Any]
) -> None:
    """memcached answers each key a get asks for, twice when asked twice -- also as the str
    "a" and the bytes b"a", one key on the wire -- while pymemcache's result holds it once:
    two hits and its bytes twice, as the server counts them."""
    agent(sampling=sampling, polling=1)
    sfm.instrument()
    try:
        if generic:  # the generic (wrapt) replacements, by wrap()
            sfm.uninstrument()
            c = OtherSignatures(server.server, default_noreply=False, serde=serde, key_prefix=b"p:")
            c = sfm.wrap(keep(c))
        else:
            c = client(server, serde=serde, key_prefix=b"p:")
        c.set("a", b"xyz")
        size = len(c.serde.serialize("a", b"xyz")[0])
        before = c.stats()
        first, second = twice
        assert list(c.get_many([first, second, "nope"]).values()) == [b"xyz"]
        [(value, _)] = c.gets_many([second, first]).values()
        assert value == b"xyz"
        after = c.stats()
    finally:
        sfm.uninstrument()
    assert after[b"get_hits"] - before[b"get_hits"] == 4
    assert after[b"get_misses"] - before[b"get_misses"] == 1
    flush(collector)
    if sampling:
        check_ops(
            collector,
            [
                op(Cmd.SET, "p:a", 1, size, Status.STORED),
                op(Cmd.STATS, "", 0, 0, Status.OK),
                op(Cmd.GET, "p:a", 3, 2 * size, Status.OK),
                op(Cmd.GETS, "p:a", 2, 2 * size, Status.OK),
                op(Cmd.STATS, "", 0, 0, Status.OK),
            ],
        )
    assert counters(collector) == expected_counters(
        cmd_set=1,
        total_items=1,
        get_hits=4,
        get_misses=1,
        total_connections=1,
        bytes_written=size,
        bytes_read=4 * size,
    )


# ------------------------------------------------------------------ counters & sampling


WORKLOAD_COUNTERS = dict(  # expected_counters(**WORKLOAD_COUNTERS) when checking
    cmd_set=4,
    cmd_touch=2,
    cmd_flush=1,
    get_hits=4,
    get_misses=3,
    delete_hits=1,
    delete_misses=1,
    incr_hits=1,
    incr_misses=1,
    decr_hits=1,
    decr_misses=1,
    cas_hits=1,
    cas_misses=0,
    cas_badval=1,
    total_items=3,
    total_connections=1,
    bytes_written=4 + 4 + 2 + 2,
    bytes_read=4 + 2 + 4 + 2,
)


def workload(c: Client) -> None:
    c.set_many({"a": b"aaaa", "n": b"10"})  # cmd_set 2, 6 bytes written
    c.get_many(["a", "n", "x"])  # 2 hits, 1 miss, 6 bytes read
    c.get("y")  # miss
    _, token = c.gets("a")  # hit, 4 bytes read
    c.cas("a", b"bbbb", token)  # cas hit, 4 bytes written
    c.cas("a", b"cc", token)  # badval, 2 bytes written
    c.incr("n", 1)
    c.incr("m", 1)
    c.decr("n", 1)
    c.decr("m", 1)
    c.touch("a")
    c.touch("m")
    c.delete_many(["a", "m"])
    c.get("n")  # hit, "10" -> 2 bytes
    c.get("a")  # miss
    c.flush_all()


@pytest.mark.parametrize("sampling", [1, 0, 1000])
def test_counters_equal_the_operations(agent, collector, server, sampling: int) -> None:
    """Sampled (1), unsampled (0: no flow samples at all) and mixed: the same counters."""
    agent(sampling=sampling, polling=1)
    sfm.instrument()
    try:
        workload(client(server))
    finally:
        sfm.uninstrument()
    flush(collector)
    assert counters(collector) == expected_counters(**WORKLOAD_COUNTERS)
    samples = collector.flow_samples()
    if sampling == 1:
        assert len(samples) == 16
    elif sampling == 0:
        assert samples == []
    assert AGENT.memcache_source().sampler.sample_pool == 16


def test_counters_exact_under_threads(agent, collector, server) -> None:
    agent(sampling=0, polling=1)  # the unsampled path: lock-free increments
    sfm.instrument()
    try:
        pooled = keep(PooledClient(server.server, default_noreply=False))
        pooled.set("t", b"xyz")
        threads, per_thread = 8, 300

        def worker() -> None:
            for i in range(per_thread):
                pooled.get("t")
                pooled.get(f"miss{i}")

        runners = [threading.Thread(target=worker) for _ in range(threads)]
        for t in runners:
            t.start()
        for t in runners:
            t.join()
    finally:
        sfm.uninstrument()
    flush(collector)
    got = counters(collector)
    assert got["get_hits"] == got["get_misses"] == threads * per_thread
    assert got["bytes_read"] == 3 * threads * per_thread
    assert got["cmd_set"] == got["total_items"] == 1
    assert 1 <= got["total_connections"] <= threads + 1
    assert AGENT.memcache_source().sampler.sample_pool == 1 + 2 * threads * per_thread


def test_memcache_sampling_and_polling_keys(agent, collector, server) -> None:
    """sampling.memcache wins over sampling; polling.memcache over polling."""
    agent(sampling=1, polling=0, extra="sampling.memcache=5\npolling.memcache=1\n")
    sfm.instrument()
    try:
        c = client(server)
        for _ in range(200):
            c.get("k")
    finally:
        sfm.uninstrument()
    assert AGENT.memcache_source().sampler.rate == 5
    flush(collector)
    samples = collector.flow_samples()
    assert 10 <= len(samples) <= 90  # 1-in-5 of 200: 40 expected
    assert {s.sampling_rate for s in samples} == {5}
    assert counters(collector)["get_misses"] == 200
    pools = [s.sample_pool for s in sorted(samples, key=lambda s: s.sequence_number)]
    assert pools == sorted(pools) and pools[-1] <= 200


OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "add", "get", "get_many", "delete", "incr", "decr", "touch"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 3),
    ),
    max_size=25,
)


def same_value(got: bytes | None, want: bytes) -> bytes:
    """What the server holds, when it is ``want`` up to the trailing spaces memcached may
    or may not leave after shortening a number (``decr``)."""
    assert got is not None and got.rstrip(b" ") == want.rstrip(b" "), (got, want)
    return got


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_counters_follow_a_model(instrumented, server, ops) -> None:
    """Random command sequences: every counter equals a dict model of memcached."""
    c = client(server)
    source = AGENT.memcache_source()
    before = dict(zip(MEMCACHE_COUNTERS, source.counters.snapshot(), strict=True))
    c.flush_all()
    model: dict[str, bytes] = {}
    want = dict.fromkeys(MEMCACHE_COUNTERS, 0)
    want["cmd_flush"] = 1
    for name, key, n in ops:
        value = b"9" * (n + 1)
        if name in ("set", "add"):
            want["cmd_set"] += 1
            if name == "set" or key not in model:
                model[key] = value
                want["total_items"] += 1
                getattr(c, name)(key, value)
                want["bytes_written"] += len(value)
            else:
                assert getattr(c, name)(key, value) is False
                want["bytes_written"] += len(value)
        elif name == "get":
            got = c.get(key)
            if key in model:
                model[key] = same_value(got, model[key])
                want["get_hits"] += 1
                want["bytes_read"] += len(model[key])
            else:
                assert got is None
                want["get_misses"] += 1
        elif name == "get_many":
            keys = ["a", "b", "c"][: n + 1]
            found = c.get_many(keys)
            assert sorted(found) == [k for k in keys if k in model]
            for k in keys:
                if k in model:
                    model[k] = same_value(found[k], model[k])
                want["get_hits" if k in model else "get_misses"] += 1
                want["bytes_read"] += len(model.get(k, b""))
        elif name == "delete":
            assert c.delete(key) is (key in model)
            want["delete_hits" if model.pop(key, None) is not None else "delete_misses"] += 1
        elif name in ("incr", "decr"):
            result = getattr(c, name)(key, n)
            if key in model:
                old = model[key]
                number = int(old) + n if name == "incr" else max(0, int(old) - n)
                # A shorter number: padded with spaces when memcached rewrites the item in
                # place, not when it makes a new one (another reference holds the old):
                # the next get says which (same_value).
                model[key] = str(number).encode().ljust(len(old))
                assert result == number
            else:
                assert result is None
            want[f"{name}_{'hits' if key in model else 'misses'}"] += 1
        else:
            assert c.touch(key) is (key in model)
            want["cmd_touch"] += 1
    c.close()
    after = dict(zip(MEMCACHE_COUNTERS, source.counters.snapshot(), strict=True))
    delta = {k: after[k] - before[k] for k in MEMCACHE_COUNTERS}
    delta["total_connections"] = 0  # one per example; checked elsewhere
    assert delta == want


# --------------------------------------------------------------------- instrumentation


PER_OPERATION = (
    "_fetch_cmd",
    "_store_cmd",
    "_misc_cmd",
    "delete",
    "delete_many",
    "delete_multi",
    "incr",
    "decr",
    "touch",
    "cas",
)
NOT_PER_OPERATION = ("_connect", "flush_all", "cache_memlimit")


def test_instrument_is_idempotent_and_uninstrument_restores(
    agent, collector, server, caplog
) -> None:
    agent(sampling=1, polling=1)
    originals = {name: Client.__dict__[name] for name in PER_OPERATION + NOT_PER_OPERATION}
    assert Client.__dict__["delete_multi"] is Client.__dict__["delete_many"]
    sfm.instrument()
    try:
        with caplog.at_level(logging.WARNING, logger="sflow_app"):
            sfm.instrument()
        assert "already instrumented" in caplog.text
        for name, original in originals.items():
            replacement = Client.__dict__[name]
            assert replacement is not original, name
            assert replacement.__name__ == original.__name__, name
            assert inspect.signature(replacement) == inspect.signature(original), name
            if name.startswith("_"):
                assert replacement.__wrapped__ is original, name
            else:  # OpenTelemetry would take a public one with __wrapped__ for its own
                assert not hasattr(replacement, "__wrapped__"), name
                assert replacement._sflow_original is original, name
            # What runs on every operation (and the public commands) is a plain function
            # (a wrapt FunctionWrapper costs ~1 us a call); _connect is a wrapt wrapper.
            if name == "_connect":
                assert type(replacement) is wrapt.FunctionWrapper, name
            else:
                assert type(replacement) is types.FunctionType, name
        c = client(server)
        default_serde = c.serde
        c.set("k", b"v")
        c.delete_multi(["k"])
        assert c.serde is default_serde  # sizes read off the values: no proxy needed
        p = client(server, serde=pickle_serde)
        p.get("k")
        assert p.serde is not pickle_serde and p.serde.inner is pickle_serde
    finally:
        sfm.uninstrument()
    for name, original in originals.items():
        assert Client.__dict__[name] is original, name
    assert c.serde is default_serde and "_sflow_serde" not in c.__dict__
    assert p.serde is pickle_serde and "_sflow_serde" not in p.__dict__
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sflow_app"):
        sfm.uninstrument()
    assert "not instrumented" in caplog.text
    c.get("k")  # not recorded any more
    flush(collector)
    check_ops(
        collector,
        [
            op(Cmd.SET, "k", 1, 1, Status.STORED),
            op(Cmd.DELETE, "k", 1, 0, Status.DELETED),
            op(Cmd.GET, "k", 1, 0, Status.NOT_FOUND),
        ],
    )


def test_wrap_one_client(agent, collector, server, caplog) -> None:
    agent(sampling=1, polling=1)
    wrapped, other = client(server), client(server)
    assert sfm.wrap(wrapped) is wrapped
    assert isinstance(wrapped, Client) and type(wrapped).__name__ == "Client"
    with caplog.at_level(logging.WARNING, logger="sflow_app"):
        sfm.wrap(wrapped)
    assert "already instrumented" in caplog.text
    wrapped.set("w", b"1")
    other.set("o", b"2")
    wrapped.delete_multi(["w", "o"])
    sfm.instrument()  # class-wide on top of wrap(): still one record per round trip
    try:
        wrapped.get("o")
        other.get("w")
    finally:
        sfm.uninstrument()
    flush(collector)
    check_ops(
        collector,
        [
            op(Cmd.SET, "w", 1, 1, Status.STORED),
            op(Cmd.DELETE, "w", 2, 0, Status.DELETED),
            op(Cmd.GET, "o", 1, 0, Status.NOT_FOUND),
            op(Cmd.GET, "w", 1, 0, Status.NOT_FOUND),
        ],
    )


def test_wrap_pooled_client(agent, collector, server) -> None:
    agent(sampling=1, polling=1)
    pooled = keep(PooledClient(server.server, default_noreply=False))
    pooled.set("before", b"1")  # a pooled Client exists (and is connected) before wrap()
    sfm.wrap(pooled)
    pooled.get("before")
    with (
        pooled.client_pool.get_and_release() as one,
        pooled.client_pool.get_and_release() as two,
    ):  # a new Client, made after wrap()
        assert type(one) is type(two) is not Client
        assert one.get("before") == two.get("before") == b"1"
    pooled.get_multi(["before", "x"])
    flush(collector)
    check_ops(
        collector,
        [op(Cmd.GET, "before", 1, 1, Status.OK)] * 3 + [op(Cmd.GET, "before", 2, 1, Status.OK)],
    )
    assert counters(collector)["total_connections"] == 1  # the one opened after wrap()


class OtherSignatures(Client):
    """Round trips with signatures other than pymemcache 4's (another version, a subclass):
    instrumented by the generic replacements, wrapt FunctionWrappers."""

    def _fetch_cmd(
        self, name: Any, keys: Any, expect_cas: Any, key_prefix: Any = b"", *, extra: Any = None
    ) -> Any:
        return super()._fetch_cmd(name, keys, expect_cas, key_prefix)

    def _store_cmd(
        self,
        name: Any,
        values: Any,
        expire: Any,
        noreply: Any,
        flags: Any = None,
        cas: Any = None,
        *,
        extra: Any = None,
    ) -> Any:
        return super()._store_cmd(name, values, expire, noreply, flags=flags, cas=cas)

    def _misc_cmd(
        self, cmds: Any, cmd_name: Any, noreply: Any, end_tokens: Any = None, *, extra: Any = None
    ) -> Any:
        return super()._misc_cmd(cmds, cmd_name, noreply, end_tokens)


class Overrides(Client):
    """A subclass that overrides the methods sflow_app instruments, with pymemcache 4's
    signatures, and calls pymemcache's."""

    def _connect(self) -> None:
        super()._connect()

    def _fetch_cmd(self, name: Any, keys: Any, expect_cas: Any, key_prefix: Any = b"") -> Any:
        return super()._fetch_cmd(name, keys, expect_cas, key_prefix)

    def _store_cmd(
        self, name: Any, values: Any, expire: Any, noreply: Any, flags: Any = None, cas: Any = None
    ) -> Any:
        return super()._store_cmd(name, values, expire, noreply, flags, cas)

    def _misc_cmd(self, cmds: Any, cmd_name: Any, noreply: Any, end_tokens: Any = None) -> Any:
        return super()._misc_cmd(cmds, cmd_name, noreply, end_tokens)


@pytest.mark.parametrize("cls", [Overrides, "OtherSignatures"])
@pytest.mark.parametrize("sampling", [1, 0])
def test_wrapped_overrides_count_once_under_instrument(
    agent, collector, server, sampling: int, cls: Any
) -> None:
    """A subclass's overrides call pymemcache's methods: given to wrap() and covered by
    instrument() too, each operation (and connection) is still counted and sampled once,
    and an instance of that subclass that is not wrapped too."""
    agent(sampling=sampling, polling=1)
    cls = OtherSignatures if cls == "OtherSignatures" else cls
    wrapped = sfm.wrap(keep(cls(server.server, default_noreply=False)))
    sfm.instrument()
    try:
        workload(wrapped)
        workload(keep(cls(server.server, default_noreply=False)))
    finally:
        sfm.uninstrument()
    flush(collector)
    assert counters(collector) == expected_counters(
        **{k: 2 * v for k, v in WORKLOAD_COUNTERS.items()}
    )
    assert len(operations(collector)) == (2 * 16 if sampling else 0)


@pytest.mark.parametrize("serde", [None, pickle_serde], ids=["default-serde", "pickle"])
@pytest.mark.parametrize("sampling", [1, 0])
def test_other_signatures_are_instrumented_by_wrapt(
    agent, collector, server, sampling: int, serde: Any
) -> None:
    """The generic replacements count and record what the fixed-signature ones do."""
    agent(sampling=sampling, polling=1)

    def make() -> Client:
        return sfm.wrap(OtherSignatures(server.server, default_noreply=False, serde=serde))

    commands, raw = make(), make()
    for name in ("_fetch_cmd", "_store_cmd", "_misc_cmd"):
        replacement, original = type(commands).__dict__[name], OtherSignatures.__dict__[name]
        assert type(replacement) is wrapt.FunctionWrapper, name
        assert replacement.__wrapped__ is original, name
        assert inspect.signature(replacement) == inspect.signature(original), name
    workload(commands)
    commands.close()
    expected = raw_workload(raw)
    raw.close()
    flush(collector)
    want = {
        name: WORKLOAD_COUNTERS.get(name, 0) + RAW_COUNTERS.get(name, 0)
        for name in {*WORKLOAD_COUNTERS, *RAW_COUNTERS}
    }
    assert counters(collector) == expected_counters(**want)
    got = operations(collector)
    if sampling:
        assert len(got) == 16 + len(expected)
        assert [timeless(o) for _, o, _ in got[16:]] == expected
    else:
        assert got == []


def test_sampled_path_never_raises_into_the_app(
    instrumented, collector, server, monkeypatch
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("exporter bug")

    monkeypatch.setattr(AGENT.memcache_source(), "submit", broken)
    c = client(server)
    c.set("k", b"v")
    assert c.get("k") == b"v"
    assert AGENT.memcache_source().drops == 2


def test_importing_sflow_app_does_not_import_pymemcache() -> None:
    code = (
        "import sys, sflow_app, sflow_app.records, sflow_app.decode; "
        "assert 'pymemcache' not in sys.modules, 'pymemcache imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_open_connections_are_reported_as_a_gauge(instrumented, collector, server) -> None:
    """curr_connections: the connections held now, going down as well as up."""
    before = STATE.open_connections()
    # Not kept for closing: the last one is dropped unclosed on purpose.
    clients = [Client(server.server, default_noreply=False) for _ in range(3)]
    for one in clients:
        one.version()
    del one
    assert STATE.open_connections() == before + 3
    flush(collector)
    assert counters(collector)["curr_connections"] == before + 3
    clients[0].close()
    clients[1].quit()
    assert STATE.open_connections() == before + 1
    flush(collector)
    assert counters(collector)["curr_connections"] == before + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the dropped client's socket
        del clients
        gc.collect()
    assert STATE.open_connections() == before


def test_byte_counts_stay_short_without_snapshots(agent, server, monkeypatch) -> None:
    """sFlow off (no exporter snapshots): the slow path folds the pending byte counts."""
    monkeypatch.setenv("SFLOW_APP_CONFIG", "/nonexistent/hsflowd.auto")
    AGENT.reset(autostart=False)
    AGENT.reload()
    assert not AGENT.settings.enabled
    sfm.instrument()
    try:
        c = client(server)
        c.set("k", b"12345")
        for _ in range(10_000):
            c.get("k")
        counters_block = AGENT.memcache_source().counters
        assert len(counters_block._pending) <= 4096
        values = dict(zip(MEMCACHE_COUNTERS, counters_block.snapshot(), strict=True))
    finally:
        sfm.uninstrument()
    assert values["bytes_read"] == 5 * 10_000
    assert values["get_hits"] == 10_000


@pytest.mark.parametrize("sampling", [1, 0], ids=["sampled", "unsampled"])
def test_a_replaced_agent_is_followed_by_every_part(
    agent, auto_file, server, monkeypatch, sampling: int
) -> None:
    """The agent replaced under instrument(): the slow path rebinds, and the unsampled path,
    the outcome counters, the byte counts and the sampled path all use the new source (they
    all read the one STATE, which the slow path rebinds: sflow_app.memcache._state)."""
    agent(sampling=1, polling=0)  # every operation takes the slow path, which rebinds
    sfm.instrument()
    try:
        c = client(server)
        c.set("k", b"12345")
        old = AGENT.memcache_source()
        AGENT.reset(autostart=False)
        auto_file(sampling=sampling, polling=0)
        AGENT.reload()
        new = AGENT.memcache_source()
        assert new is not old
        before = old.counters.snapshot()
        sent: dict[Any, list[Any]] = {old: [], new: []}
        for source in (old, new):
            monkeypatch.setattr(
                source,
                "submit",
                lambda n, records, rate, source=source: sent[source].append(records),
            )
        c.version()  # sees the new source: rebinds, and is counted and sampled there
        c.get("k")
        c.delete("gone")  # counted by the outcomes
        c.get_many(["k", "x", "y"])  # more than one: put()
        values = dict(zip(MEMCACHE_COUNTERS, new.counters.snapshot(), strict=True))
        assert old.counters.snapshot() == before
    finally:
        sfm.uninstrument()
    assert (values["get_hits"], values["get_misses"], values["delete_misses"]) == (2, 2, 1)
    assert values["bytes_read"] == 10
    assert sent[old] == []
    assert [(r[0].cmd, r[0].nkeys) for r in sent[new]] == (
        [(Cmd.VERSION, 0), (Cmd.GET, 1), (Cmd.DELETE, 1), (Cmd.GET, 3)] if sampling else []
    )

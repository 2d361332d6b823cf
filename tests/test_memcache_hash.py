"""HashClient, PooledClient and RetryingClient over real memcached servers.

Each server round trip is one operation attributed to the server it went to: the socket
record names that server, and which server really holds a key is checked independently
with a raw socket.
"""

from __future__ import annotations

import dataclasses
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import close_clients, keep
from memcached import Memcached, free_port, running
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient
from pymemcache.client.retrying import RetryingClient
from pymemcache.exceptions import MemcacheIllegalInputError

import sflow_app.memcache as sfm
from sflow_app._agent import AGENT
from sflow_app.records import (
    ExtendedSocketIPv4,
    MemcacheCmd,
    MemcacheCounters,
    MemcacheOperation,
    MemcacheStatus,
)

Cmd, Status = MemcacheCmd, MemcacheStatus
KEYS = [f"key{i}" for i in range(24)]


@pytest.fixture(autouse=True)
def closed_clients() -> Iterator[None]:
    yield
    close_clients()


@pytest.fixture
def pair() -> Iterator[tuple[Memcached, Memcached]]:
    with running() as one, running() as two:
        yield one, two


def flush(collector) -> None:
    if AGENT.runner.started:
        AGENT.shutdown()
    else:
        AGENT.tick(time.monotonic(), final=True)
    collector.poll(0.05)


def operations(collector) -> list[tuple[MemcacheOperation, Any]]:
    out = []
    for sample in sorted(collector.flow_samples(), key=lambda s: s.sequence_number):
        ops = [r for r in sample.records if isinstance(r, MemcacheOperation)]
        socks = [r for r in sample.records if isinstance(r, ExtendedSocketIPv4)]
        assert len(ops) == 1 and len(socks) <= 1
        out.append((dataclasses.replace(ops[0], uS=0), socks[0] if socks else None))
    return out


def op(cmd: int, key: str, nkeys: int, value_bytes: int, status: int) -> MemcacheOperation:
    return MemcacheOperation(
        protocol=1, cmd=cmd, key=key, nkeys=nkeys, value_bytes=value_bytes, uS=0, status=status
    )


def holder(servers: tuple[Memcached, ...], key: str) -> Memcached:
    """The server that really holds ``key`` (read with a raw socket)."""
    found = [s for s in servers if s.bare_get(key.encode()) is not None]
    assert len(found) == 1, (key, found)
    return found[0]


def remote(sock: ExtendedSocketIPv4 | None) -> int:
    assert sock is not None and sock.remote_ip == "127.0.0.1"
    return sock.remote_port


@pytest.mark.parametrize("use_pooling", [False, True])
def test_hash_client_attributes_each_operation_to_its_server(
    agent, collector, pair, use_pooling: bool
) -> None:
    agent(sampling=1, polling=1)
    sfm.instrument()
    try:
        hc = keep(
            HashClient([s.server for s in pair], use_pooling=use_pooling, default_noreply=False)
        )
        for key in KEYS:
            hc.set(key, key.encode())
        where = {key: holder(pair, key) for key in KEYS}
        assert {s.port for s in where.values()} == {pair[0].port, pair[1].port}
        for key in KEYS[:6]:
            assert hc.get(key) == key.encode()
        assert hc.get_many(KEYS) == {k: k.encode() for k in KEYS}
        hc.delete_many(KEYS[:4])
    finally:
        sfm.uninstrument()
    flush(collector)
    got = operations(collector)
    sets, gets, many, deletes = got[:24], got[24:30], got[30:32], got[32:]
    for key, (record, sock) in zip(KEYS, sets, strict=True):
        assert record == op(Cmd.SET, key, 1, len(key), Status.STORED)
        assert remote(sock) == where[key].port
    for key, (record, sock) in zip(KEYS[:6], gets, strict=True):
        assert record == op(Cmd.GET, key, 1, len(key), Status.OK)
        assert remote(sock) == where[key].port
    # get_many over two servers: two round trips, each with that server's keys.
    assert len(many) == 2
    assert {remote(sock) for _, sock in many} == {pair[0].port, pair[1].port}
    for record, sock in many:
        mine = [k for k in KEYS if where[k].port == remote(sock)]
        assert record == op(Cmd.GET, mine[0], len(mine), sum(map(len, mine)), Status.OK)
    # HashClient.delete_many deletes key by key.
    assert [(r, remote(s)) for r, s in deletes] == [
        (op(Cmd.DELETE, k, 1, 0, Status.DELETED), where[k].port) for k in KEYS[:4]
    ]
    found = collector.latest_counters(MemcacheCounters)
    assert (found.cmd_set, found.total_items, found.get_hits, found.delete_hits) == (24, 24, 30, 4)
    assert found.total_connections == 2  # one connection per server
    assert found.bytes_written == found.bytes_read - sum(map(len, KEYS[:6])) == sum(map(len, KEYS))


def test_retrying_client_counts_every_attempt(agent, collector) -> None:
    agent(sampling=1, polling=1)
    sfm.instrument()
    port = free_port()
    try:
        retrying = keep(RetryingClient(Client(("127.0.0.1", port)), attempts=3, retry_delay=0))
        with pytest.raises(ConnectionRefusedError):
            retrying.get("k")
        with running() as mc:
            live = keep(RetryingClient(Client(mc.server, default_noreply=False), attempts=3))
            live.set("k", b"v")
            assert live.get("k") == b"v"
    finally:
        sfm.uninstrument()
    flush(collector)
    refused = ExtendedSocketIPv4(6, "0.0.0.0", "127.0.0.1", 0, port)
    got = operations(collector)
    assert got[:3] == [(op(Cmd.GET, "k", 1, 0, Status.ERROR), refused)] * 3
    assert [r for r, _ in got[3:]] == [
        op(Cmd.SET, "k", 1, 1, Status.STORED),
        op(Cmd.GET, "k", 1, 1, Status.OK),
    ]
    assert all(remote(s) == mc.port for _, s in got[3:])
    found = collector.latest_counters(MemcacheCounters)
    assert (found.rejected_connections, found.total_connections) == (3, 1)


def test_hash_client_dead_server_retries(agent, collector, pair) -> None:
    """HashClient's own retry: each try of the dead server is one ERROR operation."""
    agent(sampling=1, polling=1)
    sfm.instrument()
    try:
        alive, dead = pair
        hc = keep(
            HashClient(
                [alive.server, dead.server],
                retry_attempts=2,
                retry_timeout=0,
                dead_timeout=60,
                default_noreply=False,
            )
        )
        on_dead = next(k for k in KEYS if hc._get_client(k).server == dead.server)
        dead.stop()
        for _ in range(2):
            with pytest.raises(OSError):
                hc.get(on_dead)
    finally:
        sfm.uninstrument()
    flush(collector)
    got = operations(collector)
    assert [r for r, _ in got] == [op(Cmd.GET, on_dead, 1, 0, Status.ERROR)] * 2
    assert all(remote(s) == dead.port for _, s in got)


def test_wrap_hash_client_covers_servers_added_later(agent, collector, pair) -> None:
    agent(sampling=1, polling=1)
    one, two = pair
    hc = keep(HashClient([one.server], default_noreply=False))
    hc.set("early", b"1")  # a Client exists before wrap()
    other = keep(HashClient([one.server], default_noreply=False))
    sfm.wrap(keep(RetryingClient(hc)))  # wrap() reaches through RetryingClient
    hc.get("early")
    hc.add_server(*two.server)
    for key in KEYS:
        hc.set(key, b"x")
    other.get("early")  # a client that was not wrapped: not recorded
    flush(collector)
    got = operations(collector)
    assert got[0] == (op(Cmd.GET, "early", 1, 1, Status.OK), got[0][1])
    assert remote(got[0][1]) == one.port
    assert len(got) == 1 + len(KEYS)
    ports = {remote(s) for _, s in got[1:]}
    assert ports == {one.port, two.port}  # the added server's Client is wrapped too


# ------------------------------------------------------------ keys refused before sending

BAD = "bad key"
LONG = "k" * 251


def refused_calls(c: Any) -> list[tuple[Callable[[], Any], MemcacheOperation, bool]]:
    """(call, its record, refused by the HashClient itself -- no server chosen)."""
    error = Status.CLIENT_ERROR
    return [
        (lambda: c.get(BAD), op(Cmd.GET, BAD, 1, 0, error), True),
        (lambda: c.gets(LONG), op(Cmd.GETS, LONG, 1, 0, error), True),
        (lambda: c.set("bad\nkey", b"v"), op(Cmd.SET, "bad\nkey", 1, 0, error), True),
        (lambda: c.add("bad\x00key", b"v"), op(Cmd.ADD, "bad\x00key", 1, 0, error), True),
        (lambda: c.replace("caf\u00e9", b"v"), op(Cmd.REPLACE, "caf\u00e9", 1, 0, error), True),
        (lambda: c.append(BAD, b"v"), op(Cmd.APPEND, BAD, 1, 0, error), True),
        (lambda: c.prepend(BAD, b"v"), op(Cmd.PREPEND, BAD, 1, 0, error), True),
        (lambda: c.cas(BAD, b"v", 1), op(Cmd.CAS, BAD, 1, 0, error), True),
        (lambda: c.incr(BAD, 1), op(Cmd.INCR, BAD, 1, 0, error), True),
        (lambda: c.decr(BAD, 1), op(Cmd.DECR, BAD, 1, 0, error), True),
        (lambda: c.delete(BAD), op(Cmd.DELETE, BAD, 1, 0, error), True),
        (lambda: c.delete_multi([BAD]), op(Cmd.DELETE, BAD, 1, 0, error), True),
        (lambda: c.touch(BAD), op(Cmd.TOUCH, BAD, 1, 0, error), True),
        (lambda: c.get_many(["ok", BAD]), op(Cmd.GET, "ok", 2, 0, error), True),
        (lambda: c.get_multi([BAD]), op(Cmd.GET, BAD, 1, 0, error), True),
        (lambda: c.gets_many(["ok", BAD]), op(Cmd.GETS, "ok", 2, 0, error), True),
        (lambda: c.set_many({"fine": b"1", BAD: b"2"}), op(Cmd.SET, "fine", 2, 0, error), True),
        (lambda: c.set_multi({BAD: b"2"}), op(Cmd.SET, BAD, 1, 0, error), True),
        # The key is fine: refused by the Client the HashClient chose, recorded once.
        (lambda: c.incr("ok", "x"), op(Cmd.INCR, "ok", 1, 0, error), False),
        (lambda: c.cas("ok", b"v", "nan"), op(Cmd.CAS, "ok", 1, 0, error), False),
    ]


REFUSED_COUNTERS = {
    # set ok; set, add, replace, append, prepend, cas; set_many 2 + set_multi 1; cas ok
    "cmd_set": 1 + 6 + 2 + 1 + 1,
    "cmd_touch": 1,
    "total_items": 1,
    "get_hits": 1,
    "total_connections": 1,
    "bytes_written": 1,
    "bytes_read": 1,
}


def make_client(target: str, pair: tuple[Memcached, Memcached]) -> Any:
    if target == "client":
        return keep(Client(pair[0].server, default_noreply=False))
    return keep(
        HashClient(
            [s.server for s in pair], use_pooling=target == "hash-pooled", default_noreply=False
        )
    )


def counter_values(collector) -> dict[str, int]:
    found = collector.latest_counters(MemcacheCounters)
    assert found is not None
    values = dataclasses.asdict(found)
    del values["curr_connections"]  # a gauge
    return {name: value for name, value in values.items() if value}


@pytest.mark.parametrize(
    ("target", "how", "sampling"),
    [
        ("client", "instrument", 1),
        ("hash", "instrument", 1),
        ("hash-pooled", "instrument", 1),
        ("client", "wrap", 1),
        ("hash", "wrap", 1),
        ("hash-pooled", "wrap", 1),
        ("hash", "instrument", 0),
    ],
)
def test_refused_keys_are_recorded_once_for_every_client(
    agent, collector, pair, target: str, how: str, sampling: int
) -> None:
    """A key HashClient refuses before choosing a server is recorded and counted as a
    plain Client's refusal is (once, CLIENT_ERROR), with no socket record."""
    agent(sampling=sampling, polling=1)
    c = make_client(target, pair)
    if how == "instrument":
        sfm.instrument()
    else:
        sfm.wrap(c)
    try:
        c.set("ok", b"1")
        calls = refused_calls(c)
        for call, _, _ in calls:
            with pytest.raises(MemcacheIllegalInputError):
                call()
        assert c.get("ok") == b"1"
    finally:
        if how == "instrument":
            sfm.uninstrument()
    flush(collector)
    got = operations(collector)
    assert AGENT.memcache_source().sampler.sample_pool == len(calls) + 2
    # A PooledClient drops its Client (and connection) after the Client's own refusals.
    connections = 2 if target == "hash-pooled" else 1
    assert counter_values(collector) == {**REFUSED_COUNTERS, "total_connections": connections}
    if not sampling:
        assert got == []
        return
    assert [r for r, _ in got] == [
        op(Cmd.SET, "ok", 1, 1, Status.STORED),
        *(record for _, record, _ in calls),
        op(Cmd.GET, "ok", 1, 1, Status.OK),
    ]
    ok_port = holder(pair, "ok").port
    assert ok_port == pair[0].port or target != "client"
    for (_, _, by_hash), (_, sock) in zip(calls, got[1:-1], strict=True):
        if target != "client" and by_hash:
            assert sock is None  # no server was chosen
        else:
            assert remote(sock) == ok_port


@pytest.mark.parametrize("target", ["client", "hash", "hash-pooled"])
def test_retrying_client_records_each_refused_attempt(agent, collector, pair, target: str) -> None:
    """RetryingClient retries a refused key like any error: each attempt is one refused
    operation, for a HashClient as for a Client."""
    agent(sampling=1, polling=1)
    retrying = keep(RetryingClient(make_client(target, pair), attempts=2, retry_delay=0))
    sfm.wrap(retrying)
    retrying.set("ok", b"1")
    for call in (
        lambda: retrying.get(BAD),
        lambda: retrying.set(BAD, b"v"),
        lambda: retrying.get_many(["ok", BAD]),
        lambda: retrying.incr("ok", "x"),
    ):
        with pytest.raises(MemcacheIllegalInputError):
            call()
    flush(collector)
    error = Status.CLIENT_ERROR
    assert [r for r, _ in operations(collector)] == [
        op(Cmd.SET, "ok", 1, 1, Status.STORED),
        *[op(Cmd.GET, BAD, 1, 0, error)] * 2,
        *[op(Cmd.SET, BAD, 1, 0, error)] * 2,
        *[op(Cmd.GET, "ok", 2, 0, error)] * 2,
        *[op(Cmd.INCR, "ok", 1, 0, error)] * 2,
    ]
    assert counter_values(collector) == {
        "cmd_set": 3,
        "total_items": 1,
        "total_connections": 1,
        "bytes_written": 1,
    }


def test_hash_client_delete_many_is_key_by_key(agent, collector, pair) -> None:
    """HashClient.delete_many deletes key by key: the keys before a refused one are
    deleted (one round trip each), the refused one is one operation, the rest not sent."""
    agent(sampling=1, polling=1)
    sfm.instrument()
    try:
        hc = make_client("hash", pair)
        hc.set_many({"a": b"1", "c": b"3"})
        with pytest.raises(MemcacheIllegalInputError):
            hc.delete_many(["a", BAD, "c"])
    finally:
        sfm.uninstrument()
    flush(collector)
    got = [r for r, _ in operations(collector)]
    assert got[-2:] == [
        op(Cmd.DELETE, "a", 1, 0, Status.DELETED),
        op(Cmd.DELETE, BAD, 1, 0, Status.CLIENT_ERROR),
    ]
    assert holder(pair, "c").bare_get(b"c") == b"3"
    found = counter_values(collector)
    assert (found["delete_hits"], found.get("delete_misses", 0)) == (1, 0)


def test_uninstrument_restores_hash_client(agent) -> None:
    agent(sampling=1, polling=1)
    names = (
        "_run_cmd",
        "get_many",
        "get_multi",
        "gets_many",
        "gets_multi",
        "set_many",
        "set_multi",
    )
    originals = {name: HashClient.__dict__[name] for name in names}
    sfm.instrument()
    try:
        for name in names:
            assert HashClient.__dict__[name] is not originals[name], name
            replacement = HashClient.__dict__[name]
            if name.startswith("_"):
                assert replacement.__wrapped__ is originals[name], name
            else:
                assert replacement._sflow_original is originals[name], name
            # per operation: plain functions, not wrapt wrappers (see sflow_app.memcache)
            assert type(HashClient.__dict__[name]) is types.FunctionType, name
    finally:
        sfm.uninstrument()
    assert {name: HashClient.__dict__[name] for name in names} == originals


def test_no_server_left_is_one_error_operation(agent, collector, pair) -> None:
    """Every server removed (marked dead): HashClient raises before any round trip. Each
    such operation is one ERROR record with no socket record; a set still counts."""
    from pymemcache.exceptions import MemcacheError

    agent(sampling=1, polling=1)
    sfm.instrument()
    try:
        hc = keep(HashClient([s.server for s in pair], default_noreply=False))
        for key in list(hc.clients):
            hc.hasher.remove_node(key)  # what marking a server dead does to the ring
        with pytest.raises(MemcacheError, match="down"):
            hc.get("k")
        with pytest.raises(MemcacheError, match="down"):
            hc.set("k", b"v")
    finally:
        sfm.uninstrument()
    flush(collector)
    got = operations(collector)
    assert [r for r, _ in got] == [
        op(Cmd.GET, "k", 1, 0, Status.ERROR),
        op(Cmd.SET, "k", 1, 0, Status.ERROR),
    ]
    assert all(sock is None for _, sock in got)
    assert counter_values(collector) == {"cmd_set": 1}


def test_wrap_hash_client_calls_the_class_methods_as_they_are_now(
    agent, pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library that patches HashClient's and Client's commands after wrap() (as
    OpenTelemetry patches Client's) sees a wrapped HashClient's calls; its patch removed,
    it sees them no more."""
    agent(sampling=0)
    hashed = sfm.wrap(keep(HashClient([s.server for s in pair], default_noreply=False)))
    hashed.set("k", b"1")  # its Clients exist now: wrap()'s subclass
    seen: list[str] = []

    def patched(cls: type, name: str) -> None:
        inner = getattr(cls, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(f"{cls.__name__}.{name}")
            return inner(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, method)

    patched(HashClient, "get_many")
    patched(Client, "delete")
    assert hashed.get_many(["k"]) == {"k": b"1"}
    assert hashed.delete("k") is True
    assert seen == ["HashClient.get_many", "Client.delete"]
    monkeypatch.undo()
    hashed.get_many(["k"])
    hashed.delete("k")
    assert len(seen) == 2


@pytest.mark.parametrize("how", ["instrument", "wrap"])
@pytest.mark.parametrize("target", ["client", "hash", "hash-pooled"])
def test_a_key_of_no_key_type_is_a_refusal_for_every_client(
    agent, collector, pair, target: str, how: str
) -> None:
    """An int key fails pymemcache's key check with a TypeError before anything is sent,
    in a HashClient as in a Client: one CLIENT_ERROR operation each, counted as a refusal."""
    agent(sampling=1, polling=1)
    c = make_client(target, pair)
    if how == "instrument":
        sfm.instrument()
    else:
        sfm.wrap(c)
    error = Status.CLIENT_ERROR
    calls = [
        (lambda: c.get(5), op(Cmd.GET, "5", 1, 0, error)),
        (lambda: c.set(5, b"v"), op(Cmd.SET, "5", 1, 0, error)),
        (lambda: c.delete(5), op(Cmd.DELETE, "5", 1, 0, error)),
        (lambda: c.incr(5, 1), op(Cmd.INCR, "5", 1, 0, error)),
        (lambda: c.touch(5), op(Cmd.TOUCH, "5", 1, 0, error)),
        (lambda: c.get_many([5]), op(Cmd.GET, "5", 1, 0, error)),
        (lambda: c.set_many({5: b"v"}), op(Cmd.SET, "5", 1, 0, error)),
    ]
    try:
        for call, _ in calls:
            with pytest.raises(TypeError):
                call()
    finally:
        if how == "instrument":
            sfm.uninstrument()
    flush(collector)
    assert [r for r, _ in operations(collector)] == [record for _, record in calls]
    assert counter_values(collector) == {"cmd_set": 2, "cmd_touch": 1}  # nothing connected

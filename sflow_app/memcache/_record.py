"""The sampled path of memcache operations: a sampled round trip timed and counted
(``sampled``), described, and queued as one flow sample (``emit``: ``memcache_operation``
and the connection's ``extended_socket_ipv4/6``).

Part of ``sflow_app.memcache`` (see docs/memcache.md, "Records").
"""

from __future__ import annotations

import ipaddress
import logging
import weakref
from time import perf_counter_ns
from typing import Any

from ..records import MemcacheOperation, MemcacheProtocol, socket_record
from ._data import NoTally, serde_proxy
from ._outcomes import BYTES_READ, BYTES_WRITTEN, UNKNOWN, Kind, failed, moved, refused
from ._state import STATE

log = logging.getLogger("sflow_app")

U32 = 0xFFFFFFFF
ASCII = int(MemcacheProtocol.ASCII)

# ------------------------------------------------------------------------ sampled path


def connection_record(instance: Any) -> Any:
    """The socket record of the client's live connection; False for a unix socket."""
    if not isinstance(getattr(instance, "server", None), tuple):
        return False
    sock = getattr(instance, "sock", None)
    if sock is None:
        return None
    cached = instance.__dict__.get("_sflow_endpoint")
    if cached is not None and cached[0]() is sock:  # one lookup per connection
        return cached[1]
    try:
        local, remote = sock.getsockname(), sock.getpeername()
        record = socket_record(6, local[0], remote[0], local[1], remote[1])
    except (OSError, AttributeError, IndexError, TypeError):
        return None
    try:
        instance._sflow_endpoint = (weakref.ref(sock), record)
    except TypeError:  # no weak references to this socket type: no cache
        pass
    return record


def _configured_endpoint(instance: Any) -> Any:
    """No live connection: the configured server if it is an IP literal."""
    try:
        host, port = instance.server
        addr = ipaddress.ip_address(host.strip("[]"))
    except (ValueError, TypeError, AttributeError):
        return None
    local = "::" if addr.version == 6 else "0.0.0.0"
    return socket_record(6, local, str(addr), 0, int(port))


def emit(
    instance: Any,
    taken: tuple[int, int],
    cmd: int,
    key: bytes,
    nkeys: int,
    status: int,
    ns: int,
    value_bytes: int,
    endpoint: Any,
) -> None:
    """Build and queue one sampled operation. Never raises into the application."""
    try:
        policy = getattr(instance, "_sflow_keys", None) or STATE.class_policy
        op = MemcacheOperation(
            protocol=ASCII,
            cmd=cmd,
            key=policy.render(key),
            nkeys=min(nkeys, U32),
            value_bytes=min(max(value_bytes, 0), U32),
            uS=min(ns // 1000, U32),
            status=status,
        )
        if endpoint is None:
            endpoint = connection_record(instance)
        if endpoint is None:
            endpoint = _configured_endpoint(instance)
        records = (op,) if endpoint is None or endpoint is False else (op, endpoint)
        STATE.source.submit(taken[0], records, taken[1])
    except Exception:
        log.debug("sflow_app: could not record a memcache sample", exc_info=True)
        STATE.source.drop()


def sampled(
    kind: Kind, call: Any, instance: Any, args: Any, kwargs: Any, taken: tuple[int, int]
) -> Any:
    """A sampled round trip: ``call(*args, **kwargs)`` runs it (bound to ``instance``)."""
    try:
        proxy = serde_proxy(instance)
        proxy.read = proxy.written = 0
        endpoint = connection_record(instance)
        connected = instance.__dict__.get("_sflow_endpoint")
    except Exception:
        proxy, endpoint, connected = NoTally(), None, None
    start = perf_counter_ns()
    try:
        result = call(*args, **kwargs)
    except BaseException as exc:
        ns = perf_counter_ns() - start
        status = failed(kind, instance, args, kwargs, exc)
        if endpoint is None:  # connected during the operation, closed by the error?
            latest = instance.__dict__.get("_sflow_endpoint")
            if latest is not None and latest is not connected:
                endpoint = latest[1]
        if refused(exc):  # refused before sending
            proxy, ns = NoTally(), 0  # no round trip: nothing was sent
        _finish(kind, instance, args, kwargs, taken, status, ns, proxy, None, endpoint)
        raise
    ns = perf_counter_ns() - start
    try:
        status = kind.ok(instance, args, kwargs, result)
        read, written = moved(kind, proxy, instance, args, kwargs, result)
        if read:
            STATE.put((BYTES_READ, read))
        if written:
            STATE.put((BYTES_WRITTEN, written))
    except Exception:
        log.debug("sflow_app: memcache counting failed", exc_info=True)
        status = UNKNOWN
    _finish(kind, instance, args, kwargs, taken, status, ns, proxy, result, endpoint)
    return result


def _finish(
    kind: Kind,
    instance: Any,
    args: Any,
    kwargs: Any,
    taken: tuple[int, int],
    status: int,
    ns: int,
    proxy: Any,
    result: Any,
    endpoint: Any,
) -> None:
    try:
        cmd, key, nkeys = kind.describe(instance, args, kwargs)
        value_bytes = sum(moved(kind, proxy, instance, args, kwargs, result))
    except Exception:
        log.debug("sflow_app: could not describe a memcache operation", exc_info=True)
        STATE.source.drop()
        return
    emit(instance, taken, cmd, key, nkeys, status, ns, value_bytes, endpoint)

"""sFlow for pymemcache: ``memcache_operation`` samples and client-side memcache counters.

Memcached's own sFlow agent shows the server's view; this shows what the application asked
of its caches -- hot keys, missed keys, slow operations -- per client::

    import sflow_app.memcache

    sflow_app.memcache.instrument()            # every pymemcache client in the process
    sflow_app.memcache.wrap(client)            # or a single Client / PooledClient /
                                               # HashClient / RetryingClient instance

``instrument()`` replaces, at class level, methods of ``pymemcache.client.base.Client``:
its three round-trip methods (``_fetch_cmd``, ``_store_cmd``, ``_misc_cmd``), its
``_connect``, and the public commands that validate arguments before a round trip
(``delete``, ``delete_many``, ``incr``, ``decr``, ``touch``, ``cas``, ``flush_all``,
``cache_memlimit``, with every alias bound at class creation such as ``delete_multi``),
and the methods of ``pymemcache.client.hash.HashClient`` that check keys before choosing
a server (``_run_cmd``, ``get_many``, ``gets_many``, ``set_many`` and their aliases).
``PooledClient``, ``HashClient`` (pooled or not) and ``RetryingClient`` all end in a
``Client``, so they are covered, and each server round trip is counted once: a HashClient
``get_many`` over two servers is two operations, each retry is its own operation, and
``get_multi`` / ``set_multi`` / ``delete_multi`` are the same round trips as their
``*_many`` names. ``wrap(client)`` gives the same to one client by swapping in a subclass
(``isinstance`` still holds; a HashClient's own class too, for the keys it checks); pooled
and hashed clients get it for the ``Client`` objects they create later too. Both are
idempotent: a repeat is a no-op with a warning.
``uninstrument()`` undoes ``instrument()``. Every replacement keeps the original's name,
docstring and signature. What runs once per operation, and the public commands, are
plain functions; ``_connect`` and round trips with other signatures are
``wrapt.FunctionWrapper`` objects -- see "wrapt, and where not" under Cost for why and
the measurements. Beside OpenTelemetry's pymemcache instrumentation (wrapt wrappers on
the public commands), in either order, each sees every operation once: replacements of
public commands carry no ``__wrapped__``, which OpenTelemetry's wrappers take as "already
traced" and pass through. Removed in any order: when another library wrapped ours
since, ``uninstrument()`` takes only our layer out of its wrapt wrapper's chain (a kind
of wrapper it cannot relink is left as it is, with a warning). Importing ``sflow_app``
never imports pymemcache; this module needs the ``memcache`` extra.

Records
-------
A sampled operation becomes one flow sample on the memcache data source, client side
(``input`` 0x3FFFFFFF, ``output`` 0): ``memcache_operation`` (0:2200) and, for TCP
servers, ``extended_socket_ipv4/6`` (local = our end of the connection, remote = that
server, read once per connection; an operation that connected and then failed still names
that connection; one that never got a connection -- refused, unreachable -- names the
configured address if it is an IP literal, with our end unspecified). Unix-socket servers
get no socket record. ``protocol`` is ASCII (pymemcache
speaks only that). ``uS`` is the round trip's duration; ``value_bytes`` the serialized
value bytes sent (stores) or received (fetches).

========================================  ==========  ======================================
pymemcache                                cmd         status
========================================  ==========  ======================================
set, set_many/set_multi, __setitem__      SET         STORED / NOT_STORED
add, replace, append, prepend             ADD ...     STORED / NOT_STORED
cas                                       CAS         STORED / EXISTS / NOT_FOUND
get, get_many/get_multi, __getitem__      GET         OK (any key hit) / NOT_FOUND
gets, gets_many                           GETS        OK (any key hit) / NOT_FOUND
delete, delete_many/delete_multi          DELETE      DELETED (any key) / NOT_FOUND
incr, decr                                INCR, DECR  OK / NOT_FOUND
touch                                     TOUCH       OK / NOT_FOUND
stats                                     STATS       OK
flush_all                                 FLUSH       OK
version                                   VERSION     OK
quit                                      QUIT        UNKNOWN (no reply)
cache_memlimit, shutdown                  OTHER       OK
raw_command                               by its first word; the reply's first word
                                          (STORED, NOT_FOUND, ...) else OK; a
                                          retrieval: OK if any VALUE, else NOT_FOUND
========================================  ==========  ======================================

Multi-key commands report ``nkeys`` and the first key; a store whose keys fared
differently reports the first key's non-STORED outcome. ``noreply`` gives UNKNOWN (there
is no outcome to see). Errors keep propagating to the caller and are recorded as:
CLIENT_ERROR for pymemcache's client errors (the server's ``CLIENT_ERROR`` reply, and
``MemcacheIllegalInputError`` -- a key with whitespace or over 250 bytes, a non-integer
argument -- which pymemcache raises before sending: such an operation has ``uS`` 0, as
no round trip was started); SERVER_ERROR for the server's ``SERVER_ERROR`` reply; ERROR
for the server's ``ERROR`` reply (pymemcache's ``MemcacheUnknownCommandError``) and for
every transport or generic failure: ``OSError``, timeouts, the connection closing
mid-reply (``MemcacheUnexpectedCloseError``, although pymemcache derives it from its
server error), an unparseable reply. A ``get`` that ``ignore_exc=True`` turned into an
empty result is ERROR, not NOT_FOUND. ``HashClient`` checks every key before it chooses a
server: a key it refuses is recorded the same way (CLIENT_ERROR, ``uS`` 0, counted as a
plain ``Client``'s refusal is) but with no socket record, since no server was chosen;
an argument the chosen ``Client`` refuses (``incr(key, "x")``) is recorded there, once.
With no server left in its ring (all marked dead) it raises "All servers seem to be down":
one ERROR operation, no socket record. While a failing server waits out
``retry_timeout``, HashClient answers its keys with the default value and sends nothing:
no operation is recorded then.
``HashClient.delete_many`` deletes key by key: the keys before a refused one were deleted
(one operation each), the refused key is one operation, the rest are not sent. A
``RetryingClient`` retries a refusal like any error: each attempt is an operation.

Keys are the bytes sent on the wire (``key_prefix`` included) and are reported as they
are by default: hot-key analysis is the point. ``keys="hmac"`` reports the first 32 hex
digits (128 bits) of HMAC-SHA256(secret, key) instead -- a plain hash of ``user:42``
would be reversed by enumerating user ids -- and ``keys="none"`` reports no key.

Counters
--------
``memcache_counters`` (0:2204) plus ``host_parent``, polled every ``polling.memcache``
seconds (else ``polling``), describe what the service's clients did (the core sums the
counts of every worker process). Sampling is
``sampling.memcache`` (else ``sampling``). The data source and sub-agent follow the core's
identity rules (a locally assigned index; the client poses as no server).

=====================  ==================================================================
cmd_set                storage commands sent (set, add, replace, append, prepend, cas;
                       one per key of set_many), whatever their outcome
cmd_touch, cmd_flush   touch and flush_all commands, whatever their outcome
get_hits/get_misses    per key, for get, gets and their multi-key forms
delete_hits/_misses    per key (DELETED / NOT_FOUND)
incr_*, decr_*         hit = the key existed, miss = NOT_FOUND
cas_hits/_misses/      STORED / NOT_FOUND / EXISTS
cas_badval
total_items            values the server confirmed STORED
total_connections      connections opened
rejected_connections   connection attempts that failed (refused, unreachable, timed out)
bytes_read             value bytes received (serialized, as the server sent them)
bytes_written          value bytes sent (serialized); command lines and keys not counted
=====================  ==================================================================

Outcomes that were not seen (``noreply``, errors) count in no hit/miss counter; bytes
count for operations that completed. Commands pymemcache refused before sending count in
cmd_set / cmd_touch / cmd_flush like the others. The fields only a server can know -- auth_cmds,
auth_errors (pymemcache has no SASL), threads, conn_yields, listen_disabled_num,
connection_structures, evictions, reclaimed, curr_items, bytes, limit_maxbytes -- are
always 0: the memcache structure has no "unknown" value, and 0 keeps collectors that sum
or rate counters correct. curr_connections is a gauge: the connections instrumented
clients hold open now, summed over the service's live workers only (a dead worker's
connections are gone with it).

These are the *client's* view: a collector that also hears a memcached's own sFlow agent
gets two kinds of ``memcache_counters``, and tells them apart by their data source and
agent. A memcached's own agent reports data source ``3:<its port>`` (11211 by default;
sub_agent_id the same number), from the cache's host, with the server-only fields filled
and flow samples whose ``input`` is 0 (the request came in). This module reports from
the application's host, under the service's sub_agent_id, data source ``3:65536`` to
``3:99999`` (a hash of the service name), with the server-only fields 0 (threads,
curr_items, bytes, limit_maxbytes, evictions, ...), a ``host_parent`` naming the
application's host, and flow samples whose ``output`` is 0 and ``input`` 0x3FFFFFFF (the
request went out). Summing a service's client counters with a server's is double
counting: each operation is counted once by each side.

``raw_command`` counts as the command it sends (its first word; pymemcache does not parse
the reply, so this module reads the command line and the reply): get/gets (and gat/gats,
which also count one cmd_touch per key) count a hit per ``VALUE`` block in the reply and a
miss per other key; set/add/replace/append/prepend/cas count cmd_set and, by the reply
word, total_items and the cas counters; delete/incr/decr their hits and misses; touch and
flush_all cmd_touch and cmd_flush. Value bytes are the data blocks: those of a
retrieval's ``VALUE`` blocks read, the one sent with a storage command written (as for
the other commands, command lines and keys are not counted, and the sampled record's
``value_bytes`` is the same number). Any other command (``mn``, ``mg``, ``verbosity``,
...) counts in no counter, like stats or version.

Cost
----
An unsampled operation costs one extra Python call (fixed-parameter replacements for
pymemcache 4's signatures, ``*args`` ones otherwise), the sampler's candidate ordinal and
a compare, a few lock-free counter increments, and for bytes one lock-free append
(``CounterBlock.put``). Value sizes are read off the values and results when the client
uses pymemcache's default serde; any other serde is wrapped, per client, in a thin proxy
installed as ``client.serde`` on first use (``uninstrument()`` gives the original back)
that tallies the current operation's serialized bytes -- exact as long as a client is
used by one thread at a time, which pymemcache requires anyway. Timing, keys and socket
addresses are read only for sampled operations. ``benchmarks/bench_memcache.py``
measures it against bare pymemcache.

wrapt, and where not
~~~~~~~~~~~~~~~~~~~~
The budget of an unsampled operation is 2 % of a loopback round trip, about 0.75 us of the
36-40 us one here. What a hook on the round trip adds per operation, network taken out
(``bench_memcache.py`` in memory: a Client on a fake socket, CPU time, best of many
windows; CPython 3.11, wrapt 2.5.2 with its C extension, a 2-core VM): about 1.2 us for a
pass-through ``wrapt.FunctionWrapper`` (binding a ``BoundFunctionWrapper``, then the call
with pymemcache's ``key_prefix=`` keyword), against 0.05 us for a plain pass-through
function with the same fixed parameters and about 0.5 us for a plain ``*args, **kwargs``
one (measured the same way, with it in place of the plain floor). So:

- plain functions (``functools.update_wrapper``: name, docstring, signature;
  ``__wrapped__`` on private methods only) for what runs on every operation:
  ``_fetch_cmd``, ``_store_cmd`` and ``_misc_cmd`` with pymemcache 4's exact signatures,
  the guards of ``delete``, ``delete_many``, ``incr``, ``decr``, ``touch``, ``cas`` (as
  wrapt wrappers they would add about 3 % to a loopback ``delete``), and HashClient's
  key-checking methods; also the guards of ``flush_all`` and ``cache_memlimit``, public
  commands OpenTelemetry wraps (a wrapt wrapper's ``__wrapped__`` would hide them from it);
- ``wrapt.FunctionWrapper`` for what does not run per operation with pymemcache 4:
  ``_connect`` (once per connection) and the round trips of any other signature
  (another pymemcache version, a subclass that overrides them), where wrapt binds
  whatever kind of callable the original is. With such
  a signature the wrapt wrapper is on the per-operation path and costs about 0.7 us more
  than a plain ``*args`` function would; pymemcache 4 never takes that path.

``bench_memcache.py`` shows both floors beside sflow_app, against the real server and in
memory: "floor: plain pass-through" and "floor: wrapt pass-through" (the three round-trip
methods replaced by pass-throughs). In memory sflow_app's unsampled path adds about
0.85 us per operation (get hit and set about 1.0 us, get miss 0.5 us), 1-in-100 about
1.15 us; over the loopback round trip that is an estimated ratio of 1.015-1.025 unsampled
and 1.02-1.035 at 1-in-100 (the wrapt floor alone: 1.02-1.035) -- at the 2 % budget
rather than under it, and below what the wall-clock ratios (a few % of noise) resolve.

The counting serde is a ``__slots__`` class forwarding other attributes to the client's
serde (``client.serde.inner`` is the original), not a ``wrapt.ObjectProxy``: the proxy
would make ``isinstance`` against the user's serde class hold, but costs more per call
(measured by the same benchmark: serialize 0.69 vs 1.19 us, deserialize 0.33 vs 0.70 us,
over pickle_serde's own 0.40 and 0.12 us).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal, TypeVar

import wrapt

try:
    # pymemcache ships no type information.
    from pymemcache.client.base import Client, PooledClient  # type: ignore[import-untyped]
    from pymemcache.client.hash import HashClient  # type: ignore[import-untyped]
    from pymemcache.client.retrying import RetryingClient  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - the "memcache" extra installs it
    raise ImportError(
        "sflow_app.memcache needs pymemcache: pip install 'sflow-app[memcache]'"
    ) from exc

# The implementation, by concern (this module is the public surface and the install):
#   _data      key policy, the key as sent, value bytes (default serde or a
#                       counting serde attached per client)
#   _outcomes  per command kind: memcache_cmd, status and counters of an outcome
#   _record    the sampled path: timing, describing, queueing one flow sample
#   _methods   the replacements installed on pymemcache's classes (the unsampled
#                       path) and the bound data source they count into (_bind)
from .._agent import AGENT
from . import _record
from ._data import _CountingSerde as _CountingSerde  # used by benchmarks
from ._data import _KeyPolicy, _policy, _restore_serdes
from ._methods import _bind, _methods_for
from ._methods import _open_connections as _open_connections  # used by tests

__all__ = ["KeyMode", "instrument", "uninstrument", "wrap"]

log = logging.getLogger("sflow_app")

KeyMode = Literal["plain", "hmac", "none"]
AnyClient = TypeVar("AnyClient")


_lock = threading.RLock()
# (class, name) -> (the class's own value before instrument(), what it installed there),
# for Client and HashClient
_installed: dict[tuple[type, str], tuple[Any, Any]] = {}
_subclasses: dict[tuple[type, _KeyPolicy], type] = {}


def instrument(*, keys: KeyMode = "plain", secret: bytes | str | None = None) -> None:
    """Instrument every pymemcache client of the process (class-level, idempotent).

    ``keys``: how sampled keys are reported -- ``"plain"`` (as sent), ``"hmac"``
    (HMAC-SHA256 with ``secret``, 32 hex digits) or ``"none"``.
    """
    policy = _policy(keys, secret)
    with _lock:
        if _installed:
            log.warning(
                "sflow_app: pymemcache is already instrumented; "
                "call uninstrument() first to change options"
            )
            return
        _bind(AGENT.memcache_source())
        _record._class_policy = policy  # the sampled path's default key policy
        for cls in (Client, HashClient):
            for name, method in _methods_for(cls).items():
                _installed[(cls, name)] = (cls.__dict__.get(name, _MISSING), method)
                setattr(cls, name, method)


_MISSING = object()


def uninstrument() -> None:
    """Undo ``instrument()`` (clients given to ``wrap()`` stay instrumented)."""
    with _lock:
        if not _installed:
            log.warning("sflow_app: pymemcache is not instrumented")
            return
        for (cls, name), (original, ours) in _installed.items():
            current = cls.__dict__.get(name, _MISSING)
            if current is ours:
                if original is _MISSING:
                    delattr(cls, name)
                else:
                    setattr(cls, name, original)
            elif not _unlink(current, ours, original):
                log.warning(
                    "sflow_app: %s.%s was wrapped again since instrument() by "
                    "something sflow_app cannot unlink from: left as it is",
                    cls.__name__,
                    name,
                )
        _installed.clear()
        _restore_serdes()


# Every wrapt proxy's base (wrapt 2 names it BaseObjectProxy; in wrapt 1 it is ObjectProxy).
_PROXY: type = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


def _unlink(outer: Any, ours: Any, original: Any) -> bool:
    """Another library wrapped ``ours`` since (OpenTelemetry, say, out of last-in
    first-out order): take ours out of its chain -- its wrapper then wraps ``original``
    -- rather than remove it too. wrapt wrappers allow that; other kinds may not."""
    node: Any = outer
    for _ in range(16):
        inner = getattr(node, "__wrapped__", None)
        if inner is None:
            return False
        if inner is ours:
            # Only a proxy calls what __wrapped__ names; a plain function keeps its own.
            if original is _MISSING or not isinstance(node, _PROXY):
                return False
            try:
                proxy: Any = node  # a wrapt proxy: __wrapped__ is settable
                proxy.__wrapped__ = original
            except (AttributeError, TypeError):
                return False
            return getattr(proxy, "__wrapped__", None) is original
        node = inner
    return False


def wrap(
    client: AnyClient, *, keys: KeyMode = "plain", secret: bytes | str | None = None
) -> AnyClient:
    """Instrument one client: ``Client``, ``PooledClient``, ``HashClient`` or
    ``RetryingClient`` (whatever it wraps). Returns the same object.

    A no-op with a warning when the client is already instrumented (or when
    ``instrument()`` already covers every client).
    """
    policy = _policy(keys, secret)
    with _lock:
        _bind(AGENT.memcache_source())
        if _installed:
            log.warning("sflow_app: pymemcache is instrumented class-wide; wrap() is a no-op")
            return client
        if not _wrap(client, policy):
            log.warning("sflow_app: %r is already instrumented", client)
    return client


def _wrap(client: Any, policy: _KeyPolicy) -> bool:
    """True when something was newly instrumented."""
    if isinstance(client, RetryingClient):
        return _wrap(client._client, policy)
    if isinstance(client, (HashClient, PooledClient)):
        new = False
        if isinstance(client, HashClient) and not type(client).__dict__.get("_sflow_wrapped"):
            client.__class__ = _subclass(type(client), policy)  # the keys it refuses itself
            new = True
        cls = client.client_class
        new = not cls.__dict__.get("_sflow_wrapped") or new
        client.client_class = _subclass(cls, policy)
        if isinstance(client, HashClient):
            existing = list(client.clients.values())
        else:
            existing = [*client.client_pool.free, *client.client_pool.used]
        for inner in existing:
            new = _wrap(inner, policy) or new
        return new
    if isinstance(client, Client):
        if type(client).__dict__.get("_sflow_wrapped"):
            return False
        client.__class__ = _subclass(type(client), policy)
        return True
    raise TypeError(f"not a pymemcache client: {client!r}")


def _subclass(cls: type, policy: _KeyPolicy) -> type:
    """``cls`` instrumented: a Client's round trips and guards, a HashClient's key checks
    (cached per class and key policy)."""
    if cls.__dict__.get("_sflow_wrapped"):
        return cls
    sub = _subclasses.get((cls, policy))
    if sub is None:
        namespace = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "_sflow_wrapped": True,
            "_sflow_keys": policy,
            **_methods_for(cls),
        }
        sub = _subclasses[(cls, policy)] = type(cls.__name__, (cls,), namespace)
    return sub

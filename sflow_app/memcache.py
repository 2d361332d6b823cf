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
docstring, signature and ``__wrapped__``. What runs once per operation is a plain
function; the rest (``_connect``, the admin commands' guards, round trips with other
signatures) are ``wrapt.FunctionWrapper`` objects -- see "wrapt, and where not" under
Cost for why and the measurements. Importing ``sflow_app`` never imports pymemcache; this
module needs the ``memcache`` extra.

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
The budget of an unsampled operation is 2 % of a loopback round trip, about 0.8 us. A
``wrapt.FunctionWrapper`` on a method costs about 0.85 us per call by itself (measured
here: CPython 3.11, wrapt 2.5.2 with its C extension, best of 9; binding a
``BoundFunctionWrapper``, then the call), against 0.06 us for a plain function with the
same fixed parameters and 0.35 us for a plain ``*args, **kwargs`` one. So:

- plain functions (``functools.update_wrapper``: name, docstring, signature,
  ``__wrapped__``) for what runs on every operation: ``_fetch_cmd``, ``_store_cmd`` and
  ``_misc_cmd`` with pymemcache 4's exact signatures, the guards of ``delete``,
  ``delete_many``, ``incr``, ``decr``, ``touch``, ``cas`` (as wrapt wrappers they would
  add about 3 % to a ~30 us loopback ``delete``), and HashClient's key-checking methods;
- ``wrapt.FunctionWrapper`` for what does not run per operation with pymemcache 4:
  ``_connect`` (once per connection), the guards of ``flush_all`` and ``cache_memlimit``,
  and the round trips of any other signature (another pymemcache version, a subclass that
  overrides them), where wrapt binds whatever kind of callable the original is. With such
  a signature the wrapt wrapper is on the per-operation path and costs about 0.5 us more
  than a plain ``*args`` function would; pymemcache 4 never takes that path.

``bench_memcache.py`` shows both floors against the real server, side by side: "floor:
plain pass-through" and "floor: wrapt pass-through" (the three round-trip methods replaced
by pass-throughs). The counting serde is a ``__slots__`` class forwarding other attributes
to the client's serde (``client.serde.inner`` is the original), not a
``wrapt.ObjectProxy``: the proxy would make ``isinstance`` against the user's serde class
hold, but costs more per call (measured by the same benchmark: serialize 0.70 vs 1.21 us,
deserialize 0.33 vs 0.71 us, over pickle_serde's own 0.39 and 0.12 us).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import inspect
import ipaddress
import itertools
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter_ns
from types import MethodType
from typing import Any, Literal, TypeVar

import wrapt

try:
    # pymemcache ships no type information.
    from pymemcache.client.base import (  # type: ignore[import-untyped]
        Client,
        PooledClient,
        check_key_helper,
    )
    from pymemcache.client.hash import HashClient  # type: ignore[import-untyped]
    from pymemcache.client.retrying import RetryingClient  # type: ignore[import-untyped]
    from pymemcache.exceptions import (  # type: ignore[import-untyped]
        MemcacheClientError,
        MemcacheIllegalInputError,
        MemcacheServerError,
        MemcacheUnexpectedCloseError,
        MemcacheUnknownCommandError,
    )
    from pymemcache.serde import LegacyWrappingSerde  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - the "memcache" extra installs it
    raise ImportError(
        "sflow_app.memcache needs pymemcache: pip install 'sflow-app[memcache]'") from exc

from ._agent import AGENT
from ._counters import _value
from ._source import MEMCACHE_COUNTERS, MemcacheSource
from .records import (
    MemcacheCmd,
    MemcacheOperation,
    MemcacheProtocol,
    MemcacheStatus,
    socket_record,
)

__all__ = ["KeyMode", "instrument", "uninstrument", "wrap"]

log = logging.getLogger("sflow_app")

KeyMode = Literal["plain", "hmac", "none"]
AnyClient = TypeVar("AnyClient")

U32 = 0xFFFFFFFF
ASCII = int(MemcacheProtocol.ASCII)
OTHER = int(MemcacheCmd.OTHER)
UNKNOWN = int(MemcacheStatus.UNKNOWN)
OK = int(MemcacheStatus.OK)
ERROR = int(MemcacheStatus.ERROR)
CLIENT_ERROR = int(MemcacheStatus.CLIENT_ERROR)
SERVER_ERROR = int(MemcacheStatus.SERVER_ERROR)
STORED = int(MemcacheStatus.STORED)
NOT_STORED = int(MemcacheStatus.NOT_STORED)
EXISTS = int(MemcacheStatus.EXISTS)
NOT_FOUND = int(MemcacheStatus.NOT_FOUND)
DELETED = int(MemcacheStatus.DELETED)

# memcache_cmd by the command's name on the wire. gat/gats (get-and-touch) have no code of
# their own; GET/GETS are the closest.
_CMDS: dict[bytes, int] = {
    b"set": MemcacheCmd.SET, b"add": MemcacheCmd.ADD, b"replace": MemcacheCmd.REPLACE,
    b"append": MemcacheCmd.APPEND, b"prepend": MemcacheCmd.PREPEND, b"cas": MemcacheCmd.CAS,
    b"get": MemcacheCmd.GET, b"gets": MemcacheCmd.GETS, b"gat": MemcacheCmd.GET,
    b"gats": MemcacheCmd.GETS, b"incr": MemcacheCmd.INCR, b"decr": MemcacheCmd.DECR,
    b"delete": MemcacheCmd.DELETE, b"stats": MemcacheCmd.STATS,
    b"flush_all": MemcacheCmd.FLUSH, b"version": MemcacheCmd.VERSION,
    b"quit": MemcacheCmd.QUIT, b"touch": MemcacheCmd.TOUCH,
}
_CMDS = {name: int(code) for name, code in _CMDS.items()}
_FETCH_KEYED = (b"get", b"gets")
_MISC_KEYED = frozenset({b"delete", b"incr", b"decr", b"touch"})
_ONE_KEY = frozenset({b"set", b"add", b"replace", b"append", b"prepend", b"cas", b"delete",
                      b"incr", b"decr", b"touch"})
# A raw_command reply's first word -> status.
_REPLY_STATUS = {
    b"STORED": STORED, b"NOT_STORED": NOT_STORED, b"EXISTS": EXISTS,
    b"NOT_FOUND": NOT_FOUND, b"DELETED": DELETED, b"TOUCHED": OK, b"OK": OK,
}

_SLOT = {name: i for i, name in enumerate(MEMCACHE_COUNTERS)}
CMD_SET, CMD_TOUCH, CMD_FLUSH = _SLOT["cmd_set"], _SLOT["cmd_touch"], _SLOT["cmd_flush"]
GET_HITS, GET_MISSES = _SLOT["get_hits"], _SLOT["get_misses"]
DELETE_HITS, DELETE_MISSES = _SLOT["delete_hits"], _SLOT["delete_misses"]
INCR_HITS, INCR_MISSES = _SLOT["incr_hits"], _SLOT["incr_misses"]
DECR_HITS, DECR_MISSES = _SLOT["decr_hits"], _SLOT["decr_misses"]
CAS_HITS, CAS_MISSES, CAS_BADVAL = _SLOT["cas_hits"], _SLOT["cas_misses"], _SLOT["cas_badval"]
TOTAL_ITEMS = _SLOT["total_items"]
BYTES_READ, BYTES_WRITTEN = _SLOT["bytes_read"], _SLOT["bytes_written"]
TOTAL_CONNECTIONS = _SLOT["total_connections"]
REJECTED_CONNECTIONS = _SLOT["rejected_connections"]


# ------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class _KeyPolicy:
    mode: str = "plain"
    secret: bytes = b""

    def render(self, key: bytes) -> bytes:
        if self.mode == "plain" or not key:
            return key
        if self.mode == "none":
            return b""
        return hmac.new(self.secret, key, hashlib.sha256).hexdigest()[:32].encode()


def _policy(keys: str, secret: bytes | str | None) -> _KeyPolicy:
    if keys not in ("plain", "hmac", "none"):
        raise ValueError(f"keys must be 'plain', 'hmac' or 'none', not {keys!r}")
    if keys != "hmac":
        return _KeyPolicy(keys)
    if not secret:
        raise ValueError("keys='hmac' needs a secret")
    return _KeyPolicy("hmac", secret.encode() if isinstance(secret, str) else bytes(secret))


# --------------------------------------------------------------------- bound source
# The one memcache data source of this process, bound at instrument()/wrap() time and
# re-bound on the slow path if the agent replaced it. The hot path reads these globals.

_source: Any = None
_sampler: Any = None
_pool: Callable[[], int] = itertools.count().__next__
_incr: tuple[Callable[[], int], ...] = ()


def _put(item: tuple[int, int]) -> None:  # replaced by the bound source's counters.put
    return None


def _fold() -> None:
    return None


def _bind(source: MemcacheSource) -> None:
    global _source, _sampler, _pool, _incr, _put, _fold
    counters = source.counters
    _sampler = source.sampler
    _pool = source.sampler.pool
    _incr = counters.incr
    # put((slot, n)): add n > 0, lock-free (a deque append the block folds in later).
    _put = getattr(counters, "put", None) or (lambda item: counters.add(*item))
    _fold = getattr(counters, "fold", None) or (lambda: None)
    _source = source
    source.gauges[_SLOT["curr_connections"]] = _open_connections


def _due(n: int) -> bool:
    """The slow path for candidate ``n`` (see _sampler): True when it is sampled."""
    try:
        source = AGENT.memcache_source()
        if source is not _source:
            _bind(source)  # the agent was replaced (tests); count from the new source on
            return False
        _fold()  # keeps the pending byte counts short even when no one takes snapshots
        return bool(source.sample(n))
    except Exception:
        log.debug("sflow_app: memcache sampling decision failed", exc_info=True)
        return False


# ------------------------------------------------------------------- value bytes
# With pymemcache's default serde (values pass through; non-bytes are sent as str(value)
# encoded) the sizes are read off the values and results. Any other serde is wrapped, per
# client, in a proxy that tallies the serialized sizes of the current operation (a Client
# serves one thread at a time, so no lock). Either way the wrapper adds the operation's
# bytes to bytes_read / bytes_written once.


class _CountingSerde:
    """pymemcache's serde interface, tallying value bytes for one client."""

    __slots__ = ("__weakref__", "_de", "_encoding", "_ser", "inner", "read", "written")

    def __init__(self, inner: Any, encoding: str) -> None:
        self.inner = inner
        self._ser = inner.serialize
        self._de = inner.deserialize
        self._encoding = encoding
        self.read = 0
        self.written = 0

    def serialize(self, key: Any, value: Any) -> Any:
        result = self._ser(key, value)
        try:
            data = result[0]
            # Mirrors Client._store_cmd: non-bytes are sent as str(data) encoded.
            self.written += (len(data) if isinstance(data, bytes)
                             else len(str(data).encode(self._encoding)))
        except Exception:
            pass
        return result

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        self.read += len(value)
        return self._de(key, value, flags)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class _NoTally:
    """Stands in when a client's serde cannot be proxied (no ``serde`` attribute)."""

    read = written = 0


def _is_default_serde(serde: Any) -> bool:
    if type(serde) is not LegacyWrappingSerde:
        return False
    ser, de = serde.__dict__.get("serialize"), serde.__dict__.get("deserialize")
    return (getattr(ser, "__func__", None) is LegacyWrappingSerde._default_serialize
            and getattr(de, "__func__", None) is LegacyWrappingSerde._default_deserialize)


_attached: weakref.WeakSet[Any] = weakref.WeakSet()  # clients marked by _attach
_attach_lock = threading.Lock()


def _attach(client: Any) -> Any:
    """First use of ``client`` (or it replaced its serde): its own serde when it is the
    default one, else a counting proxy installed in its place."""
    try:
        serde = client.serde
        if isinstance(serde, _CountingSerde):  # copied from another client
            serde = serde.inner
        if not _is_default_serde(serde):
            serde = _CountingSerde(serde, getattr(client, "encoding", None) or "ascii")
        client.serde = serde
        client._sflow_serde = serde
        with _attach_lock:
            _attached.add(client)
    except Exception:
        log.debug("sflow_app: cannot count value bytes for %r", client, exc_info=True)
        return _NoTally()
    return serde


def _proxy(instance: Any) -> Any:
    try:
        proxy = instance._sflow_serde
        if instance.serde is not proxy:
            proxy = _attach(instance)
    except AttributeError:
        proxy = _attach(instance)
    return proxy


def _value_size(value: Any, encoding: str) -> int:
    """What Client._store_cmd sends for a value the default serde passed through."""
    if isinstance(value, bytes):
        return len(value)
    try:
        return len(str(value).encode(encoding))
    except Exception:
        return 0


def _fetched_size(result: Any, expect_cas: Any) -> int:
    """Value bytes of a get/gets result, when the default serde returned them as sent."""
    size = 0
    for value in result.values():
        if expect_cas:
            value = value[0]
        if isinstance(value, bytes):
            size += len(value)
    return size


def _stored_size(instance: Any, values: Any) -> int:
    size = 0
    for value in values.values():
        if isinstance(value, bytes):
            size += len(value)
        else:
            size += _value_size(value, getattr(instance, "encoding", None) or "ascii")
    return size


# ------------------------------------------------------------------------- connections
# Connections open now are tracked per process (itertools counts, not a lock: the close
# side runs from a weakref finalizer, which can fire during any allocation in any thread)
# and reported as the curr_connections gauge.

_opened = itertools.count()
_closed = itertools.count()


def _open_connections() -> int:
    """Sockets instrumented clients opened in this process and still hold."""
    return max(0, _value(_opened) - _value(_closed))


def _connect_method(original: Callable[..., Any]) -> Callable[..., Any]:
    """Once per connection, so a wrapt FunctionWrapper."""

    def _connect(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            result = wrapped(*args, **kwargs)
        except BaseException:
            _incr[REJECTED_CONNECTIONS]()
            raise
        _incr[TOTAL_CONNECTIONS]()
        sock = getattr(instance, "sock", None)
        if sock is not None:
            try:
                # Counts the close however it happens: close(), an error, garbage collection.
                weakref.finalize(sock, _closed.__next__)
                next(_opened)
            except TypeError:  # a socket type without weak references: not tracked
                pass
            try:
                # Read the addresses now: an operation that connects and then fails (the
                # error closes the socket) still gets its socket record.
                _endpoint(instance)
            except Exception:
                pass
        return result

    return _wrapt_method(_connect, original)


# ---------------------------------------------------------------------------- outcomes


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str,
         default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _count(slot: int, amount: int) -> None:
    if amount == 1:
        _incr[slot]()
    elif amount > 0:
        _put((slot, amount))


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, MemcacheUnknownCommandError):  # the server said ERROR
        return ERROR
    if isinstance(exc, MemcacheClientError):  # CLIENT_ERROR, or rejected before sending
        return CLIENT_ERROR
    if isinstance(exc, MemcacheUnexpectedCloseError):  # transport, not a server reply
        return ERROR
    if isinstance(exc, MemcacheServerError):
        return SERVER_ERROR
    return ERROR


# Each round trip has: ok(instance, args, kwargs, result) -> status (and counts),
# err(instance, args, kwargs, exc) -> status (and counts), describe(...) -> (cmd, key, nkeys).
# Their args are those of Client._fetch_cmd / _store_cmd / _misc_cmd.


def _fetch_ok(instance: Any, args: Any, kwargs: Any, result: Any) -> int:
    name = args[0] if args else kwargs.get("name")
    if name == b"get" or name == b"gets":
        hits = len(result)
        if not hits and instance.sock is None:
            return ERROR  # ignore_exc turned an error into an empty result
        _count(GET_HITS, hits)
        _count(GET_MISSES, len(_arg(args, kwargs, 1, "keys", ())) - hits)
        return OK if hits else NOT_FOUND
    if not result and instance.sock is None:
        return ERROR
    return OK


def _fetch_err(instance: Any, args: Any, kwargs: Any, exc: BaseException) -> int:
    return _status_of(exc)


def _fetch_describe(instance: Any, args: Any, kwargs: Any) -> tuple[int, bytes, int]:
    name = _arg(args, kwargs, 0, "name", b"")
    cmd = _CMDS.get(name, OTHER)
    if name not in _FETCH_KEYED:
        return cmd, b"", 0
    keys = list(_arg(args, kwargs, 1, "keys", ()))
    prefix = _arg(args, kwargs, 3, "key_prefix", b"")
    return cmd, _wire_key(instance, keys[0], prefix) if keys else b"", len(keys)


def _store_ok(instance: Any, args: Any, kwargs: Any, result: Any) -> int:
    name = args[0] if args else kwargs.get("name")
    _count(CMD_SET, len(result))
    if _arg(args, kwargs, 3, "noreply"):
        return UNKNOWN
    stored = 0
    status = STORED
    if name == b"cas":
        missing = badval = 0
        for outcome in result.values():
            if outcome:
                stored += 1
            elif outcome is None:
                missing += 1
                if status == STORED:
                    status = NOT_FOUND
            else:
                badval += 1
                if status == STORED:
                    status = EXISTS
        _count(CAS_HITS, stored)
        _count(CAS_MISSES, missing)
        _count(CAS_BADVAL, badval)
    else:
        for outcome in result.values():
            if outcome:
                stored += 1
            elif status == STORED:
                status = NOT_STORED
    _count(TOTAL_ITEMS, stored)
    return status


def _store_err(instance: Any, args: Any, kwargs: Any, exc: BaseException) -> int:
    _count(CMD_SET, len(_arg(args, kwargs, 1, "values", ())))
    return _status_of(exc)


def _store_describe(instance: Any, args: Any, kwargs: Any) -> tuple[int, bytes, int]:
    values = _arg(args, kwargs, 1, "values", {})
    cmd = _CMDS.get(_arg(args, kwargs, 0, "name", b""), OTHER)
    first = next(iter(values), None)
    key = b"" if first is None else _wire_key(instance, first, instance.key_prefix)
    return cmd, key, len(values)


def _misc_ok(instance: Any, args: Any, kwargs: Any, result: Any) -> int:
    name = args[1] if len(args) > 1 else kwargs.get("cmd_name")
    if _arg(args, kwargs, 3, "end_tokens"):
        return _raw_ok(name, result)
    if name == b"touch":
        _incr[CMD_TOUCH]()
    elif name == b"flush_all":
        _incr[CMD_FLUSH]()
    if _arg(args, kwargs, 2, "noreply") or not result:
        return UNKNOWN
    first = result[0]
    if name == b"delete":
        hits = 0
        for line in result:
            if line == b"DELETED":
                hits += 1
        _count(DELETE_HITS, hits)
        _count(DELETE_MISSES, len(result) - hits)
        return DELETED if hits else NOT_FOUND
    if name == b"incr" or name == b"decr":
        found = first != b"NOT_FOUND"
        if name == b"incr":
            _incr[INCR_HITS if found else INCR_MISSES]()
        else:
            _incr[DECR_HITS if found else DECR_MISSES]()
        return OK if found else NOT_FOUND
    if name == b"touch":
        return OK if first == b"TOUCHED" else NOT_FOUND
    return OK


def _misc_err(instance: Any, args: Any, kwargs: Any, exc: BaseException) -> int:
    name = _arg(args, kwargs, 1, "cmd_name")
    if _arg(args, kwargs, 3, "end_tokens"):
        _raw_err(name)
        return _status_of(exc)
    if name == b"touch":
        _incr[CMD_TOUCH]()
    elif name == b"flush_all":
        _incr[CMD_FLUSH]()
    elif name == b"shutdown" and isinstance(exc, MemcacheUnexpectedCloseError):
        return OK  # the server closing the connection is what shutdown asked for
    return _status_of(exc)


def _misc_describe(instance: Any, args: Any, kwargs: Any) -> tuple[int, bytes, int]:
    cmds = _arg(args, kwargs, 0, "cmds", ())
    name = _arg(args, kwargs, 1, "cmd_name", b"")
    if _arg(args, kwargs, 3, "end_tokens"):
        return _raw_describe(name)
    cmd = _CMDS.get(name, OTHER)
    if name not in _MISC_KEYED or not cmds:
        return cmd, b"", 0
    tokens = cmds[0].split()
    return cmd, tokens[1] if len(tokens) > 1 else b"", len(cmds)


# raw_command(command, end_tokens) is _misc_cmd([command + b"\r\n"], command, False,
# end_tokens): pymemcache does not parse the reply, so these read the command line and the
# reply themselves, and count them as the command they are would be counted.

_RAW_FETCH = frozenset({b"get", b"gets", b"gat", b"gats"})
_RAW_TOUCHING = frozenset({b"gat", b"gats"})
_RAW_STORE = frozenset({b"set", b"add", b"replace", b"append", b"prepend", b"cas"})


def _raw_words(command: Any) -> tuple[bytes, list[bytes]]:
    """(command name, the words of its first line) of a raw command."""
    if not isinstance(command, bytes):
        return b"", []
    words = command.split(b"\r\n", 1)[0].split()
    return (words[0] if words else b""), words


def _raw_keys(name: bytes, words: list[bytes]) -> list[bytes]:
    if name in _FETCH_KEYED:
        return words[1:]
    if name in _RAW_TOUCHING:  # gat <exptime> <key>*
        return words[2:]
    if name in _ONE_KEY:
        return words[1:2]
    return []


def _raw_describe(command: Any) -> tuple[int, bytes, int]:
    name, words = _raw_words(command)
    keys = _raw_keys(name, words)
    return _CMDS.get(name, OTHER), keys[0] if keys else b"", len(keys)


def _raw_reply(result: Any) -> bytes:
    reply = result[0] if result else b""
    return reply if isinstance(reply, bytes) else b""


def _raw_values(reply: bytes) -> tuple[int, int]:
    """(values, value bytes) in a retrieval reply: ``VALUE <key> <flags> <bytes> ...``
    blocks, as many as are complete enough to have a header."""
    hits = size = pos = 0
    while reply.startswith(b"VALUE ", pos):
        end = reply.find(b"\r\n", pos)
        words = reply[pos:end if end >= 0 else len(reply)].split()
        try:
            length = int(words[3])
        except (IndexError, ValueError):
            break
        if length < 0:
            break
        hits += 1
        size += length
        if end < 0:
            break
        pos = end + 2 + length + 2
    return hits, size


def _raw_status(command: Any, result: Any) -> int:
    reply = _raw_reply(result)
    words = reply.split(None, 1)
    word = words[0] if words else b""
    name, _ = _raw_words(command)
    if name in _RAW_FETCH:
        return OK if word == b"VALUE" else NOT_FOUND
    return _REPLY_STATUS.get(word, OK)


def _raw_ok(command: Any, result: Any) -> int:
    """Count a raw command that got its reply as the command it is; its status."""
    status = _raw_status(command, result)
    name, words = _raw_words(command)
    if name in _RAW_FETCH:
        nkeys = len(_raw_keys(name, words))
        hits = _raw_values(_raw_reply(result))[0]
        _count(GET_HITS, hits)
        _count(GET_MISSES, nkeys - hits)
        if name in _RAW_TOUCHING:
            _count(CMD_TOUCH, nkeys)
    elif name in _RAW_STORE:
        _incr[CMD_SET]()
        if status == STORED:
            _incr[TOTAL_ITEMS]()
        if name == b"cas":
            if status == STORED:
                _incr[CAS_HITS]()
            elif status == EXISTS:
                _incr[CAS_BADVAL]()
            elif status == NOT_FOUND:
                _incr[CAS_MISSES]()
    elif name == b"delete":
        if status == DELETED:
            _incr[DELETE_HITS]()
        elif status == NOT_FOUND:
            _incr[DELETE_MISSES]()
    elif name == b"incr":
        _incr[INCR_MISSES if status == NOT_FOUND else INCR_HITS]()
    elif name == b"decr":
        _incr[DECR_MISSES if status == NOT_FOUND else DECR_HITS]()
    elif name == b"touch":
        _incr[CMD_TOUCH]()
    elif name == b"flush_all":
        _incr[CMD_FLUSH]()
    return status


def _raw_err(command: Any) -> None:
    """A raw command that failed: the command counters that count whatever the outcome."""
    name, words = _raw_words(command)
    if name in _RAW_STORE:
        _incr[CMD_SET]()
    elif name == b"touch":
        _incr[CMD_TOUCH]()
    elif name in _RAW_TOUCHING:
        _count(CMD_TOUCH, len(_raw_keys(name, words)))
    elif name == b"flush_all":
        _incr[CMD_FLUSH]()


def _raw_sizes(command: Any, result: Any) -> tuple[int, int]:
    """(read, written) value bytes of a raw command: the data blocks of a retrieval reply;
    the data block sent with a storage command (what its <bytes> field announces)."""
    name, words = _raw_words(command)
    if name in _RAW_FETCH:
        return _raw_values(_raw_reply(result))[1], 0
    if name in _RAW_STORE and isinstance(command, bytes):
        data = command.partition(b"\r\n")[2]
        try:
            return 0, max(0, min(int(words[4]), len(data)))
        except (IndexError, ValueError):
            return 0, len(data)
    return 0, 0


def _fetch_sizes(instance: Any, args: Any, kwargs: Any, result: Any) -> tuple[int, int]:
    if isinstance(result, dict) and _arg(args, kwargs, 0, "name") in _FETCH_KEYED:
        return _fetched_size(result, _arg(args, kwargs, 2, "expect_cas")), 0
    return 0, 0


def _store_sizes(instance: Any, args: Any, kwargs: Any, result: Any) -> tuple[int, int]:
    return 0, _stored_size(instance, _arg(args, kwargs, 1, "values", {}))


def _misc_sizes(instance: Any, args: Any, kwargs: Any, result: Any) -> tuple[int, int]:
    if _arg(args, kwargs, 3, "end_tokens"):  # raw_command: values are in the command/reply
        return _raw_sizes(_arg(args, kwargs, 1, "cmd_name"), result)
    return 0, 0


class _Kind:
    """ok/err count an outcome and return its status; describe gives (cmd, key, nkeys);
    sizes gives (read, written) value bytes for clients with the default serde, or always
    when the values do not go through the serde (``serde`` False: _misc_cmd)."""

    __slots__ = ("describe", "err", "ok", "serde", "sizes")

    def __init__(self, ok: Any, err: Any, describe: Any, sizes: Any, serde: bool) -> None:
        self.ok, self.err, self.describe, self.sizes = ok, err, describe, sizes
        self.serde = serde


_FETCH = _Kind(_fetch_ok, _fetch_err, _fetch_describe, _fetch_sizes, True)
_STORE = _Kind(_store_ok, _store_err, _store_describe, _store_sizes, True)
_MISC = _Kind(_misc_ok, _misc_err, _misc_describe, _misc_sizes, False)


def _moved(kind: _Kind, proxy: Any, instance: Any, args: Any, kwargs: Any,
           result: Any) -> tuple[int, int]:
    """(read, written) value bytes of the operation that just ran."""
    if kind.serde and (proxy.__class__ is _CountingSerde or proxy.__class__ is _NoTally):
        return int(proxy.read), int(proxy.written)
    read, written = kind.sizes(instance, args, kwargs, result)
    return int(read), int(written)


def _failed(kind: _Kind, instance: Any, args: Any, kwargs: Any, exc: BaseException) -> int:
    if isinstance(exc, MemcacheIllegalInputError):
        try:
            exc._sflow_seen = True  # the guards: already recorded
        except Exception:
            pass
    try:
        return int(kind.err(instance, args, kwargs, exc))
    except Exception:
        log.debug("sflow_app: memcache counting failed", exc_info=True)
        return ERROR


# ------------------------------------------------------------------------ sampled path


def _wire_key(instance: Any, key: Any, prefix: bytes) -> bytes:
    """The key as sent (prefix included); the raw bytes when pymemcache rejects it."""
    try:
        check = getattr(instance, "check_key", None)
        if check is None:  # HashClient
            return bytes(check_key_helper(key, getattr(instance, "allow_unicode_keys", False),
                                          prefix))
        return bytes(check(key, prefix))
    except Exception:
        if isinstance(key, str):
            key = key.encode("utf-8", "backslashreplace")
        elif not isinstance(key, bytes):
            key = str(key).encode("utf-8", "backslashreplace")
        return (prefix or b"") + bytes(key)


def _endpoint(instance: Any) -> Any:
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


def _emit(instance: Any, n: int, cmd: int, key: bytes, nkeys: int, status: int, ns: int,
          value_bytes: int, endpoint: Any) -> None:
    """Build and queue one sampled operation. Never raises into the application."""
    try:
        policy = getattr(instance, "_sflow_keys", None) or _class_policy
        op = MemcacheOperation(
            protocol=ASCII, cmd=cmd, key=policy.render(key), nkeys=min(nkeys, U32),
            value_bytes=min(max(value_bytes, 0), U32), uS=min(ns // 1000, U32),
            status=status,
        )
        if endpoint is None:
            endpoint = _endpoint(instance)
        if endpoint is None:
            endpoint = _configured_endpoint(instance)
        _source.submit(n, (op,) if endpoint is None or endpoint is False else (op, endpoint))
    except Exception:
        log.debug("sflow_app: could not record a memcache sample", exc_info=True)
        _source.drop()


def _sampled(kind: _Kind, call: Any, instance: Any, args: Any, kwargs: Any, n: int) -> Any:
    """A sampled round trip: ``call(*args, **kwargs)`` runs it (bound to ``instance``)."""
    try:
        proxy = _proxy(instance)
        proxy.read = proxy.written = 0
        endpoint = _endpoint(instance)
        connected = instance.__dict__.get("_sflow_endpoint")
    except Exception:
        proxy, endpoint, connected = _NoTally(), None, None
    start = perf_counter_ns()
    try:
        result = call(*args, **kwargs)
    except BaseException as exc:
        ns = perf_counter_ns() - start
        status = _failed(kind, instance, args, kwargs, exc)
        if endpoint is None:  # connected during the operation, closed by the error?
            latest = instance.__dict__.get("_sflow_endpoint")
            if latest is not None and latest is not connected:
                endpoint = latest[1]
        if isinstance(exc, MemcacheIllegalInputError):  # refused before sending
            proxy, ns = _NoTally(), 0  # no round trip: nothing was sent
        _finish(kind, instance, args, kwargs, n, status, ns, proxy, None, endpoint)
        raise
    ns = perf_counter_ns() - start
    try:
        status = kind.ok(instance, args, kwargs, result)
        read, written = _moved(kind, proxy, instance, args, kwargs, result)
        if read:
            _put((BYTES_READ, read))
        if written:
            _put((BYTES_WRITTEN, written))
    except Exception:
        log.debug("sflow_app: memcache counting failed", exc_info=True)
        status = UNKNOWN
    _finish(kind, instance, args, kwargs, n, status, ns, proxy, result, endpoint)
    return result


def _finish(kind: _Kind, instance: Any, args: Any, kwargs: Any, n: int, status: int, ns: int,
            proxy: Any, result: Any, endpoint: Any) -> None:
    try:
        cmd, key, nkeys = kind.describe(instance, args, kwargs)
        value_bytes = sum(_moved(kind, proxy, instance, args, kwargs, result))
    except Exception:
        log.debug("sflow_app: could not describe a memcache operation", exc_info=True)
        _source.drop()
        return
    _emit(instance, n, cmd, key, nkeys, status, ns, value_bytes, endpoint)


# ---------------------------------------------------------------------------- wrappers


# Two kinds of replacement (see "wrapt, and where not" in the module docstring):
#
# - _method: a plain function, for what runs on every operation -- the three round trips
#   with pymemcache 4's signatures (fixed parameters, no *args packing) and the guards of
#   per-operation commands. A wrapt FunctionWrapper costs about 0.85 us per call here
#   (binding a BoundFunctionWrapper, then the call), about an unsampled operation's whole
#   budget.
# - _wrapt_method: a wrapt FunctionWrapper, for what does not run per operation with
#   pymemcache 4 -- _connect (once per connection), the admin commands' guards and the
#   round trips of any other signature (another pymemcache version, a subclass): wrapt
#   binds whatever kind of callable the original is, and keeps its signature.
#
# Both keep __wrapped__ (and name, doc, signature) and remember their original so that
# _original() unwraps ours and only ours.

_NOKW: dict[str, Any] = {}


def _method(method: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    functools.update_wrapper(method, original)  # name, doc, __wrapped__
    method._sflow_original = original  # type: ignore[attr-defined]
    return method


def _wrapt_method(wrapper: Callable[[Any, Any, Any, Any], Any],
                  original: Callable[..., Any]) -> Callable[..., Any]:
    method = wrapt.FunctionWrapper(original, wrapper)
    # _self_ names live on the wrapper (wrapt forwards any other attribute to original).
    method._self_sflow_original = original  # type: ignore[attr-defined]
    return method


def _params(fn: Any) -> list[tuple[str, Any]] | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        return None
    return [(p.name, p.default) for p in params]


_EMPTY = inspect.Parameter.empty
FETCH_SIGNATURE = [("self", _EMPTY), ("name", _EMPTY), ("keys", _EMPTY),
                   ("expect_cas", _EMPTY), ("key_prefix", b"")]
STORE_SIGNATURE = [("self", _EMPTY), ("name", _EMPTY), ("values", _EMPTY), ("expire", _EMPTY),
                   ("noreply", _EMPTY), ("flags", None), ("cas", None)]
MISC_SIGNATURE = [("self", _EMPTY), ("cmds", _EMPTY), ("cmd_name", _EMPTY),
                  ("noreply", _EMPTY), ("end_tokens", None)]


def _fetch_method(original: Callable[..., Any]) -> Callable[..., Any]:
    if _params(original) != FETCH_SIGNATURE:
        return _generic_method(_FETCH, original)

    def _fetch_cmd(self: Any, name: Any, keys: Any, expect_cas: Any,
                   key_prefix: Any = b"") -> Any:
        n = _pool()
        if n >= _sampler.next_at and _due(n):
            return _sampled(_FETCH, MethodType(original, self), self,
                            (name, keys, expect_cas, key_prefix), _NOKW, n)
        try:
            proxy = self._sflow_serde
            if self.serde is not proxy:
                proxy = _attach(self)
        except AttributeError:
            proxy = _attach(self)
        counting = proxy.__class__ is _CountingSerde
        if counting:
            proxy.read = 0
        try:
            result = original(self, name, keys, expect_cas, key_prefix)
        except BaseException as exc:
            _failed(_FETCH, self, (name, keys, expect_cas, key_prefix), _NOKW, exc)
            raise
        try:
            if name == b"get" or name == b"gets":
                hits = len(result)
                if hits == 1:
                    _incr[GET_HITS]()
                elif hits:
                    _put((GET_HITS, hits))
                elif self.sock is None:
                    return result  # ignore_exc turned an error into an empty result
                misses = len(keys) - hits
                if misses == 1:
                    _incr[GET_MISSES]()
                elif misses > 0:
                    _put((GET_MISSES, misses))
                if hits:
                    if counting:
                        size = proxy.read
                    else:  # the default serde returned the values as received
                        size = 0
                        for value in result.values():
                            if expect_cas:
                                value = value[0]
                            if isinstance(value, bytes):
                                size += len(value)
                    if size:
                        _put((BYTES_READ, size))
        except Exception:
            log.debug("sflow_app: memcache counting failed", exc_info=True)
        return result

    return _method(_fetch_cmd, original)


def _store_method(original: Callable[..., Any]) -> Callable[..., Any]:
    if _params(original) != STORE_SIGNATURE:
        return _generic_method(_STORE, original)

    def _store_cmd(self: Any, name: Any, values: Any, expire: Any, noreply: Any,
                   flags: Any = None, cas: Any = None) -> Any:
        n = _pool()
        if n >= _sampler.next_at and _due(n):
            return _sampled(_STORE, MethodType(original, self), self,
                            (name, values, expire, noreply, flags, cas), _NOKW, n)
        try:
            proxy = self._sflow_serde
            if self.serde is not proxy:
                proxy = _attach(self)
        except AttributeError:
            proxy = _attach(self)
        counting = proxy.__class__ is _CountingSerde
        if counting:
            proxy.written = 0
        try:
            result = original(self, name, values, expire, noreply, flags, cas)
        except BaseException as exc:
            _failed(_STORE, self, (name, values, expire, noreply, flags, cas), _NOKW, exc)
            raise
        try:
            if len(result) == 1 and name != b"cas":
                _incr[CMD_SET]()
                if not noreply and True in result.values():
                    _incr[TOTAL_ITEMS]()
            else:
                _store_ok(self, (name, values, expire, noreply), _NOKW, result)
            if counting:
                size = proxy.written
            else:  # the default serde passed the values through
                size = 0
                for value in values.values():
                    size += (len(value) if isinstance(value, bytes)
                             else _value_size(value, self.encoding))
            if size:
                _put((BYTES_WRITTEN, size))
        except Exception:
            log.debug("sflow_app: memcache counting failed", exc_info=True)
        return result

    return _method(_store_cmd, original)


def _misc_method(original: Callable[..., Any]) -> Callable[..., Any]:
    if _params(original) != MISC_SIGNATURE:
        return _generic_method(_MISC, original)

    def _misc_cmd(self: Any, cmds: Any, cmd_name: Any, noreply: Any,
                  end_tokens: Any = None) -> Any:
        n = _pool()
        if n >= _sampler.next_at and _due(n):
            return _sampled(_MISC, MethodType(original, self), self,
                            (cmds, cmd_name, noreply, end_tokens), _NOKW, n)
        try:
            result = original(self, cmds, cmd_name, noreply, end_tokens)
        except BaseException as exc:
            _failed(_MISC, self, (cmds, cmd_name, noreply, end_tokens), _NOKW, exc)
            raise
        try:
            _misc_ok(self, (cmds, cmd_name, noreply, end_tokens), _NOKW, result)
            if end_tokens:  # raw_command: value bytes from its command line and reply
                read, written = _raw_sizes(cmd_name, result)
                if read:
                    _put((BYTES_READ, read))
                if written:
                    _put((BYTES_WRITTEN, written))
        except Exception:
            log.debug("sflow_app: memcache counting failed", exc_info=True)
        return result

    return _method(_misc_cmd, original)


def _generic_method(kind: _Kind, original: Callable[..., Any]) -> Callable[..., Any]:
    """Any other signature (another pymemcache version, a subclass): the same, as a wrapt
    FunctionWrapper (arguments as they come; ``_arg`` reads them by position or name)."""
    ok = kind.ok

    def method(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        n = _pool()
        if n >= _sampler.next_at and _due(n):
            return _sampled(kind, wrapped, instance, args, kwargs, n)
        proxy = _proxy(instance)
        proxy.read = proxy.written = 0
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            _failed(kind, instance, args, kwargs, exc)
            raise
        try:
            ok(instance, args, kwargs, result)
            read, written = _moved(kind, proxy, instance, args, kwargs, result)
            if read:
                _put((BYTES_READ, read))
            if written:
                _put((BYTES_WRITTEN, written))
        except Exception:
            log.debug("sflow_app: memcache counting failed", exc_info=True)
        return result

    return _wrapt_method(method, original)


# Commands refused before a round trip. A guard describes the refused operation as
# (cmd, counter slot or None, how many to count there, the keys asked for).
_Refusal = tuple[int, int | None, int, list[Any]]
_Describe = Callable[[Any, Any, Any], _Refusal]


def _client_refusal(cmd: int, slot: int | None, key_arg: tuple[int, str] | None = None,
                    multi: bool = False) -> _Describe:
    def describe(instance: Any, args: Any, kwargs: Any) -> _Refusal:
        keys: list[Any] = []
        if key_arg is not None:
            value = _arg(args, kwargs, key_arg[0], key_arg[1])
            keys = list(value) if multi else [value]
        return cmd, slot, 1, keys

    return describe


# Client's public commands that check their arguments before the round trip starts (the
# others check inside _fetch_cmd / _store_cmd, which record the refusal themselves).
_GUARDED: dict[str, _Describe] = {
    "delete": _client_refusal(_CMDS[b"delete"], None, (0, "key")),
    "delete_many": _client_refusal(_CMDS[b"delete"], None, (0, "keys"), True),
    "incr": _client_refusal(_CMDS[b"incr"], None, (0, "key")),
    "decr": _client_refusal(_CMDS[b"decr"], None, (0, "key")),
    "touch": _client_refusal(_CMDS[b"touch"], CMD_TOUCH, (0, "key")),
    "cas": _client_refusal(_CMDS[b"cas"], CMD_SET, (0, "key")),
    "flush_all": _client_refusal(_CMDS[b"flush_all"], CMD_FLUSH),
    "cache_memlimit": _client_refusal(OTHER, None),
}


# HashClient checks every key (check_key_helper in _get_client) before it chooses a
# server, so a refused key never reaches a Client: these record it, with no socket record.

def _hash_one_key(instance: Any, args: Any, kwargs: Any) -> _Refusal:
    """HashClient._run_cmd(cmd, key, default_val, ...): set, get, delete (and delete_many,
    key by key), incr, cas, touch, ..."""
    name = _arg(args, kwargs, 0, "cmd", "")
    wire = name.encode() if isinstance(name, str) else bytes(name)
    slot = CMD_SET if wire in _RAW_STORE else CMD_TOUCH if wire == b"touch" else None
    return _CMDS.get(wire, OTHER), slot, 1, [_arg(args, kwargs, 1, "key")]


def _hash_get_many(instance: Any, args: Any, kwargs: Any) -> _Refusal:
    gets = _arg(args, kwargs, 1, "gets", False)
    return _CMDS[b"gets" if gets else b"get"], None, 1, list(_arg(args, kwargs, 0, "keys", ()))


def _hash_gets_many(instance: Any, args: Any, kwargs: Any) -> _Refusal:
    return _CMDS[b"gets"], None, 1, list(_arg(args, kwargs, 0, "keys", ()))


def _hash_set_many(instance: Any, args: Any, kwargs: Any) -> _Refusal:
    keys = list(_arg(args, kwargs, 0, "values", None) or ())
    return _CMDS[b"set"], CMD_SET, len(keys), keys  # cmd_set: one per key, as Client's


_HASH_GUARDED: dict[str, _Describe] = {
    "_run_cmd": _hash_one_key, "get_many": _hash_get_many, "gets_many": _hash_gets_many,
    "set_many": _hash_set_many,
}


# Guarded commands that are not per-operation (admin): their guards are wrapt wrappers.
_ADMIN = frozenset({"flush_all", "cache_memlimit"})


def _guard_method(describe: _Describe, endpoint: Any, original: Callable[..., Any],
                  admin: bool = False) -> Callable[..., Any]:
    """``original`` recording the operations it refuses (MemcacheIllegalInputError) once:
    an exception already recorded further in (a Client under a HashClient, a round trip
    method) is marked ``_sflow_seen``. A plain function unless ``admin``."""
    if admin:
        def admin_guard(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            try:
                return wrapped(*args, **kwargs)
            except MemcacheIllegalInputError as exc:
                if not getattr(exc, "_sflow_seen", False):
                    exc._sflow_seen = True
                    _rejected(instance, describe, args, kwargs, endpoint)
                raise

        return _wrapt_method(admin_guard, original)

    def guard(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        except MemcacheIllegalInputError as exc:
            if not getattr(exc, "_sflow_seen", False):
                exc._sflow_seen = True
                _rejected(self, describe, args, kwargs, endpoint)
            raise

    return _method(guard, original)


def _rejected(instance: Any, describe: _Describe, args: Any, kwargs: Any,
              endpoint: Any) -> None:
    """An operation pymemcache refused before sending: CLIENT_ERROR, no round trip.
    ``endpoint``: None to name the client's server, False when no server was chosen."""
    try:
        n = _pool()
        cmd, slot, amount, keys = describe(instance, args, kwargs)
        if slot is not None:
            _count(slot, amount)
        if not (n >= _sampler.next_at and _due(n)):
            return
        key = b""
        if keys:
            key = _wire_key(instance, keys[0], getattr(instance, "key_prefix", b""))
        _emit(instance, n, cmd, key, len(keys), CLIENT_ERROR, 0, 0, endpoint)
    except Exception:
        log.debug("sflow_app: could not record a rejected memcache command", exc_info=True)


def _original(cls: type, name: str) -> Any:
    """What ``cls`` has under ``name``, with our replacements (only ours) unwrapped."""
    value = inspect.getattr_static(cls, name)
    while True:
        if isinstance(value, wrapt.FunctionWrapper):  # someone else's is kept as it is
            inner = getattr(value, "_self_sflow_original", None)
        else:
            inner = getattr(value, "_sflow_original", None)
        if inner is None:
            return value
        value = inner


_FACTORIES: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "_fetch_cmd": _fetch_method, "_store_cmd": _store_method, "_misc_cmd": _misc_method,
    "_connect": _connect_method,
}


def _methods_for(cls: type) -> dict[str, Any]:
    """name -> instrumented replacement of what ``cls`` (a Client or a HashClient) has under
    that name (aliases too)."""
    if issubclass(cls, HashClient):
        factories: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {}
        guarded, endpoint = _HASH_GUARDED, False  # refused before a server was chosen
    else:
        factories, guarded, endpoint = _FACTORIES, _GUARDED, None
    out = {name: factory(_original(cls, name)) for name, factory in factories.items()}
    functions = {}
    for name in dir(cls):
        if not name.startswith("__"):
            try:
                functions[name] = _original(cls, name)
            except AttributeError:
                continue
    for name, describe in guarded.items():
        fn = functions.get(name)
        if fn is None:
            continue
        for alias, other in functions.items():
            if other is fn:  # delete_multi = delete_many, bound at class creation
                out[alias] = _guard_method(describe, endpoint, fn, name in _ADMIN)
    return out


# ------------------------------------------------------------------------ public API

_lock = threading.RLock()
_class_policy = _KeyPolicy()
# (class, name) -> the class's own value before instrument(), for Client and HashClient
_installed: dict[tuple[type, str], Any] = {}
_subclasses: dict[tuple[type, _KeyPolicy], type] = {}


def instrument(*, keys: KeyMode = "plain", secret: bytes | str | None = None) -> None:
    """Instrument every pymemcache client of the process (class-level, idempotent).

    ``keys``: how sampled keys are reported -- ``"plain"`` (as sent), ``"hmac"``
    (HMAC-SHA256 with ``secret``, 32 hex digits) or ``"none"``.
    """
    global _class_policy
    policy = _policy(keys, secret)
    with _lock:
        if _installed:
            log.warning("sflow_app: pymemcache is already instrumented; "
                        "call uninstrument() first to change options")
            return
        _bind(AGENT.memcache_source())
        _class_policy = policy
        for cls in (Client, HashClient):
            for name, method in _methods_for(cls).items():
                _installed[(cls, name)] = cls.__dict__.get(name, _MISSING)
                setattr(cls, name, method)


_MISSING = object()


def uninstrument() -> None:
    """Undo ``instrument()`` (clients given to ``wrap()`` stay instrumented)."""
    with _lock:
        if not _installed:
            log.warning("sflow_app: pymemcache is not instrumented")
            return
        for (cls, name), original in _installed.items():
            if original is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, original)
        _installed.clear()
        _restore_serdes()


def _restore_serdes() -> None:
    """Give instances no longer instrumented their own serde back."""
    with _attach_lock:
        clients = list(_attached)
    for client in clients:
        if type(client).__dict__.get("_sflow_wrapped"):
            continue
        try:
            client.__dict__.pop("_sflow_endpoint", None)
            proxy = client.__dict__.pop("_sflow_serde", None)
            if isinstance(proxy, _CountingSerde) and client.__dict__.get("serde") is proxy:
                client.serde = proxy.inner
            with _attach_lock:
                _attached.discard(client)
        except Exception:
            pass


def wrap(client: AnyClient, *, keys: KeyMode = "plain",
         secret: bytes | str | None = None) -> AnyClient:
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
            "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__, "_sflow_wrapped": True, "_sflow_keys": policy,
            **_methods_for(cls),
        }
        sub = _subclasses[(cls, policy)] = type(cls.__name__, (cls,), namespace)
    return sub

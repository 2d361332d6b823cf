"""Outcomes of memcache operations, per command kind: the ``memcache_cmd`` and
``memcache_status`` each pymemcache round trip maps to, the counters its outcome counts,
and the value bytes it moved (``Kind``: ``FETCH``, ``STORE``, ``MISC``; ``raw_command``
read from its command line and reply).

Part of ``sflow_app.memcache`` (docs/memcache.md has the tables this implements).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheIllegalInputError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
)

from .._source import MEMCACHE_COUNTERS
from ..records import MemcacheCmd, MemcacheStatus
from ._data import (
    CountingSerde,
    NoTally,
    asked_hits,
    fetched_size,
    stored_size,
    unsendable,
    wire_key,
)
from ._state import STATE

log = logging.getLogger("sflow_app")

# -------------------------------------------------------------------- codes and slots

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
    b"set": MemcacheCmd.SET,
    b"add": MemcacheCmd.ADD,
    b"replace": MemcacheCmd.REPLACE,
    b"append": MemcacheCmd.APPEND,
    b"prepend": MemcacheCmd.PREPEND,
    b"cas": MemcacheCmd.CAS,
    b"get": MemcacheCmd.GET,
    b"gets": MemcacheCmd.GETS,
    b"gat": MemcacheCmd.GET,
    b"gats": MemcacheCmd.GETS,
    b"incr": MemcacheCmd.INCR,
    b"decr": MemcacheCmd.DECR,
    b"delete": MemcacheCmd.DELETE,
    b"stats": MemcacheCmd.STATS,
    b"flush_all": MemcacheCmd.FLUSH,
    b"version": MemcacheCmd.VERSION,
    b"quit": MemcacheCmd.QUIT,
    b"touch": MemcacheCmd.TOUCH,
}
_CMDS = {name: int(code) for name, code in _CMDS.items()}
_FETCH_KEYED = (b"get", b"gets")
_MISC_KEYED = frozenset({b"delete", b"incr", b"decr", b"touch"})
_ONE_KEY = frozenset(
    {
        b"set",
        b"add",
        b"replace",
        b"append",
        b"prepend",
        b"cas",
        b"delete",
        b"incr",
        b"decr",
        b"touch",
    }
)
# A raw_command reply's first word -> status.
_REPLY_STATUS = {
    b"STORED": STORED,
    b"NOT_STORED": NOT_STORED,
    b"EXISTS": EXISTS,
    b"NOT_FOUND": NOT_FOUND,
    b"DELETED": DELETED,
    b"TOUCHED": OK,
    b"OK": OK,
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


# ---------------------------------------------------------------------------- outcomes


def _arg(
    args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any = None
) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def tally(slot: int, amount: int) -> None:
    if amount == 1:
        next(STATE.cells[slot])
    elif amount > 0:
        STATE.put((slot, amount))


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
        keys = _arg(args, kwargs, 1, "keys", ())
        if hits and hits != len(keys):  # a miss, or a key asked twice
            hits = asked_hits(keys, result)
        tally(GET_HITS, hits)
        tally(GET_MISSES, len(keys) - hits)
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
    return cmd, wire_key(instance, keys[0], prefix) if keys else b"", len(keys)


def store_ok(instance: Any, args: Any, kwargs: Any, result: Any) -> int:
    name = args[0] if args else kwargs.get("name")
    tally(CMD_SET, len(result))
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
        tally(CAS_HITS, stored)
        tally(CAS_MISSES, missing)
        tally(CAS_BADVAL, badval)
    else:
        for outcome in result.values():
            if outcome:
                stored += 1
            elif status == STORED:
                status = NOT_STORED
    tally(TOTAL_ITEMS, stored)
    return status


def _store_err(instance: Any, args: Any, kwargs: Any, exc: BaseException) -> int:
    tally(CMD_SET, len(_arg(args, kwargs, 1, "values", ())))
    return _status_of(exc)


def _store_describe(instance: Any, args: Any, kwargs: Any) -> tuple[int, bytes, int]:
    values = _arg(args, kwargs, 1, "values", {})
    cmd = _CMDS.get(_arg(args, kwargs, 0, "name", b""), OTHER)
    key = b""
    for first in values:  # the first key, whatever it is (None too)
        key = wire_key(instance, first, instance.key_prefix)
        break
    return cmd, key, len(values)


def misc_ok(instance: Any, args: Any, kwargs: Any, result: Any) -> int:
    name = args[1] if len(args) > 1 else kwargs.get("cmd_name")
    if _arg(args, kwargs, 3, "end_tokens"):
        return _raw_ok(name, result)
    if name == b"touch":
        next(STATE.cells[CMD_TOUCH])
    elif name == b"flush_all":
        next(STATE.cells[CMD_FLUSH])
    if _arg(args, kwargs, 2, "noreply") or not result:
        return UNKNOWN
    first = result[0]
    if name == b"delete":
        hits = 0
        for line in result:
            if line == b"DELETED":
                hits += 1
        tally(DELETE_HITS, hits)
        tally(DELETE_MISSES, len(result) - hits)
        return DELETED if hits else NOT_FOUND
    if name == b"incr" or name == b"decr":
        found = first != b"NOT_FOUND"
        if name == b"incr":
            next(STATE.cells[INCR_HITS if found else INCR_MISSES])
        else:
            next(STATE.cells[DECR_HITS if found else DECR_MISSES])
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
        next(STATE.cells[CMD_TOUCH])
    elif name == b"flush_all":
        next(STATE.cells[CMD_FLUSH])
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
        words = reply[pos : end if end >= 0 else len(reply)].split()
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
        tally(GET_HITS, hits)
        tally(GET_MISSES, nkeys - hits)
        if name in _RAW_TOUCHING:
            tally(CMD_TOUCH, nkeys)
    elif name in _RAW_STORE:
        next(STATE.cells[CMD_SET])
        if status == STORED:
            next(STATE.cells[TOTAL_ITEMS])
        if name == b"cas":
            if status == STORED:
                next(STATE.cells[CAS_HITS])
            elif status == EXISTS:
                next(STATE.cells[CAS_BADVAL])
            elif status == NOT_FOUND:
                next(STATE.cells[CAS_MISSES])
    elif name == b"delete":
        if status == DELETED:
            next(STATE.cells[DELETE_HITS])
        elif status == NOT_FOUND:
            next(STATE.cells[DELETE_MISSES])
    elif name == b"incr":
        next(STATE.cells[INCR_MISSES if status == NOT_FOUND else INCR_HITS])
    elif name == b"decr":
        next(STATE.cells[DECR_MISSES if status == NOT_FOUND else DECR_HITS])
    elif name == b"touch":
        next(STATE.cells[CMD_TOUCH])
    elif name == b"flush_all":
        next(STATE.cells[CMD_FLUSH])
    return status


def _raw_err(command: Any) -> None:
    """A raw command that failed: the command counters that count whatever the outcome."""
    name, words = _raw_words(command)
    if name in _RAW_STORE:
        next(STATE.cells[CMD_SET])
    elif name == b"touch":
        next(STATE.cells[CMD_TOUCH])
    elif name in _RAW_TOUCHING:
        tally(CMD_TOUCH, len(_raw_keys(name, words)))
    elif name == b"flush_all":
        next(STATE.cells[CMD_FLUSH])


def raw_sizes(command: Any, result: Any) -> tuple[int, int]:
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
        keys = _arg(args, kwargs, 1, "keys", ())
        asked = keys if result and len(keys) != len(result) else None
        return fetched_size(result, _arg(args, kwargs, 2, "expect_cas"), asked), 0
    return 0, 0


def _store_sizes(instance: Any, args: Any, kwargs: Any, result: Any) -> tuple[int, int]:
    return 0, stored_size(instance, _arg(args, kwargs, 1, "values", {}))


def _misc_sizes(instance: Any, args: Any, kwargs: Any, result: Any) -> tuple[int, int]:
    if _arg(args, kwargs, 3, "end_tokens"):  # raw_command: values are in the command/reply
        return raw_sizes(_arg(args, kwargs, 1, "cmd_name"), result)
    return 0, 0


def _fetch_keys(instance: Any, args: Any, kwargs: Any) -> tuple[Any, bytes]:
    if _arg(args, kwargs, 0, "name") not in _FETCH_KEYED:
        return (), b""
    return _arg(args, kwargs, 1, "keys", ()), _arg(args, kwargs, 3, "key_prefix", b"")


def _store_keys(instance: Any, args: Any, kwargs: Any) -> tuple[Any, bytes]:
    return _arg(args, kwargs, 1, "values", {}), getattr(instance, "key_prefix", b"")


def _no_keys(instance: Any, args: Any, kwargs: Any) -> tuple[Any, bytes]:
    return (), b""  # _misc_cmd gets command lines: the keys in them were checked


def _store_idle(args: Any, kwargs: Any) -> bool:
    return not _arg(args, kwargs, 1, "values", None)


class Kind:
    """ok/err count an outcome and return its status; describe gives (cmd, key, nkeys);
    sizes gives (read, written) value bytes for clients with the default serde, or always
    when the values do not go through the serde (``serde`` False: _misc_cmd); idle (None
    for kinds where there is none) is true of a call that sends no command (set_many({})):
    no operation; keys gives (the keys the
    round trip checks, their prefix)."""

    __slots__ = ("describe", "err", "idle", "keys", "ok", "serde", "sizes")

    def __init__(
        self,
        ok: Any,
        err: Any,
        describe: Any,
        sizes: Any,
        serde: bool,
        keys: Any,
        idle: Any = None,
    ) -> None:
        self.ok, self.err, self.describe, self.sizes = ok, err, describe, sizes
        self.serde = serde
        self.keys = keys
        self.idle = idle


FETCH = Kind(_fetch_ok, _fetch_err, _fetch_describe, _fetch_sizes, True, _fetch_keys)
STORE = Kind(store_ok, _store_err, _store_describe, _store_sizes, True, _store_keys, _store_idle)
MISC = Kind(misc_ok, _misc_err, _misc_describe, _misc_sizes, False, _no_keys)


def moved(
    kind: Kind, proxy: Any, instance: Any, args: Any, kwargs: Any, result: Any
) -> tuple[int, int]:
    """(read, written) value bytes of the operation that just ran."""
    if kind.serde and (proxy.__class__ is CountingSerde or proxy.__class__ is NoTally):
        return int(proxy.read), int(proxy.written)
    read, written = kind.sizes(instance, args, kwargs, result)
    return int(read), int(written)


def failed(kind: Kind, instance: Any, args: Any, kwargs: Any, exc: BaseException) -> int:
    try:
        exc._sflow_seen = True  # type: ignore[attr-defined]  # the guards: recorded here
    except Exception:
        pass
    try:
        status = int(kind.err(instance, args, kwargs, exc))
        if isinstance(exc, TypeError) and unsendable(instance, *kind.keys(instance, args, kwargs)):
            exc._sflow_refused = True  # type: ignore[attr-defined]  # see refused()
            return CLIENT_ERROR
        return status
    except Exception:
        log.debug("sflow_app: memcache counting failed", exc_info=True)
        return ERROR


def refused(exc: BaseException) -> bool:
    """pymemcache refused the operation before sending anything: an illegal key or
    argument, or a key of no type it sends (``failed`` marked that TypeError)."""
    return isinstance(exc, MemcacheIllegalInputError) or getattr(exc, "_sflow_refused", False)


# ---------------------------------------------------------------------------- refusals

# Commands refused before a round trip. A guard describes the refused operation as
# (cmd, counter slot or None, how many to count there, the keys asked for).
_Refusal = tuple[int, int | None, int, list[Any]]
Describe = Callable[[Any, Any, Any], _Refusal]


def _client_refusal(
    cmd: int, slot: int | None, key_arg: tuple[int, str] | None = None, multi: bool = False
) -> Describe:
    def describe(instance: Any, args: Any, kwargs: Any) -> _Refusal:
        keys: list[Any] = []
        if key_arg is not None:
            value = _arg(args, kwargs, key_arg[0], key_arg[1])
            keys = list(value) if multi else [value]
        return cmd, slot, 1, keys

    return describe


# Client's public commands that check their arguments before the round trip starts (the
# others check inside _fetch_cmd / _store_cmd, which record the refusal themselves).
GUARDED: dict[str, Describe] = {
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


HASH_GUARDED: dict[str, Describe] = {
    "_run_cmd": _hash_one_key,
    "get_many": _hash_get_many,
    "gets_many": _hash_gets_many,
    "set_many": _hash_set_many,
}

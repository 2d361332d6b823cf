"""The replacements ``sflow_app.memcache`` installs on pymemcache's classes: the round trips
(``_fetch_cmd``, ``_store_cmd``, ``_misc_cmd``; the unsampled path is here), ``_connect``,
and the guards of commands pymemcache refuses before a round trip (``methods_for`` makes
them for a class). They count into ``STATE`` (``_state``).

Part of ``sflow_app.memcache`` (see docs/memcache.md, "Cost" and "wrapt, and where not").
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import weakref
from collections.abc import Callable
from types import FunctionType, MethodType
from typing import Any

import wrapt
from pymemcache.exceptions import (
    MemcacheError,
    MemcacheIllegalInputError,
)

from ._classes import HashClient
from ._data import (
    CountingSerde,
    asked_hits,
    attach,
    fetched_size,
    serde_proxy,
    unsendable,
    value_size,
    wire_key,
)
from ._outcomes import (
    BYTES_READ,
    BYTES_WRITTEN,
    CLIENT_ERROR,
    CMD_SET,
    ERROR,
    FETCH,
    GET_HITS,
    GET_MISSES,
    GUARDED,
    HASH_GUARDED,
    MISC,
    REJECTED_CONNECTIONS,
    STORE,
    TOTAL_CONNECTIONS,
    TOTAL_ITEMS,
    Describe,
    Kind,
    failed,
    misc_ok,
    moved,
    raw_sizes,
    store_ok,
    tally,
)
from ._record import connection_record, emit, sampled
from ._state import STATE

log = logging.getLogger("sflow_app")


# ------------------------------------------------------------------------- connections


def _connect_method(original: Callable[..., Any]) -> Callable[..., Any]:
    """Once per connection, so a wrapt FunctionWrapper."""

    def _connect(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            result = wrapped(*args, **kwargs)
        except BaseException:
            next(STATE.cells[REJECTED_CONNECTIONS])
            raise
        next(STATE.cells[TOTAL_CONNECTIONS])
        sock = getattr(instance, "sock", None)
        if sock is not None:
            try:
                # Counts the close however it happens: close(), an error, garbage collection.
                weakref.finalize(sock, STATE.closed.__next__)
                next(STATE.opened)
            except TypeError:  # a socket type without weak references: not tracked
                pass
            try:
                # Read the addresses now: an operation that connects and then fails (the
                # error closes the socket) still gets its socket record.
                connection_record(instance)
            except Exception:
                pass
        return result

    return _wrapt_method(_connect, original)


# ---------------------------------------------------------------------------- wrappers


# Two kinds of replacement (see "wrapt, and where not" in docs/memcache.md):
#
# - _method: a plain function, for what runs on every operation -- the three round trips
#   with pymemcache 4's signatures (fixed parameters, no *args packing) and the guards of
#   commands that check their arguments (including the admin ones: see below). A wrapt
#   FunctionWrapper costs about 1.2 us per call here (binding a BoundFunctionWrapper,
#   then the call; measured in docs/memcache.md), more than an unsampled operation's
#   whole budget.
# - _wrapt_method: a wrapt FunctionWrapper, for what does not run per operation with
#   pymemcache 4 -- _connect (once per connection) and the round trips of any other
#   signature (another pymemcache version, a subclass): wrapt binds whatever kind of
#   callable the original is, and keeps its signature.
#
# Both keep name, doc and signature and remember their original so that _original()
# unwraps ours and only ours. Replacements of public commands carry no __wrapped__:
# OpenTelemetry's pymemcache wrappers pass straight through a method that has one (taking
# it for their own), so with ours installed first its spans would go missing.

_NOKW: dict[str, Any] = {}


def _method(method: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    functools.update_wrapper(method, original)  # name, doc, __wrapped__
    method._sflow_original = original  # type: ignore[attr-defined]
    if not getattr(original, "__name__", "_").startswith("_"):
        with contextlib.suppress(TypeError, ValueError):
            method.__signature__ = inspect.signature(original)  # type: ignore[attr-defined]
        del method.__wrapped__  # type: ignore[attr-defined]
    return method


def _wrapt_method(
    wrapper: Callable[[Any, Any, Any, Any], Any], original: Callable[..., Any]
) -> Callable[..., Any]:
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
FETCH_SIGNATURE = [
    ("self", _EMPTY),
    ("name", _EMPTY),
    ("keys", _EMPTY),
    ("expect_cas", _EMPTY),
    ("key_prefix", b""),
]
STORE_SIGNATURE = [
    ("self", _EMPTY),
    ("name", _EMPTY),
    ("values", _EMPTY),
    ("expire", _EMPTY),
    ("noreply", _EMPTY),
    ("flags", None),
    ("cas", None),
]
MISC_SIGNATURE = [
    ("self", _EMPTY),
    ("cmds", _EMPTY),
    ("cmd_name", _EMPTY),
    ("noreply", _EMPTY),
    ("end_tokens", None),
]


def _fetch_method(original: Callable[..., Any]) -> Callable[..., Any]:
    if _params(original) != FETCH_SIGNATURE or type(original) is not FunctionType:
        return _generic_method(FETCH, original)  # wrapt binds what is not a function

    def _fetch_cmd(self: Any, name: Any, keys: Any, expect_cas: Any, key_prefix: Any = b"") -> Any:
        n = next(STATE.pool)
        if n >= STATE.sampler.next_at and (rate := STATE.due(n)):
            return sampled(
                FETCH,
                MethodType(original, self),
                self,
                (name, keys, expect_cas, key_prefix),
                _NOKW,
                (n, rate),
            )
        try:
            proxy = self._sflow_serde
            if self.serde is not proxy:
                proxy = attach(self)
        except AttributeError:
            proxy = attach(self)
        counting = proxy.__class__ is CountingSerde
        if counting:
            proxy.read = 0
        try:
            result = original(self, name, keys, expect_cas, key_prefix)
        except BaseException as exc:
            failed(FETCH, self, (name, keys, expect_cas, key_prefix), _NOKW, exc)
            raise
        try:
            if name == b"get" or name == b"gets":
                hits = len(result)
                asked = len(keys)
                if hits and hits != asked:  # a miss, or a key asked twice
                    hits = asked_hits(keys, result)
                if hits == 1:
                    next(STATE.cells[GET_HITS])
                elif hits:
                    STATE.put((GET_HITS, hits))
                elif self.sock is None:
                    return result  # ignore_exc turned an error into an empty result
                misses = asked - hits
                if misses == 1:
                    next(STATE.cells[GET_MISSES])
                elif misses > 0:
                    STATE.put((GET_MISSES, misses))
                if hits:
                    if counting:
                        size = proxy.read
                    elif hits == len(result):  # the default serde: values as received
                        size = 0
                        for value in result.values():
                            if expect_cas:
                                value = value[0]
                            if isinstance(value, bytes):
                                size += len(value)
                    else:  # a key asked twice was received twice
                        size = fetched_size(result, expect_cas, keys)
                    if size:
                        put = STATE.put
                        put((BYTES_READ, size))
        except Exception:
            log.debug("sflow_app: memcache counting failed", exc_info=True)
        return result

    return _method(_fetch_cmd, original)


def _store_method(original: Callable[..., Any]) -> Callable[..., Any]:
    if _params(original) != STORE_SIGNATURE or type(original) is not FunctionType:
        return _generic_method(STORE, original)  # wrapt binds what is not a function

    def _store_cmd(
        self: Any,
        name: Any,
        values: Any,
        expire: Any,
        noreply: Any,
        flags: Any = None,
        cas: Any = None,
    ) -> Any:
        if not values:  # set_many({}): nothing is sent, so no operation (as get_many([]))
            return original(self, name, values, expire, noreply, flags, cas)
        n = next(STATE.pool)
        if n >= STATE.sampler.next_at and (rate := STATE.due(n)):
            return sampled(
                STORE,
                MethodType(original, self),
                self,
                (name, values, expire, noreply, flags, cas),
                _NOKW,
                (n, rate),
            )
        try:
            proxy = self._sflow_serde
            if self.serde is not proxy:
                proxy = attach(self)
        except AttributeError:
            proxy = attach(self)
        counting = proxy.__class__ is CountingSerde
        if counting:
            proxy.written = 0
        try:
            result = original(self, name, values, expire, noreply, flags, cas)
        except BaseException as exc:
            failed(STORE, self, (name, values, expire, noreply, flags, cas), _NOKW, exc)
            raise
        try:
            if len(result) == 1 and name != b"cas":
                next(STATE.cells[CMD_SET])
                if not noreply and True in result.values():
                    next(STATE.cells[TOTAL_ITEMS])
            else:
                store_ok(self, (name, values, expire, noreply), _NOKW, result)
            if counting:
                size = proxy.written
            else:  # the default serde passed the values through
                size = 0
                for value in values.values():
                    size += (
                        len(value) if isinstance(value, bytes) else value_size(value, self.encoding)
                    )
            if size:
                put = STATE.put
                put((BYTES_WRITTEN, size))
        except Exception:
            log.debug("sflow_app: memcache counting failed", exc_info=True)
        return result

    return _method(_store_cmd, original)


def _misc_method(original: Callable[..., Any]) -> Callable[..., Any]:
    if _params(original) != MISC_SIGNATURE or type(original) is not FunctionType:
        return _generic_method(MISC, original)  # wrapt binds what is not a function

    def _misc_cmd(self: Any, cmds: Any, cmd_name: Any, noreply: Any, end_tokens: Any = None) -> Any:
        n = next(STATE.pool)
        if n >= STATE.sampler.next_at and (rate := STATE.due(n)):
            return sampled(
                MISC,
                MethodType(original, self),
                self,
                (cmds, cmd_name, noreply, end_tokens),
                _NOKW,
                (n, rate),
            )
        try:
            result = original(self, cmds, cmd_name, noreply, end_tokens)
        except BaseException as exc:
            failed(MISC, self, (cmds, cmd_name, noreply, end_tokens), _NOKW, exc)
            raise
        try:
            misc_ok(self, (cmds, cmd_name, noreply, end_tokens), _NOKW, result)
            if end_tokens:  # raw_command: value bytes from its command line and reply
                read, written = raw_sizes(cmd_name, result)
                if read:
                    STATE.put((BYTES_READ, read))
                if written:
                    STATE.put((BYTES_WRITTEN, written))
        except Exception:
            log.debug("sflow_app: memcache counting failed", exc_info=True)
        return result

    return _method(_misc_cmd, original)


def _generic_method(kind: Kind, original: Callable[..., Any]) -> Callable[..., Any]:
    """Any other signature (another pymemcache version, a subclass): the same, as a wrapt
    FunctionWrapper (arguments as they come; ``_arg`` reads them by position or name)."""
    ok, idle = kind.ok, kind.idle

    def method(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if idle is not None and idle(args, kwargs):
            return wrapped(*args, **kwargs)
        n = next(STATE.pool)
        if n >= STATE.sampler.next_at and (rate := STATE.due(n)):
            return sampled(kind, wrapped, instance, args, kwargs, (n, rate))
        proxy = serde_proxy(instance)
        proxy.read = proxy.written = 0
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            failed(kind, instance, args, kwargs, exc)
            raise
        try:
            ok(instance, args, kwargs, result)
            read, written = moved(kind, proxy, instance, args, kwargs, result)
            if read:
                STATE.put((BYTES_READ, read))
            if written:
                STATE.put((BYTES_WRITTEN, written))
        except Exception:
            log.debug("sflow_app: memcache counting failed", exc_info=True)
        return result

    return _wrapt_method(method, original)


def _guard_method(
    describe: Describe, endpoint: Any, original: Callable[..., Any], live: Any = None
) -> Callable[..., Any]:
    """``original`` recording the operations it refuses (MemcacheIllegalInputError) once:
    an exception already recorded further in (a Client under a HashClient, a round trip
    method) is marked ``_sflow_seen``. ``live``: (class, name) whose method to call as it
    is at each call rather than ``original`` (see ``_current``)."""
    # A HashClient's also fails when no server is left ("All servers seem to be down"); a
    # key of no type pymemcache sends fails its key check with a TypeError.
    errors = (MemcacheError if endpoint is False else MemcacheIllegalInputError, TypeError)

    def refused(self: Any, exc: Any, args: Any, kwargs: Any) -> None:
        if getattr(exc, "_sflow_seen", False):
            return
        exc._sflow_seen = True
        if isinstance(exc, TypeError) and not _key_type_refused(
            self, describe, original, args, kwargs
        ):
            return
        refusal = isinstance(exc, (MemcacheIllegalInputError, TypeError))
        _rejected(self, describe, args, kwargs, endpoint, CLIENT_ERROR if refusal else ERROR)

    if live is None:
        call = original if type(original) is FunctionType else _bound_call(original)

        def guard(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return call(self, *args, **kwargs)
            except errors as exc:
                refused(self, exc, args, kwargs)
                raise

        return _method(guard, original)

    cls, name = live
    current = _current(cls, name, original)

    def live_guard(self: Any, *args: Any, **kwargs: Any) -> Any:
        method = getattr(cls, name, original)  # type attribute cache: +50 ns a call, measured
        try:
            if type(method) is FunctionType:  # a function, as the class holds it
                return method(self, *args, **kwargs)
            # Another kind (a wrapt wrapper): what the class holds, bound to the client.
            return current().__get__(self, type(self))(*args, **kwargs)
        except errors as exc:
            refused(self, exc, args, kwargs)
            raise

    return _method(live_guard, original)


def _key_type_refused(
    instance: Any, describe: Describe, original: Any, args: Any, kwargs: Any
) -> bool:
    """A guarded command's TypeError came from its key check (a key of no type pymemcache
    sends), not from a wrong call (``delete()``), which is no operation."""
    try:
        inspect.signature(original).bind(instance, *args, **kwargs)
        keys = describe(instance, args, kwargs)[3]
        return unsendable(instance, keys, getattr(instance, "key_prefix", b""))
    except Exception:
        return False


def _bound_call(original: Any) -> Callable[..., Any]:
    """``original`` (another library's wrapper, say OpenTelemetry's wrapt one) called as a
    method of the instance: given it as an argument instead, a wrapt wrapper sees none."""

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original.__get__(self, type(self))(*args, **kwargs)

    return call


def _current(cls: type, name: str, original: Any) -> Callable[[], Any]:
    """What ``cls`` inherits under ``name`` now (``original`` if it is gone). wrap()'s
    subclass overrides the class's public commands, yet a library that wraps one after
    wrap() (OpenTelemetry) must still see the wrapped clients' calls, and one that removes
    its wrapper must no longer be called: the guards look the method up at each call."""
    namespaces = [vars(klass) for klass in cls.__mro__]  # live views

    def current() -> Any:
        for namespace in namespaces:
            method = namespace.get(name)
            if method is not None:
                return method
        return original

    return current


def _rejected(
    instance: Any,
    describe: Describe,
    args: Any,
    kwargs: Any,
    endpoint: Any,
    status: int = CLIENT_ERROR,
) -> None:
    """An operation pymemcache refused before sending (CLIENT_ERROR), or could send to no
    server (ERROR): no round trip. ``endpoint``: None to name the client's server, False
    when no server was chosen."""
    try:
        n = next(STATE.pool)
        cmd, slot, amount, keys = describe(instance, args, kwargs)
        if slot is not None:
            tally(slot, amount)
        if not (n >= STATE.sampler.next_at and (rate := STATE.due(n))):
            return
        key = b""
        if keys:
            key = wire_key(instance, keys[0], getattr(instance, "key_prefix", b""))
        emit(instance, (n, rate), cmd, key, len(keys), status, 0, 0, endpoint)
    except Exception:
        log.debug("sflow_app: could not record a rejected memcache command", exc_info=True)


def _original(cls: type, name: str, through: bool = False) -> Any:
    """What ``cls`` has under ``name``, with our replacements unwrapped; ``through``:
    other libraries' wrapt wrappers in ``cls``'s own namespace too (else kept as they are)."""
    through = through and name in cls.__dict__
    value = inspect.getattr_static(cls, name)
    while True:
        if isinstance(value, wrapt.FunctionWrapper):
            inner = getattr(value, "_self_sflow_original", None)
            if inner is None and through:
                inner = value.__wrapped__
        else:
            inner = getattr(value, "_sflow_original", None)
        if inner is None:
            return value
        value = inner


_FACTORIES: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "_fetch_cmd": _fetch_method,
    "_store_cmd": _store_method,
    "_misc_cmd": _misc_method,
    "_connect": _connect_method,
}


def methods_for(
    cls: type,
    through: bool = False,
    live: bool = False,
    counted: tuple[type, ...] = (),
) -> dict[str, Any]:
    """name -> instrumented replacement of what ``cls`` (a Client or a HashClient) has under
    that name (aliases too); ``through``: of what other libraries' wrapt wrappers wrap;
    ``live``: for a subclass of ``cls``, whose public commands call ``cls``'s as they are
    when called (another library may wrap them later); ``counted``: wrap()'s subclasses,
    whose own round trips count theirs."""
    if issubclass(cls, HashClient):
        factories: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {}
        guarded, endpoint = HASH_GUARDED, False  # refused before a server was chosen
    else:
        factories, guarded, endpoint = _FACTORIES, GUARDED, None
    out = {}
    for name, factory in factories.items():
        original = _original(cls, name, through)
        out[name] = factory(original)
        overriding = frozenset(sub for sub in counted if _overrides(sub, cls, name))
        if overriding:
            out[name] = _passing(out[name], original, overriding)
    functions = {}
    for name in dir(cls):
        if not name.startswith("__"):
            try:
                functions[name] = _original(cls, name, through)
            except AttributeError:
                continue
    for name, describe in guarded.items():
        fn = functions.get(name)
        if fn is None:
            continue
        core = _innermost(fn)
        for alias, other in functions.items():
            # delete_multi = delete_many, bound at class creation; another library may
            # have wrapped one name and not the other (OpenTelemetry: delete_many only).
            if other is fn or _innermost(other) is core:
                where = (cls, alias) if live else None
                out[alias] = _guard_method(describe, endpoint, other, where)
    return out


def _overrides(sub: type, cls: type, name: str) -> bool:
    """A class between wrap()'s subclass ``sub`` and ``cls`` defines ``name``: its method
    may call ``cls``'s (super()), which ``sub``'s replacement already counted."""
    if not issubclass(sub, cls):
        return False
    mro = sub.__mro__
    return any(name in vars(klass) for klass in mro[1 : mro.index(cls)])


def _passing(method: Any, original: Any, counted: frozenset[type]) -> Callable[..., Any]:
    """``method`` (instrument()'s), except for the instances of ``counted`` (wrap()'s
    subclasses that override it): their own replacement counted the operation already.
    Installed only when such a subclass exists, so instrument()'s path is as it was."""

    def passing(self: Any, *args: Any, **kwargs: Any) -> Any:
        use = original if self.__class__ in counted else method
        if type(use) is FunctionType:
            return use(self, *args, **kwargs)
        return use.__get__(self, type(self))(*args, **kwargs)

    return _method(passing, original)


def _innermost(fn: Any) -> Any:
    """What ``fn`` wraps, through other libraries' wrappers (``__wrapped__``)."""
    for _ in range(16):
        inner = getattr(fn, "__wrapped__", None)
        if inner is None:
            break
        fn = inner
    return fn

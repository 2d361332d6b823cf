"""sFlow for pymemcache: ``memcache_operation`` samples and client-side memcache counters.

Memcached's own sFlow agent shows the server's view; this shows what the application asked
of its caches -- hot keys, missed keys, slow operations -- per client::

    import sflow_app.memcache

    sflow_app.memcache.instrument()            # every pymemcache client in the process
    sflow_app.memcache.wrap(client)            # or a single Client / PooledClient /
                                               # HashClient / RetryingClient instance

``uninstrument()`` undoes ``instrument()``. Importing ``sflow_app`` never imports
pymemcache; this package needs the ``memcache`` extra. What is replaced on pymemcache's
classes, the records and counters each command gives, and the cost (with its
measurements) are in docs/memcache.md.

The package, by concern (this module is the public surface and the install):
  _classes   pymemcache's client classes, even where a tracer replaced them
  _state     the one owner of the mutable state: the bound data source (only
             ``STATE.bind()`` changes it), instrument()'s key policy, open connections
  _data      key policy, the key as sent, value bytes (default serde or a counting serde
             attached per client)
  _outcomes  per command kind: memcache_cmd, status and counters of an outcome
  _record    the sampled path: timing, describing, queueing one flow sample
  _methods   the replacements installed on pymemcache's classes (the unsampled path)
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal, TypeVar

import wrapt

try:
    import pymemcache  # noqa: F401  # pymemcache ships no type information
except ImportError as exc:  # pragma: no cover - the "memcache" extra installs it
    raise ImportError(
        "sflow_app.memcache needs pymemcache: pip install 'sflow-app[memcache]'"
    ) from exc

from .._agent import AGENT
from ._classes import Client, HashClient, PooledClient, RetryingClient
from ._data import KeyPolicy, key_policy, restore_serdes
from ._methods import methods_for
from ._state import STATE

__all__ = ["KeyMode", "instrument", "uninstrument", "wrap"]

log = logging.getLogger("sflow_app")

KeyMode = Literal["plain", "hmac", "none"]
AnyClient = TypeVar("AnyClient")


_lock = threading.RLock()
# (class, name) -> (the class's own value before instrument(), what it installed there),
# for Client and HashClient
_installed: dict[tuple[type, str], tuple[Any, Any]] = {}
_subclasses: dict[tuple[type, KeyPolicy], type] = {}


def instrument(*, keys: KeyMode = "plain", secret: bytes | str | None = None) -> None:
    """Instrument every pymemcache client of the process (class-level, idempotent).

    ``keys``: how sampled keys are reported -- ``"plain"`` (as sent), ``"hmac"``
    (HMAC-SHA256 with ``secret``, 32 hex digits) or ``"none"``.
    """
    policy = key_policy(keys, secret)
    with _lock:
        if _installed:
            log.warning(
                "sflow_app: pymemcache is already instrumented; "
                "call uninstrument() first to change options"
            )
            return
        STATE.bind(AGENT.memcache_source(), class_policy=policy)
        wrapped = tuple(_subclasses.values())  # wrap() before: they count their own
        for cls in (Client, HashClient):
            for name, method in methods_for(cls, through=True, counted=wrapped).items():
                current = cls.__dict__.get(name, _MISSING)
                proxy = _deepest_proxy(current)
                if proxy is None:
                    _installed[(cls, name)] = (current, method)
                    setattr(cls, name, method)
                else:  # under another library's wrapt wrapper: its owner can still remove it
                    _installed[(cls, name)] = (proxy.__wrapped__, method)
                    proxy.__wrapped__ = method


_MISSING = object()


def _deepest_proxy(value: Any) -> Any:
    """The innermost of the wrapt wrappers ``value`` is (OpenTelemetry's, say), or None."""
    if not isinstance(value, wrapt.FunctionWrapper):
        return None
    while isinstance(value.__wrapped__, wrapt.FunctionWrapper):
        value = value.__wrapped__
    return value


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
        restore_serdes()


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
    policy = key_policy(keys, secret)
    with _lock:
        STATE.bind(AGENT.memcache_source())
        if _installed:
            log.warning("sflow_app: pymemcache is instrumented class-wide; wrap() is a no-op")
            return client
        if not _wrap(client, policy):
            log.warning("sflow_app: %r is already instrumented", client)
    return client


def _wrap(client: Any, policy: KeyPolicy) -> bool:
    """True when something was newly instrumented."""
    if isinstance(client, _PROXY):  # a tracer's proxy (ddtrace's): the client it wraps
        proxy: Any = client
        return _wrap(proxy.__wrapped__, policy)
    if isinstance(client, RetryingClient):
        return _wrap(client._client, policy)
    if isinstance(client, (HashClient, PooledClient)):
        new = False
        if isinstance(client, HashClient) and not type(client).__dict__.get("_sflow_wrapped"):
            client.__class__ = _subclass(type(client), policy)  # the keys it refuses itself
            new = True
        cls = client.client_class
        if not issubclass(cls, _PROXY):  # ddtrace's proxy class is left (docs/memcache.md)
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


def _subclass(cls: type, policy: KeyPolicy) -> type:
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
            **methods_for(cls, live=True),
        }
        sub = _subclasses[(cls, policy)] = type(cls.__name__, (cls,), namespace)
    return sub

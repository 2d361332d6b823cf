"""Keys and values of a memcache operation: how keys are reported (the key policy), the key
as sent, and the value bytes an operation moved (read off the values with pymemcache's
default serde, else tallied by a counting serde attached to the client).

Part of ``sflow_app.memcache`` (see docs/memcache.md); nothing here reads the bound source.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from pymemcache.client.base import check_key_helper
from pymemcache.serde import LegacyWrappingSerde

log = logging.getLogger("sflow_app")


# ------------------------------------------------------------------------- key policy


@dataclass(frozen=True)
class KeyPolicy:
    mode: str = "plain"
    secret: bytes = b""

    def render(self, key: bytes) -> bytes:
        if self.mode == "plain" or not key:
            return key
        if self.mode == "none":
            return b""
        return hmac.new(self.secret, key, hashlib.sha256).hexdigest()[:32].encode()


def key_policy(keys: str, secret: bytes | str | None) -> KeyPolicy:
    if keys not in ("plain", "hmac", "none"):
        raise ValueError(f"keys must be 'plain', 'hmac' or 'none', not {keys!r}")
    if keys != "hmac":
        return KeyPolicy(keys)
    if not secret:
        raise ValueError("keys='hmac' needs a secret")
    return KeyPolicy("hmac", secret.encode() if isinstance(secret, str) else bytes(secret))


# -------------------------------------------------------------------------- wire keys


def _checked(instance: Any, key: Any, prefix: bytes) -> bytes:
    """pymemcache's key check of ``key``: the key as sent, or its exception."""
    check = getattr(instance, "check_key", None)
    if check is None:  # HashClient
        return bytes(check_key_helper(key, getattr(instance, "allow_unicode_keys", False), prefix))
    return bytes(check(key, prefix))


def wire_key(instance: Any, key: Any, prefix: bytes) -> bytes:
    """The key as sent (prefix included); the raw bytes (str(key) encoded, for a key of
    another type) when pymemcache rejects it."""
    try:
        return _checked(instance, key, prefix)
    except Exception:
        if isinstance(key, str):
            key = key.encode("utf-8", "backslashreplace")
        elif not isinstance(key, bytes):
            key = str(key).encode("utf-8", "backslashreplace")
        return (prefix or b"") + bytes(key)


def unsendable(instance: Any, keys: Any, prefix: bytes) -> bool:
    """Some key is of no type pymemcache sends (str and bytes are; an int, None are not):
    its key check raised a TypeError before anything was sent, a refusal."""
    for key in keys:
        try:
            _checked(instance, key, prefix)
        except TypeError:
            return True
        except Exception:
            continue
    return False


# ------------------------------------------------------------------- value bytes
# With pymemcache's default serde (values pass through; non-bytes are sent as str(value)
# encoded) the sizes are read off the values and results. Any other serde is wrapped, per
# client, in a proxy that tallies the serialized sizes of the current operation (a Client
# serves one thread at a time, so no lock). Either way the wrapper adds the operation's
# bytes to bytes_read / bytes_written once.


class CountingSerde:
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
            self.written += (
                len(data) if isinstance(data, bytes) else len(str(data).encode(self._encoding))
            )
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


class NoTally:
    """Stands in when a client's serde cannot be proxied (no ``serde`` attribute)."""

    read = written = 0


def _is_default_serde(serde: Any) -> bool:
    if type(serde) is not LegacyWrappingSerde:
        return False
    ser, de = serde.__dict__.get("serialize"), serde.__dict__.get("deserialize")
    return (
        getattr(ser, "__func__", None) is LegacyWrappingSerde._default_serialize
        and getattr(de, "__func__", None) is LegacyWrappingSerde._default_deserialize
    )


_attached: weakref.WeakSet[Any] = weakref.WeakSet()  # clients marked by attach
_attach_lock = threading.Lock()


def attach(client: Any) -> Any:
    """First use of ``client`` (or it replaced its serde): its own serde when it is the
    default one, else a counting proxy installed in its place."""
    try:
        serde = client.serde
        if isinstance(serde, CountingSerde):  # copied from another client
            serde = serde.inner
        if not _is_default_serde(serde):
            serde = CountingSerde(serde, getattr(client, "encoding", None) or "ascii")
        client.serde = serde
        client._sflow_serde = serde
        with _attach_lock:
            _attached.add(client)
    except Exception:
        log.debug("sflow_app: cannot count value bytes for %r", client, exc_info=True)
        return NoTally()
    return serde


def serde_proxy(instance: Any) -> Any:
    try:
        proxy = instance._sflow_serde
        if instance.serde is not proxy:
            proxy = attach(instance)
    except AttributeError:
        proxy = attach(instance)
    return proxy


def value_size(value: Any, encoding: str) -> int:
    """What Client._store_cmd sends for a value the default serde passed through."""
    if isinstance(value, bytes):
        return len(value)
    try:
        return len(str(value).encode(encoding))
    except Exception:
        return 0


def _twin(key: Any) -> Any:
    """The other spelling of ``key`` that is the same key on the wire: b"a" for "a", "a"
    for b"a" (None when there is none)."""
    try:
        if isinstance(key, str):
            return key.encode()
        if isinstance(key, bytes | memoryview):
            return bytes(key).decode()
    except UnicodeError:
        pass
    return None


def asked_hits(keys: Any, result: Any) -> int:
    """Hits of a get/gets, per key asked: the server answers a key asked twice twice, while
    pymemcache's result holds it once -- also when the two are spelled differently (``"a"``
    and ``b"a"``: the result holds one of them)."""
    hits = 0
    for key in keys:
        if key in result:
            hits += 1
        elif key.__class__ is str:  # most keys are: inlined (about 60 ns a miss)
            if key.encode("utf-8", "replace") in result:
                hits += 1
        elif _twin(key) in result:
            hits += 1
    return hits


def fetched_size(result: Any, expect_cas: Any, keys: Any = None) -> int:
    """Value bytes of a get/gets result, when the default serde returned them as sent;
    ``keys``: per key asked (some asked more than once, see ``asked_hits``), else per
    value."""
    size = 0
    if keys is None:
        values = result.values()
    else:
        values = (result[k] if k in result else result.get(_twin(k)) for k in keys)
    for value in values:
        if expect_cas and value is not None:
            value = value[0]
        if isinstance(value, bytes):
            size += len(value)
    return size


def stored_size(instance: Any, values: Any) -> int:
    size = 0
    for value in values.values():
        if isinstance(value, bytes):
            size += len(value)
        else:
            size += value_size(value, getattr(instance, "encoding", None) or "ascii")
    return size


def restore_serdes() -> None:
    """Give instances no longer instrumented their own serde back."""
    with _attach_lock:
        clients = list(_attached)
    for client in clients:
        if type(client).__dict__.get("_sflow_wrapped"):
            continue
        try:
            client.__dict__.pop("_sflow_endpoint", None)
            proxy = client.__dict__.pop("_sflow_serde", None)
            if isinstance(proxy, CountingSerde) and client.__dict__.get("serde") is proxy:
                client.serde = proxy.inner
            with _attach_lock:
                _attached.discard(client)
        except Exception:
            pass

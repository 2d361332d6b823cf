"""The sFlow v5 structures this agent emits or decodes, as frozen dataclasses.

Field names and order follow the wire layout (and ``shared/vectors/README.md``), so each
class can be checked against the spec line by line. ``LAYOUT`` gives one character per
field: ``I`` u32, ``Q`` u64 (hyper), ``s`` XDR string, ``4``/``6`` raw IPv4/IPv6 address
(held as text). String fields take ``str`` (encoded as UTF-8) or ``bytes`` (raw), equal
when their bytes are; the encoder cuts them to ``MAX_BYTES`` without splitting a UTF-8
character. Enum fields are plain ints so that values outside the enums pass through
unchanged.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from operator import attrgetter
from typing import Any, ClassVar, Protocol

from ._xdr import to_bytes

__all__ = [
    "DS_CLASS_LOGICAL",
    "INTERNAL",
    "RECORD_TYPES",
    "AppInitiator",
    "AppOperation",
    "AppOperations",
    "AppParentContext",
    "AppResources",
    "AppStatus",
    "AppTarget",
    "AppWorkers",
    "CountersSample",
    "Datagram",
    "ExtendedProxyRequest",
    "ExtendedSocketIPv4",
    "ExtendedSocketIPv6",
    "FlowSample",
    "HostParent",
    "HttpCounters",
    "HttpMethod",
    "HttpRequest",
    "MemcacheCmd",
    "MemcacheCounters",
    "MemcacheOperation",
    "MemcacheProtocol",
    "MemcacheStatus",
    "OpaqueRecord",
    "OpaqueSample",
    "Record",
    "Text",
    "socket_record",
]

Text = str | bytes

INTERNAL = 0x3FFFFFFF  # interface value meaning "this agent itself" (format 0)
DS_CLASS_LOGICAL = 3  # ds_class of applications, containers, VMs


# Every enum counts up from 0, so the functional form lists the names in value order.
HttpMethod = IntEnum("HttpMethod", "OTHER OPTIONS GET HEAD POST PUT DELETE TRACE CONNECT", start=0)
MemcacheProtocol = IntEnum("MemcacheProtocol", "OTHER ASCII BINARY", start=0)
MemcacheCmd = IntEnum(
    "MemcacheCmd",
    "OTHER SET ADD REPLACE APPEND PREPEND CAS GET GETS INCR DECR DELETE STATS FLUSH VERSION"
    " QUIT TOUCH",
    start=0,
)
MemcacheStatus = IntEnum(
    "MemcacheStatus",
    "UNKNOWN OK ERROR CLIENT_ERROR SERVER_ERROR STORED NOT_STORED EXISTS NOT_FOUND DELETED",
    start=0,
)
AppStatus = IntEnum(
    "AppStatus",
    "SUCCESS OTHER TIMEOUT INTERNAL_ERROR BAD_REQUEST FORBIDDEN TOO_LARGE NOT_IMPLEMENTED"
    " NOT_FOUND UNAVAILABLE UNAUTHORIZED",
    start=0,
)


class Record(Protocol):
    """What every record class in ``RECORD_TYPES`` has: its wire identity and layout (the
    encoder and the decoder are built from these)."""

    FORMAT: ClassVar[int]  # data_format (enterprise 0)
    KIND: ClassVar[str]  # "flow" or "counter"
    NAME: ClassVar[str]  # sflowtool's name for it
    LAYOUT: ClassVar[str]  # one character per field (see the module's docstring)
    MAX_BYTES: ClassVar[dict[str, int]]  # string fields' limits
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # in wire order


def _as_sent(values: tuple[Any, ...]) -> tuple[Any, ...]:
    # A string field is its wire bytes: HttpRequest(uri="a") is HttpRequest(uri=b"a"), as
    # the decoder, which gives str for UTF-8 and bytes otherwise, cannot tell them apart.
    return tuple(to_bytes(v) if v.__class__ is str else v for v in values)


class _Record:
    """Equality, hash and repr of every class here, as a frozen dataclass has them (by
    class, then the fields in order), written once: dataclasses would compile each of
    them for every class (``exec``), a third of the cost of importing this module."""

    __slots__ = ()
    _values: ClassVar[Callable[[Any], tuple[Any, ...]]]  # the fields, in order
    __match_args__: ClassVar[tuple[str, ...]]
    MAX_BYTES: ClassVar[dict[str, int]] = {}  # no string field: nothing to cut

    def __eq__(self, other: object) -> bool:
        cls = self.__class__
        if other.__class__ is cls:
            return _as_sent(cls._values(self)) == _as_sent(cls._values(other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(_as_sent(self.__class__._values(self)))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__match_args__)
        return f"{self.__class__.__qualname__}({fields})"


# ---------------------------------------------------------------- flow records


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class HttpRequest(_Record):
    FORMAT: ClassVar[int] = 2206
    KIND: ClassVar[str] = "flow"
    NAME: ClassVar[str] = "http_request"
    LAYOUT: ClassVar[str] = "IIsssssssQQII"
    MAX_BYTES: ClassVar[dict[str, int]] = {
        "uri": 255,
        "host": 64,
        "referer": 255,
        "useragent": 128,
        "xff": 64,
        "authuser": 32,
        "mime_type": 64,
    }
    method: int = HttpMethod.OTHER
    protocol: int = 0  # major * 1000 + minor (1001 = HTTP/1.1)
    uri: Text = ""
    host: Text = ""
    referer: Text = ""
    useragent: Text = ""
    xff: Text = ""
    authuser: Text = ""
    mime_type: Text = ""
    req_bytes: int = 0
    resp_bytes: int = 0
    uS: int = 0  # the spec's name
    status: int = 0


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ExtendedProxyRequest(_Record):
    FORMAT: ClassVar[int] = 2207
    KIND: ClassVar[str] = "flow"
    NAME: ClassVar[str] = "extended_proxy_request"
    LAYOUT: ClassVar[str] = "ss"
    MAX_BYTES: ClassVar[dict[str, int]] = {"uri": 255, "host": 64}
    uri: Text = ""
    host: Text = ""


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class MemcacheOperation(_Record):
    FORMAT: ClassVar[int] = 2200
    KIND: ClassVar[str] = "flow"
    NAME: ClassVar[str] = "memcache_operation"
    LAYOUT: ClassVar[str] = "IIsIIII"
    MAX_BYTES: ClassVar[dict[str, int]] = {"key": 255}
    protocol: int = MemcacheProtocol.OTHER
    cmd: int = MemcacheCmd.OTHER
    key: Text = ""
    nkeys: int = 1
    value_bytes: int = 0
    uS: int = 0
    status: int = MemcacheStatus.UNKNOWN


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class AppOperation(_Record):
    FORMAT: ClassVar[int] = 2202
    KIND: ClassVar[str] = "flow"
    NAME: ClassVar[str] = "app_operation"
    LAYOUT: ClassVar[str] = "ssssQQII"
    MAX_BYTES: ClassVar[dict[str, int]] = {
        "application": 32,
        "operation": 32,
        "attributes": 255,
        # The spec's XDR says <64>, sflowtool's and hsflowd's buffer 32 bytes with the NUL:
        # 31 is what every reader shows whole (a peer's longer one still decodes).
        "status_descr": 31,
    }
    application: Text = ""
    operation: Text = ""
    attributes: Text = ""
    status_descr: Text = ""
    req_bytes: int = 0
    resp_bytes: int = 0
    uS: int = 0
    status: int = AppStatus.SUCCESS


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class AppParentContext(_Record):
    FORMAT: ClassVar[int] = 2203
    KIND: ClassVar[str] = "flow"
    NAME: ClassVar[str] = "app_parent_context"
    LAYOUT: ClassVar[str] = "sss"
    MAX_BYTES: ClassVar[dict[str, int]] = {"application": 32, "operation": 32, "attributes": 255}
    application: Text = ""
    operation: Text = ""
    attributes: Text = ""


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class AppInitiator(_Record):
    FORMAT: ClassVar[int] = 2204
    KIND: ClassVar[str] = "flow"
    NAME: ClassVar[str] = "app_initiator"
    LAYOUT: ClassVar[str] = "s"
    MAX_BYTES: ClassVar[dict[str, int]] = {"actor": 64}
    actor: Text = ""


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class AppTarget(_Record):
    FORMAT: ClassVar[int] = 2205
    KIND: ClassVar[str] = "flow"
    NAME: ClassVar[str] = "app_target"
    LAYOUT: ClassVar[str] = "s"
    MAX_BYTES: ClassVar[dict[str, int]] = {"actor": 64}
    actor: Text = ""


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ExtendedSocketIPv4(_Record):
    FORMAT: ClassVar[int] = 2100
    KIND: ClassVar[str] = "flow"
    NAME: ClassVar[str] = "extended_socket_ipv4"
    LAYOUT: ClassVar[str] = "I44II"
    protocol: int = 6
    local_ip: str = "0.0.0.0"
    remote_ip: str = "0.0.0.0"
    local_port: int = 0
    remote_port: int = 0


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ExtendedSocketIPv6(_Record):
    FORMAT: ClassVar[int] = 2101
    KIND: ClassVar[str] = "flow"
    NAME: ClassVar[str] = "extended_socket_ipv6"
    LAYOUT: ClassVar[str] = "I66II"
    protocol: int = 6
    local_ip: str = "::"
    remote_ip: str = "::"
    local_port: int = 0
    remote_port: int = 0


# ------------------------------------------------------------- counter records


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class HttpCounters(_Record):
    FORMAT: ClassVar[int] = 2201
    KIND: ClassVar[str] = "counter"
    NAME: ClassVar[str] = "http_counters"
    LAYOUT: ClassVar[str] = "I" * 15
    method_option_count: int = 0
    method_get_count: int = 0
    method_head_count: int = 0
    method_post_count: int = 0
    method_put_count: int = 0
    method_delete_count: int = 0
    method_trace_count: int = 0
    methd_connect_count: int = 0  # sic: the spec's spelling
    method_other_count: int = 0
    status_1XX_count: int = 0
    status_2XX_count: int = 0
    status_3XX_count: int = 0
    status_4XX_count: int = 0
    status_5XX_count: int = 0
    status_other_count: int = 0


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class MemcacheCounters(_Record):
    FORMAT: ClassVar[int] = 2204
    KIND: ClassVar[str] = "counter"
    NAME: ClassVar[str] = "memcache_counters"
    LAYOUT: ClassVar[str] = "I" * 27 + "Q" * 4
    cmd_set: int = 0
    cmd_touch: int = 0
    cmd_flush: int = 0
    get_hits: int = 0
    get_misses: int = 0
    delete_hits: int = 0
    delete_misses: int = 0
    incr_hits: int = 0
    incr_misses: int = 0
    decr_hits: int = 0
    decr_misses: int = 0
    cas_hits: int = 0
    cas_misses: int = 0
    cas_badval: int = 0
    auth_cmds: int = 0
    auth_errors: int = 0
    threads: int = 0
    conn_yields: int = 0
    listen_disabled_num: int = 0
    curr_connections: int = 0
    rejected_connections: int = 0
    total_connections: int = 0
    connection_structures: int = 0
    evictions: int = 0
    reclaimed: int = 0
    curr_items: int = 0
    total_items: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    bytes: int = 0
    limit_maxbytes: int = 0


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class AppOperations(_Record):
    FORMAT: ClassVar[int] = 2202
    KIND: ClassVar[str] = "counter"
    NAME: ClassVar[str] = "app_operations"
    LAYOUT: ClassVar[str] = "s" + "I" * 11
    MAX_BYTES: ClassVar[dict[str, int]] = {"application": 32}
    application: Text = ""
    success: int = 0
    other: int = 0
    timeout: int = 0
    internal_error: int = 0
    bad_request: int = 0
    forbidden: int = 0
    too_large: int = 0
    not_implemented: int = 0
    not_found: int = 0
    unavailable: int = 0
    unauthorized: int = 0


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class AppResources(_Record):
    FORMAT: ClassVar[int] = 2203
    KIND: ClassVar[str] = "counter"
    NAME: ClassVar[str] = "app_resources"
    LAYOUT: ClassVar[str] = "IIQQIIII"
    user_time: int = 0
    system_time: int = 0
    mem_used: int = 0
    mem_max: int = 0
    fd_open: int = 0
    fd_max: int = 0
    conn_open: int = 0
    conn_max: int = 0


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class AppWorkers(_Record):
    FORMAT: ClassVar[int] = 2206
    KIND: ClassVar[str] = "counter"
    NAME: ClassVar[str] = "app_workers"
    LAYOUT: ClassVar[str] = "IIIII"
    workers_active: int = 0
    workers_idle: int = 0
    workers_max: int = 0
    req_delayed: int = 0
    req_dropped: int = 0


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class HostParent(_Record):
    FORMAT: ClassVar[int] = 2002
    KIND: ClassVar[str] = "counter"
    NAME: ClassVar[str] = "host_parent"
    LAYOUT: ClassVar[str] = "II"
    container_type: int = 2
    container_index: int = 1


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class OpaqueRecord(_Record):
    """A flow or counter record this package does not interpret, kept byte for byte."""

    enterprise: int
    format: int
    data: bytes


RECORD_TYPES: tuple[type[Record], ...] = (
    HttpRequest,
    ExtendedProxyRequest,
    MemcacheOperation,
    AppOperation,
    AppParentContext,
    AppInitiator,
    AppTarget,
    ExtendedSocketIPv4,
    ExtendedSocketIPv6,
    HttpCounters,
    MemcacheCounters,
    AppOperations,
    AppResources,
    AppWorkers,
    HostParent,
)

# ---------------------------------------------------------------------- samples


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class FlowSample(_Record):
    sequence_number: int
    ds_class: int
    ds_index: int
    sampling_rate: int
    sample_pool: int
    drops: int
    input_format: int
    input_value: int
    output_format: int
    output_value: int
    records: tuple[object, ...]
    expanded: bool = False  # force format 3; chosen anyway when a value needs it


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class CountersSample(_Record):
    sequence_number: int
    ds_class: int
    ds_index: int
    records: tuple[object, ...]
    expanded: bool = False  # force format 4


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class OpaqueSample(_Record):
    """A sample of a format this package does not interpret, kept byte for byte."""

    enterprise: int
    format: int
    data: bytes


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Datagram(_Record):
    agent_address: str  # IPv4 or IPv6 text; the wire type (1 or 2) follows from it
    sub_agent_id: int
    sequence_number: int
    uptime_ms: int
    samples: tuple[object, ...]
    version: int = 5


# ------------------------------------------------------------- fast constructors


def _one_value(name: str) -> Callable[[Any], tuple[Any, ...]]:
    get = attrgetter(name)
    return lambda rec: (get(rec),)


def _fast_inits(classes: tuple[type, ...]) -> None:
    """Give each frozen dataclass an ``__init__`` that sets its slots through their
    descriptors: what the generated one does through ``object.__setattr__`` (a frozen class
    cannot assign), at about half the cost. Records are built on every sampled request.
    Same signature and defaults; ``dataclasses.fields``/``replace``/``asdict`` unchanged."""
    source: list[str] = []
    names: dict[str, object] = {}
    for i, cls in enumerate(classes):
        params, body = [], []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                names[f"_d{i}_{f.name}"] = f.default
                params.append(f"{f.name}=_d{i}_{f.name}")
            else:
                params.append(f.name)
            names[f"_s{i}_{f.name}"] = cls.__dict__[f.name].__set__
            body.append(f"    _s{i}_{f.name}(self, {f.name})")
        source.append(f"def _init{i}(self, {', '.join(params)}):\n" + "\n".join(body))
    exec("\n".join(source), names)  # one compile for all of them
    for i, cls in enumerate(classes):
        fields = tuple(f.name for f in dataclasses.fields(cls))
        values = attrgetter(*fields) if len(fields) > 1 else _one_value(fields[0])
        setattr(cls, "_values", values)  # noqa: B010
        init: Any = names[f"_init{i}"]
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        init.__module__ = cls.__module__
        setattr(cls, "__init__", init)  # noqa: B010 (mypy: no assignment to a method)


_fast_inits((*RECORD_TYPES, OpaqueRecord, FlowSample, CountersSample, OpaqueSample, Datagram))

# ---------------------------------------------------------------- socket helper

_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def _packed(ip: str) -> bytes | None:
    ip = ip.split("%", 1)[0]  # drop an IPv6 zone ("fe80::1%eth0")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, ip)
        except (OSError, ValueError):
            continue
    return None


def socket_record(
    protocol: int, local_ip: str, remote_ip: str, local_port: int, remote_port: int
) -> ExtendedSocketIPv4 | ExtendedSocketIPv6:
    """The extended_socket record for a connection, IPv4 form where possible.

    v4-mapped IPv6 addresses (``::ffff:a.b.c.d``) become 2100 records, as nginx sends
    them. Unparseable addresses are reported as unspecified rather than raising.
    """
    local, remote = _packed(local_ip) or b"", _packed(remote_ip) or b""
    if all(len(p) != 16 or p.startswith(_V4_MAPPED) for p in (local, remote)):
        return ExtendedSocketIPv4(
            protocol, _v4_text(local), _v4_text(remote), local_port, remote_port
        )
    return ExtendedSocketIPv6(protocol, _v6_text(local), _v6_text(remote), local_port, remote_port)


def _v4_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, packed[-4:]) if packed else "0.0.0.0"


def _v6_text(packed: bytes) -> str:
    if len(packed) == 4:
        packed = _V4_MAPPED + packed
    return socket.inet_ntop(socket.AF_INET6, packed) if packed else "::"

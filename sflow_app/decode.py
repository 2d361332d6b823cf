"""Strict, bounds-checked sFlow v5 decoder, plus two printable views of a datagram.

``decode`` rejects (``DecodeError``) only framing errors: truncation, a length word that
disagrees with the structure it frames, an unknown datagram version or agent address type,
counts that the remaining bytes cannot hold, a string's pad bytes that are not zero (XDR
requires zeros; sflowtool skips them unread), and bytes left over after the last sample
(sflowtool ignores those; a strict decoder treats them as a sample count that is too low).
Samples and records it does not know are kept as ``OpaqueSample``/``OpaqueRecord``; enum
values outside the enums and strings longer than their maximum are passed through.
Nothing partial is ever returned.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
from collections.abc import Callable
from typing import Any, TypeGuard

from ._encode import agent_address_prefix, encode_datagram, needs_expanded
from ._xdr import TAG_LEN, DecodeError, Reader, pack_ip, pad4, split_layout, to_bytes
from .records import (
    RECORD_TYPES,
    AppInitiator,
    AppOperation,
    AppOperations,
    AppParentContext,
    AppResources,
    AppStatus,
    AppTarget,
    AppWorkers,
    CountersSample,
    Datagram,
    ExtendedProxyRequest,
    ExtendedSocketIPv4,
    ExtendedSocketIPv6,
    FlowSample,
    HostParent,
    HttpCounters,
    HttpRequest,
    MemcacheCounters,
    MemcacheOperation,
    OpaqueRecord,
    OpaqueSample,
    Record,
)

__all__ = ["DecodeError", "decode", "to_fields", "to_sflowtool"]

_FLOW = struct.Struct(">8I")
_FLOW_EXPANDED = struct.Struct(">11I")
_COUNTERS = struct.Struct(">3I")
_COUNTERS_EXPANDED = struct.Struct(">4I")
_HEADER_TAIL = struct.Struct(">4I")


# ------------------------------------------------------------------------ decoding


def _make_decoder(cls: type[Record]) -> Callable[[Reader], Any]:
    """A body reader for ``cls`` built from its ``LAYOUT`` (see ``split_layout``)."""
    head_fmt, mid, tail_fmt = split_layout(cls.LAYOUT)
    head, tail = struct.Struct(">" + head_fmt), struct.Struct(">" + tail_fmt)
    family = socket.AF_INET6 if "6" in mid else socket.AF_INET

    def read(r: Reader) -> Any:
        values: list[Any] = list(r.unpack(head))
        for kind in mid:
            values.append(r.string() if kind == "s" else r.ip(family))
        values += r.unpack(tail)
        return cls(*values)

    return read


_DECODERS = {(cls.KIND, cls.FORMAT): _make_decoder(cls) for cls in RECORD_TYPES}


def _check_length(r: Reader, what: str, length: int, container: str) -> None:
    if length % 4:
        raise DecodeError(f"{what} length {length} is not a multiple of 4")
    if length > r.end - r.pos:
        raise DecodeError(
            f"{what} length {length} exceeds {container}: "
            f"{r.end - r.pos} bytes left at offset {r.pos}"
        )


def _check_count(r: Reader, what: str, n: int) -> None:
    # Every sample and record takes at least 8 bytes: caps the loop before it starts.
    if n > (r.end - r.pos) // 8:
        left = r.end - r.pos
        raise DecodeError(f"{what} {n} exceeds what {left} bytes at offset {r.pos} can hold")


def _records(r: Reader, kind: str, n: int) -> tuple[object, ...]:
    _check_count(r, "num_records", n)
    out: list[object] = []
    for _ in range(n):
        tag, length = r.unpack(TAG_LEN)
        what = f"{kind} record {tag >> 12}:{tag & 0xFFF}"
        _check_length(r, what, length, "sample")
        read = _DECODERS.get((kind, tag))
        if read is None:
            out.append(OpaqueRecord(tag >> 12, tag & 0xFFF, r.take(length)))
            continue
        start = r.pos
        try:
            out.append(read(r))  # bounded by the sample, so a wrong length is reported as such
        except DecodeError as exc:
            raise DecodeError(f"{what} (length {length}) at offset {start - 8}: {exc}") from None
        if r.pos - start != length:
            raise DecodeError(f"{what} length {length} does not match decoded body {r.pos - start}")
    return tuple(out)


def _flow_sample(r: Reader, expanded: bool) -> FlowSample:
    if expanded:
        seq, ds_class, ds_index, rate, pool, drops, in_f, in_v, out_f, out_v, n = r.unpack(
            _FLOW_EXPANDED
        )
    else:
        seq, source, rate, pool, drops, inp, outp, n = r.unpack(_FLOW)
        ds_class, ds_index = source >> 24, source & 0xFFFFFF
        in_f, in_v, out_f, out_v = inp >> 30, inp & 0x3FFFFFFF, outp >> 30, outp & 0x3FFFFFFF
    records = _records(r, "flow", n)
    return FlowSample(
        seq, ds_class, ds_index, rate, pool, drops, in_f, in_v, out_f, out_v, records, expanded
    )


def _counters_sample(r: Reader, expanded: bool) -> CountersSample:
    if expanded:
        seq, ds_class, ds_index, n = r.unpack(_COUNTERS_EXPANDED)
    else:
        seq, source, n = r.unpack(_COUNTERS)
        ds_class, ds_index = source >> 24, source & 0xFFFFFF
    return CountersSample(seq, ds_class, ds_index, _records(r, "counter", n), expanded)


_SAMPLE_READERS = {
    1: (_flow_sample, False),
    2: (_counters_sample, False),
    3: (_flow_sample, True),
    4: (_counters_sample, True),
}


def _sample(r: Reader, index: int, total: int) -> object:
    tag, length = r.unpack(TAG_LEN)
    enterprise, fmt = tag >> 12, tag & 0xFFF
    what = f"sample {index} of {total} ({enterprise}:{fmt})"
    _check_length(r, what, length, "datagram")
    if enterprise != 0 or fmt not in _SAMPLE_READERS:
        return OpaqueSample(enterprise, fmt, r.take(length))
    read, expanded = _SAMPLE_READERS[fmt]
    start, outer_end = r.pos, r.end
    r.end = start + length
    try:
        sample = read(r, expanded)
    except DecodeError as exc:  # "truncated" alone would blame the datagram, not the sample
        raise DecodeError(f"{what} (length {length}) at offset {start - 8}: {exc}") from None
    if r.pos != r.end:
        raise DecodeError(f"{what} length {length} does not match decoded body {r.pos - start}")
    r.end = outer_end
    return sample


def decode(data: bytes | bytearray | memoryview) -> Datagram:
    """Decode one sFlow v5 datagram (a UDP payload). Raises ``DecodeError`` if malformed."""
    r = Reader(bytes(data))
    version = r.u32()
    if version != 5:
        raise DecodeError(f"unsupported datagram version {version}")
    address_type = r.u32()
    if address_type not in (1, 2):
        raise DecodeError(f"agent address type {address_type} (unknown)")
    agent = r.ip(socket.AF_INET if address_type == 1 else socket.AF_INET6)
    sub_agent_id, sequence_number, uptime_ms, n = r.unpack(_HEADER_TAIL)
    _check_count(r, "num_samples", n)
    samples = tuple(_sample(r, i + 1, n) for i in range(n))
    if r.pos != len(r.data):
        raise DecodeError(
            f"{len(r.data) - r.pos} bytes after the last of {n} samples at offset {r.pos}"
        )
    return Datagram(agent, sub_agent_id, sequence_number, uptime_ms, samples, version)


# ------------------------------------------------------------------- fields view


def _body_size(rec: Record | OpaqueRecord | OpaqueSample) -> int:
    """Body bytes of ``rec`` as held (strings are not cut: a decoded record's wire size)."""
    if isinstance(rec, OpaqueRecord | OpaqueSample):
        return pad4(len(to_bytes(rec.data)))
    size = 0
    for f, kind in zip(dataclasses.fields(rec), rec.LAYOUT, strict=True):
        if kind == "s":
            size += 4 + pad4(len(to_bytes(getattr(rec, f.name))))
        else:
            size += {"I": 4, "Q": 8, "4": 4, "6": 16}[kind]
    return size


def _text_or_hex(name: str, value: object) -> tuple[str, object]:
    b = to_bytes(value)
    try:
        return name, b.decode()
    except UnicodeDecodeError:
        return name + "_hex", b.hex()


_KNOWN = frozenset(RECORD_TYPES)


def _is_record(rec: object) -> TypeGuard[Record | OpaqueRecord]:
    return isinstance(rec, OpaqueRecord) or type(rec) in _KNOWN


def _record(rec: object) -> Record | OpaqueRecord:
    """``rec`` as a record this module can describe, or TypeError (as for samples)."""
    if _is_record(rec):
        return rec
    raise TypeError(f"not an sFlow record: {rec!r}")


def _record_fields(rec: Record | OpaqueRecord) -> dict[str, Any]:
    if isinstance(rec, OpaqueRecord):
        return {
            "record": "unknown",
            "enterprise": rec.enterprise,
            "format": rec.format,
            "length": _body_size(rec),
            "data_hex": to_bytes(rec.data).hex(),
        }
    out: dict[str, Any] = {
        "record": rec.NAME,
        "enterprise": 0,
        "format": rec.FORMAT,
        "length": _body_size(rec),
    }
    for f, kind in zip(dataclasses.fields(rec), rec.LAYOUT, strict=True):
        value = getattr(rec, f.name)
        key, value = _text_or_hex(f.name, value) if kind == "s" else (f.name, value)
        out[key] = value
    return out


def _sample_fields(s: object) -> dict[str, Any]:
    if isinstance(s, OpaqueSample):
        return {
            "sample": "unknown",
            "enterprise": s.enterprise,
            "format": s.format,
            "length": _body_size(s),
            "data_hex": to_bytes(s.data).hex(),
        }
    if not isinstance(s, FlowSample | CountersSample):
        raise TypeError(f"not an sFlow sample: {s!r}")
    expanded = needs_expanded(s)
    records = [_record_fields(_record(r)) for r in s.records]
    flow = isinstance(s, FlowSample)
    fixed = (44 if expanded else 32) if flow else (16 if expanded else 12)
    name = ("flow_sample" if flow else "counters_sample") + ("_expanded" if expanded else "")
    out: dict[str, Any] = {
        "sample": name,
        "enterprise": 0,
        "format": (1 if flow else 2) + (2 if expanded else 0),
        "length": fixed + sum(8 + r["length"] for r in records),
        "sequence_number": s.sequence_number,
        "source_id": {"ds_class": s.ds_class, "ds_index": s.ds_index},
    }
    if isinstance(s, FlowSample):
        out.update(
            sampling_rate=s.sampling_rate,
            sample_pool=s.sample_pool,
            drops=s.drops,
            input={"format": s.input_format, "value": s.input_value},
            output={"format": s.output_format, "value": s.output_value},
        )
    out.update(num_records=len(records), records=records)
    return out


def _agent(dg: Datagram) -> tuple[int, bytes]:
    prefix = agent_address_prefix(dg.agent_address)
    return prefix[7], prefix[8:]


def to_fields(dg: Datagram) -> dict[str, Any]:
    """``dg`` in the ``fields`` schema of ``shared/vectors`` (wire order, computed lengths)."""
    kind, raw = _agent(dg)
    family = socket.AF_INET if kind == 1 else socket.AF_INET6
    return {
        "version": dg.version,
        "agent_address": {"type": kind, "address": socket.inet_ntop(family, raw)},
        "sub_agent_id": dg.sub_agent_id,
        "sequence_number": dg.sequence_number,
        "uptime_ms": dg.uptime_ms,
        "num_samples": len(dg.samples),
        "samples": [_sample_fields(s) for s in dg.samples],
    }


# ---------------------------------------------------------------- sflowtool view

_APP_STATUS = {s.value: s.name for s in AppStatus} | {10: "UNATHORIZED"}  # sflowtool's spelling
_APP_COUNTER_NAMES = ["status_OK"] + [f"errors_{s.name}" for s in AppStatus if s.value]


def _prefixed(cls: type, prefix: str, **renames: str) -> dict[str, str]:
    return {f.name: prefix + renames.get(f.name, f.name) for f in dataclasses.fields(cls)}


# class -> (type keys printed after the tag, field -> sflowtool name)
_SFLOWTOOL: dict[type, tuple[dict[str, str], dict[str, str]]] = {
    HttpRequest: (
        {"flowSampleType": "http"},
        _prefixed(
            HttpRequest,
            "http_",
            referer="referrer",
            mime_type="mimetype",
            req_bytes="request_bytes",
            resp_bytes="bytes",
            uS="duration_uS",
        ),
    ),
    ExtendedProxyRequest: ({}, _prefixed(ExtendedProxyRequest, "proxy_request_")),
    MemcacheOperation: (
        {"flowSampleType": "memcache"},
        _prefixed(MemcacheOperation, "memcache_op_", uS="duration_uS"),
    ),
    AppOperation: (
        {"flowSampleType": "applicationOperation"},
        _prefixed(
            AppOperation,
            "",
            req_bytes="request_bytes",
            resp_bytes="response_bytes",
            uS="duration_uS",
        ),
    ),
    AppParentContext: ({}, _prefixed(AppParentContext, "server_context_")),
    AppInitiator: ({}, {"actor": "actor_initiator"}),
    AppTarget: ({}, {"actor": "actor_target"}),
    ExtendedSocketIPv4: (
        {"extendedType": "socket4"},
        _prefixed(ExtendedSocketIPv4, "socket4_", protocol="ip_protocol"),
    ),
    ExtendedSocketIPv6: (
        {"extendedType": "socket6"},
        _prefixed(ExtendedSocketIPv6, "socket6_", protocol="ip_protocol"),
    ),
    HttpCounters: ({}, _prefixed(HttpCounters, "http_")),
    MemcacheCounters: ({}, _prefixed(MemcacheCounters, "memcache_")),
    AppOperations: (
        {},
        dict(
            zip(
                [f.name for f in dataclasses.fields(AppOperations)],
                ["application", *_APP_COUNTER_NAMES],
                strict=True,
            )
        ),
    ),
    AppResources: (
        {},
        _prefixed(
            AppResources,
            "",
            mem_used="memory_used",
            mem_max="memory_max",
            fd_open="files_open",
            fd_max="files_max",
            conn_open="connections_open",
            conn_max="connections_max",
        ),
    ),
    AppWorkers: (
        {},
        _prefixed(AppWorkers, "", req_delayed="requests_delayed", req_dropped="requests_dropped"),
    ),
    HostParent: ({}, {"container_type": "parent_dsClass", "container_index": "parent_dsIndex"}),
}


def _url_encode(key: bytes) -> str:
    """sflowtool's URLEncode, minus its swapped hex digits and its bytes >= 0x80 bug."""
    out = []
    for c in key:
        ch = chr(c)
        if ch.isascii() and ch.isalnum():
            out.append(ch)
        elif ch in " \t\n\v\f\r":
            out.append("+")
        else:
            out.append(f"%{c:02X}")
    return "".join(out)


def ip6_full(ip: object) -> str:
    """An IPv6 address as sflowtool prints it: eight groups of four hex digits."""
    h = pack_ip(ip, socket.AF_INET6).hex()
    return ":".join(h[i : i + 4] for i in range(0, 32, 4))


def _element(rec: Record | OpaqueRecord, block: str) -> dict[str, str]:
    if isinstance(rec, OpaqueRecord):
        return {block: f"{rec.enterprise}:{rec.format}"}
    type_keys, names = _SFLOWTOOL[type(rec)]
    out = {block: f"0:{rec.FORMAT}", **type_keys}
    for field, kind in zip(names, rec.LAYOUT, strict=True):
        value = getattr(rec, field)
        if kind == "s":
            raw = to_bytes(value)
            if not raw:
                continue  # sflowtool prints no empty strings
            text = (
                _url_encode(raw)
                if type(rec) is MemcacheOperation
                else raw.decode("utf-8", "backslashreplace")
            )
        elif kind == "6":
            text = ip6_full(value)
        elif type(rec) is AppOperation and field == "status":
            text = _APP_STATUS.get(value, f"<out-of-range={value}>")
        else:
            text = str(value)
        out[names[field]] = text
    return out


def _port(fmt: int, value: int) -> str:
    return {0: "", 1: "dropCode ", 2: "multiple "}.get(fmt, f"format=={fmt} ") + str(value)


def _sflowtool_sample(s: object) -> dict[str, Any]:
    if isinstance(s, OpaqueSample):
        return {"sampleType_tag": f"{s.enterprise}:{s.format}"}
    if not isinstance(s, FlowSample | CountersSample):
        raise TypeError(f"not an sFlow sample: {s!r}")
    flow = isinstance(s, FlowSample)
    fmt = (1 if flow else 2) + (2 if needs_expanded(s) else 0)
    out: dict[str, Any] = {
        "sampleType_tag": f"0:{fmt}",
        "sampleType": "FLOWSAMPLE" if flow else "COUNTERSSAMPLE",
        "sampleSequenceNo": str(s.sequence_number),
        "sourceId": f"{s.ds_class}:{s.ds_index}",
    }
    if isinstance(s, FlowSample):
        out.update(
            meanSkipCount=str(s.sampling_rate),
            samplePool=str(s.sample_pool),
            dropEvents=str(s.drops),
            inputPort=_port(s.input_format, s.input_value),
            outputPort=_port(s.output_format, s.output_value),
        )
    block = "flowBlock_tag" if flow else "counterBlock_tag"
    out["elements"] = [_element(_record(r), block) for r in s.records]
    return out


def to_sflowtool(dg: Datagram, datagram_size: int | None = None) -> dict[str, Any]:
    """``dg`` as sflowtool 6.11 ``-j`` prints it: its names, every value a string.

    Run-dependent keys (``datagramSourceIP``, ``unixSecondsUTC``...) are left out.
    ``datagram_size`` is the UDP payload length (re-encoded when not given). sflowtool's
    printing bugs are not reproduced: strings are not cut to max-1 bytes, memcache keys are
    URL-encoded with the hex digits in the right order (bytes >= 0x80 too), and 0:2207 is
    decoded (``proxy_request_uri``, ``proxy_request_host``). Empty strings are omitted, as
    sflowtool does. Non-UTF-8 bytes in other strings are backslash-escaped.
    """
    kind, raw = _agent(dg)
    agent = socket.inet_ntop(socket.AF_INET, raw) if kind == 1 else ip6_full(raw)
    if datagram_size is None:
        datagram_size = len(encode_datagram(dg))
    return {
        "datagramSize": str(datagram_size),
        "datagramVersion": str(dg.version),
        "agentSubId": str(dg.sub_agent_id),
        "agent": agent,
        "packetSequenceNo": str(dg.sequence_number),
        "sysUpTime": str(dg.uptime_ms),
        "samplesInPacket": str(len(dg.samples)),
        "samples": [_sflowtool_sample(s) for s in dg.samples],
    }

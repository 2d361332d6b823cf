"""Pure sFlow v5 encoder: record -> bytes, sample -> bytes, datagram -> bytes.

Numbers that do not fit their field (negative, too large, not a number) are clamped, never
raised: the fast path packs directly and only a ``struct.error`` takes the clamping path.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import sys
from collections.abc import Callable
from functools import lru_cache
from operator import attrgetter
from typing import Any

from ._memo import remember
from ._xdr import PAD, TAG_LEN, clamp_all, cut_utf8, pack_ip, pack_u32, split_layout, to_bytes
from .records import (
    RECORD_TYPES,
    CountersSample,
    Datagram,
    FlowSample,
    HttpRequest,
    OpaqueRecord,
    OpaqueSample,
    Record,
    socket_record,
)

__all__ = [
    "FLOW_HEAD",
    "encode_counters_sample",
    "encode_datagram",
    "encode_datagram_header",
    "encode_fitted_flow_sample",
    "encode_flow_sample",
    "encode_http_request",
    "encode_record",
    "encode_records",
    "encode_sample",
    "encode_socket",
    "fit_flow_sample",
    "flow_source_words",
    "http_request_head",
    "needs_expanded",
]

Encoder = Callable[[Any], bytes]

_EMPTY_STRING = b"\0\0\0\0"
# Length words of every string length a record allows, packed once (20% off http_request).
_MAX_STRING = max(n for c in RECORD_TYPES for n in getattr(c, "MAX_BYTES", {}).values())
_LENGTH_WORDS = [pack_u32(n) for n in range(_MAX_STRING + 1)]


# ------------------------------------------------------------------------ records


def _pack_numbers(st: struct.Struct, fmt: str, values: tuple[Any, ...]) -> bytes:
    try:
        return st.pack(*values)
    except struct.error:
        return st.pack(*clamp_all(values, fmt))


def _getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """Like attrgetter, but always returns a tuple (empty for no names)."""
    if not names:
        return lambda rec: ()
    if len(names) == 1:
        get = attrgetter(names[0])
        return lambda rec: (get(rec),)
    return attrgetter(*names)


def _make_encoder(cls: type[Record]) -> Encoder:
    """An encoder for ``cls`` from its ``LAYOUT``: numbers, then strings or IPs, then numbers.

    Every record here has that shape, so each encoder is one loop between two precompiled
    packs, and the record's length is summed from its parts so the whole record is one
    ``join`` (no intermediate body or concatenation).
    """
    names = [f.name for f in dataclasses.fields(cls)]
    layout, tag = cls.LAYOUT, cls.FORMAT
    head_fmt, mid, tail_fmt = split_layout(layout)
    head_fmt = "II" + head_fmt  # data_format and length lead every record
    head, tail = struct.Struct(">" + head_fmt), struct.Struct(">" + tail_fmt)
    mid_names = names[len(head_fmt) - 2 : len(head_fmt) - 2 + len(mid)]
    head_get, mid_get = _getter(names[: len(head_fmt) - 2]), _getter(mid_names)
    tail_get = _getter(names[len(names) - len(tail_fmt) :])
    numbers = head.size - 8 + tail.size  # the body's fixed-size part

    if not mid:  # counter blocks: one pack call
        return lambda rec: _pack_numbers(head, head_fmt, (tag, numbers, *head_get(rec)))

    def packed(rec: Any, size: int) -> tuple[bytes, bytes]:
        """(head, tail) of a record whose body is ``size`` bytes."""
        try:
            return head.pack(tag, size, *head_get(rec)), tail.pack(*tail_get(rec))
        except struct.error:  # a number out of range: the rare, clamping path
            return (
                _pack_numbers(head, head_fmt, (tag, size, *head_get(rec))),
                _pack_numbers(tail, tail_fmt, tail_get(rec)),
            )

    if mid[0] in "46":
        family = socket.AF_INET if mid[0] == "4" else socket.AF_INET6
        size = numbers + len(mid) * (4 if mid[0] == "4" else 16)

        def encode_ips(rec: Any) -> bytes:
            first, last = packed(rec, size)
            return b"".join([first, *[pack_ip(v, family) for v in mid_get(rec)], last])

        return encode_ips

    limits = [cls.MAX_BYTES[n] for n in mid_names]
    words, pad, empty = _LENGTH_WORDS, PAD, _EMPTY_STRING

    def encode_strings(rec: Any) -> bytes:
        parts: list[bytes] = [b""]  # the head, once the length is known
        size = numbers
        for v, limit in zip(mid_get(rec), limits):  # noqa: B905 (same length by construction)
            if not v:
                parts.append(empty)
                size += 4
                continue
            if type(v) is bytes:
                b = v
            elif type(v) is str and v.isascii():
                b = v.encode()
            else:
                b = to_bytes(v)
            n = len(b)
            if n > limit:
                b = cut_utf8(b, limit)
                n = len(b)
            parts += (words[n], b, pad[n & 3])
            size += 4 + ((n + 3) & ~3)
        parts[0], last = packed(rec, size)
        parts.append(last)
        return b"".join(parts)

    return encode_strings


def _encode_opaque(rec: OpaqueRecord | OpaqueSample) -> bytes:
    data = to_bytes(rec.data)
    data += PAD[len(data) & 3]  # bodies are whole words; unaligned data is zero-padded
    tag = ((rec.enterprise & 0xFFFFF) << 12) | (rec.format & 0xFFF)
    return TAG_LEN.pack(tag, len(data)) + data


_ENCODERS: dict[type, Encoder] = {cls: _make_encoder(cls) for cls in RECORD_TYPES}
_ENCODERS[OpaqueRecord] = _encode_opaque


def encode_record(rec: object) -> bytes:
    """One flow or counter record: data_format, length, body (strings cut to their max)."""
    try:
        encoder = _ENCODERS[type(rec)]
    except KeyError:
        raise TypeError(f"not an sFlow record: {rec!r}") from None
    return encoder(rec)


def encode_records(records: tuple[object, ...]) -> bytes:
    return b"".join(map(encode_record, records))


# ---------------------------------------------- the HTTP records, without record objects
# The exporter encodes every sampled request: these give encode_record's bytes from plain
# values (tests hold them byte-identical), skipping the dataclasses in between.

HTTP_TAIL = struct.Struct(">QQII")  # req_bytes, resp_bytes, uS, status: the record's end
_BYTES_ONLY = {bytes}
_BYTES_WARNING = bool(sys.flags.bytes_warning)
# (method, protocol, strings) -> the http_request record up to its numbers: a service
# serves the same requests (URI, host, user agent...) over and over.
_HTTP_HEADS: dict[tuple[int, int, tuple[bytes | str, ...]], bytes] = {}


def encode_http_request(
    method: int,
    protocol: int,
    strings: tuple[bytes | str, ...],
    req_bytes: int,
    resp_bytes: int,
    duration_us: int,
    status: int,
) -> bytes:
    """``encode_record(HttpRequest(method, protocol, *strings, req_bytes, ...))``."""
    if _BYTES_WARNING and {*map(type, strings)} != _BYTES_ONLY:
        # Under -b a str key that meets an equal-hashed bytes key warns (-bb: raises).
        # Otherwise a str key is only another entry for the same head, and the check
        # (~0.4 us, a third of this function) is not paid on every sample.
        strings = tuple(map(to_bytes, strings))
    key = (method, protocol, strings)
    try:
        head = _HTTP_HEADS.get(key)
    except TypeError:  # a bytearray or memoryview (unhashable): its bytes
        strings = tuple(map(to_bytes, strings))
        key = (method, protocol, strings)
        head = _HTTP_HEADS.get(key)
    if head is None:
        raw = tuple(map(to_bytes, strings))
        head = remember(
            _HTTP_HEADS, key, http_request_head(method, protocol, raw), sum(map(len, raw))
        )
    try:
        return head + HTTP_TAIL.pack(req_bytes, resp_bytes, duration_us, status)
    except struct.error:  # a number out of range: the record's clamping path
        raw = tuple(map(to_bytes, strings))
        return encode_record(
            _http_request(method, protocol, raw, req_bytes, resp_bytes, duration_us, status)
        )


def http_request_head(method: int, protocol: int, strings: tuple[bytes, ...]) -> bytes:
    """The http_request record up to its numbers (``HTTP_TAIL`` packs the rest)."""
    return encode_record(_http_request(method, protocol, strings, 0, 0, 0, 0))[: -HTTP_TAIL.size]


def _http_request(
    method: int, protocol: int, strings: tuple[bytes, ...], *numbers: int
) -> HttpRequest:
    """``strings``: uri, host, referer, useragent, xff, authuser, mime_type; ``numbers``:
    req_bytes, resp_bytes, duration_us, status -- the record's own field order."""
    if len(strings) != 7 or len(numbers) != 4:
        raise ValueError(f"http_request takes 7 strings and 4 numbers, not {strings}, {numbers}")
    return HttpRequest(method, protocol, *strings, *numbers)


_PORTS = struct.Struct(">II")
# (protocol, local ip, remote ip) -> the socket record up to its ports: a service sees
# the same address pairs over and over.
_SOCKET_HEADS: dict[tuple[int, str, str], bytes] = {}


def encode_socket(protocol: int, local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    """``encode_record(socket_record(protocol, local[0], remote[0], local[1], remote[1]))``."""
    key = (protocol, local[0], remote[0])
    head = _SOCKET_HEADS.get(key)
    if head is None:
        record = encode_record(socket_record(protocol, local[0], remote[0], 0, 0))
        head = remember(_SOCKET_HEADS, key, record[:-8], len(local[0]) + len(remote[0]))
    try:
        return head + _PORTS.pack(local[1], remote[1])
    except struct.error:
        return encode_record(socket_record(protocol, local[0], remote[0], local[1], remote[1]))


# ------------------------------------------------------------------------ samples

FLOW_HEAD = struct.Struct(">IIIIIIIIII")  # tag, length, 8 words
_FLOW_EXPANDED = struct.Struct(">IIIIIIIIIIIII")  # tag, length, 11 words
_COUNTERS = struct.Struct(">IIIII")
_COUNTERS_EXPANDED = struct.Struct(">IIIIII")


def needs_expanded(s: FlowSample | CountersSample) -> bool:
    """True when ``s`` goes out as format 3/4: forced, or a value needs more bits."""
    # A shift is non-zero for values too wide and for negative ones (clamped later).
    if s.expanded or s.ds_class >> 8 or s.ds_index >> 24:
        return True
    if isinstance(s, FlowSample):
        return bool(
            s.input_format >> 2
            or s.input_value >> 30
            or s.output_format >> 2
            or s.output_value >> 30
        )
    return False


def _clamped(s: Any, names: tuple[str, ...]) -> Any:
    values = clamp_all(tuple(getattr(s, n) for n in names), "I" * len(names))
    return dataclasses.replace(s, **dict(zip(names, values, strict=True)))


_FLOW_NUMBERS = (
    "sequence_number",
    "ds_class",
    "ds_index",
    "sampling_rate",
    "sample_pool",
    "drops",
    "input_format",
    "input_value",
    "output_format",
    "output_value",
)


def encode_flow_sample(s: FlowSample) -> bytes:
    """Format 1 (compact) or 3 (expanded) flow sample with its records."""
    encoders = _ENCODERS
    parts: list[bytes] = [b""]  # the sample header, once the records' size is known
    try:
        parts += [encoders[type(r)](r) for r in s.records]
    except KeyError:
        for r in s.records:
            encode_record(r)  # raises the TypeError naming the record
        raise
    size = sum(map(len, parts))
    count = len(parts) - 1
    try:
        if (
            s.expanded
            or s.ds_class >> 8
            or s.ds_index >> 24
            or s.input_format >> 2
            or s.input_value >> 30
            or s.output_format >> 2
            or s.output_value >> 30
        ):  # as needs_expanded(): a value that needs more bits (or is negative)
            parts[0] = _FLOW_EXPANDED.pack(
                3,
                44 + size,
                s.sequence_number,
                s.ds_class,
                s.ds_index,
                s.sampling_rate,
                s.sample_pool,
                s.drops,
                s.input_format,
                s.input_value,
                s.output_format,
                s.output_value,
                count,
            )
        else:
            parts[0] = FLOW_HEAD.pack(
                1,
                32 + size,
                s.sequence_number,
                s.ds_class << 24 | s.ds_index,
                s.sampling_rate,
                s.sample_pool,
                s.drops,
                s.input_format << 30 | s.input_value,
                s.output_format << 30 | s.output_value,
                count,
            )
    except (struct.error, TypeError):
        return encode_flow_sample(_clamped(s, _FLOW_NUMBERS))
    return b"".join(parts)


def flow_source_words(
    ds_class: int, ds_index: int, input_value: int, output_value: int
) -> tuple[int, int, int] | None:
    """The source_id, input and output words of a compact flow sample (``FLOW_HEAD``:
    tag, length, sequence_number, source_id, sampling_rate, sample_pool, drops, input,
    output, record count); None when a value needs the expanded form."""
    if ds_class >> 8 or ds_index >> 24 or input_value >> 30 or output_value >> 30:
        return None
    return ds_class << 24 | ds_index, input_value, output_value


def encode_counters_sample(s: CountersSample) -> bytes:
    """Format 2 (compact) or 4 (expanded) counters sample with its records."""
    records = [encode_record(r) for r in s.records]
    size = sum(map(len, records))
    try:
        if needs_expanded(s):
            head = _COUNTERS_EXPANDED.pack(
                4, 16 + size, s.sequence_number, s.ds_class, s.ds_index, len(records)
            )
        else:
            head = _COUNTERS.pack(
                2, 12 + size, s.sequence_number, s.ds_class << 24 | s.ds_index, len(records)
            )
    except (struct.error, TypeError):
        return encode_counters_sample(_clamped(s, ("sequence_number", "ds_class", "ds_index")))
    records.insert(0, head)
    return b"".join(records)


def encode_sample(s: FlowSample | CountersSample | OpaqueSample) -> bytes:
    if isinstance(s, FlowSample):
        return encode_flow_sample(s)
    if isinstance(s, CountersSample):
        return encode_counters_sample(s)
    if isinstance(s, OpaqueSample):
        return _encode_opaque(s)
    raise TypeError(f"not an sFlow sample: {s!r}")


# ------------------------------------------------------------------------ datagrams

_HEADER_TAIL = struct.Struct(">IIII")  # sub_agent_id, sequence_number, uptime, num_samples


@lru_cache(maxsize=16)
def agent_address_prefix(agent_address: str) -> bytes:
    """version 5 + the agent address (type 1 or 2). Unparseable text -> 0.0.0.0, as nginx."""
    text = agent_address.split("%", 1)[0]
    for family, kind in ((socket.AF_INET, 1), (socket.AF_INET6, 2)):
        try:
            return pack_u32(5) + pack_u32(kind) + socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
    return pack_u32(5) + pack_u32(1) + b"\0\0\0\0"  # never type 0: sflowtool drops it


def encode_datagram_header(
    agent_address: str,
    sub_agent_id: int,
    sequence_number: int,
    uptime_ms: int,
    num_samples: int,
) -> bytes:
    """The 28-byte (IPv4 agent) or 40-byte (IPv6 agent) datagram header."""
    values = (sub_agent_id, sequence_number, uptime_ms, num_samples)
    try:
        tail = _HEADER_TAIL.pack(*values)
    except struct.error:
        tail = _HEADER_TAIL.pack(*clamp_all(values, "IIII"))
    return agent_address_prefix(str(agent_address)) + tail


def encode_datagram(dg: Datagram) -> bytes:
    parts = [encode_sample(s) for s in dg.samples]  # type: ignore[arg-type]
    header = encode_datagram_header(
        dg.agent_address, dg.sub_agent_id, dg.sequence_number, dg.uptime_ms, len(parts)
    )
    parts.insert(0, header)
    return b"".join(parts)


# ------------------------------------------------------------------------ fitting


def _longest_string(records: tuple[object, ...]) -> tuple[int, str, int] | None:
    """(record index, field, wire length) of the longest non-empty string, if any."""
    best: tuple[int, str, int] | None = None
    for i, rec in enumerate(records):
        for name, limit in getattr(rec, "MAX_BYTES", {}).items():
            n = min(len(to_bytes(getattr(rec, name))), limit)
            if n and (best is None or n > best[2]):
                best = (i, name, n)
    return best


def _halve(value: str | bytes, n: int) -> str | bytes:
    cut = cut_utf8(value, n // 2)
    if isinstance(value, str):
        return cut.decode("utf-8", "surrogateescape")
    return cut


def fit_flow_sample(sample: FlowSample, max_sample_bytes: int) -> FlowSample | None:
    """``sample`` with its longest strings halved until it encodes in ``max_sample_bytes``.

    Returns ``None`` when even empty strings do not fit (the caller counts a drop).
    """
    size = len(encode_flow_sample(sample))
    records = sample.records
    while size > max_sample_bytes:
        found = _longest_string(records)
        if found is None:
            return None
        i, name, n = found
        rec = records[i]
        shorter = dataclasses.replace(rec, **{name: _halve(getattr(rec, name), n)})  # type: ignore[type-var]
        size -= len(encode_record(rec)) - len(encode_record(shorter))
        records = (*records[:i], shorter, *records[i + 1 :])
    if records is sample.records:
        return sample
    return dataclasses.replace(sample, records=records)


def encode_fitted_flow_sample(sample: FlowSample, max_sample_bytes: int) -> bytes | None:
    """``encode_flow_sample(fit_flow_sample(sample, max_sample_bytes))``, encoding once.

    A sample that fits (nearly all) is encoded once and its bytes returned; only one that
    is too long takes ``fit_flow_sample``'s path. ``None``: it cannot fit (a drop).
    """
    data = encode_flow_sample(sample)
    if len(data) <= max_sample_bytes:
        return data
    fitted = fit_flow_sample(sample, max_sample_bytes)
    return None if fitted is None else encode_flow_sample(fitted)

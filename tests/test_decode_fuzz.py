"""Property tests: the decoder returns a Datagram or raises DecodeError, nothing else, and
encode -> decode is the identity (after the encoder's string cutting)."""

from __future__ import annotations

import dataclasses
import json
import socket
import struct
import time
from typing import Any

from helpers import VECTORS as VECTOR_DIR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sflow_app._encode import encode_datagram, needs_expanded
from sflow_app._xdr import cut_utf8, pad4, to_bytes
from sflow_app.decode import DecodeError, decode
from sflow_app.records import (
    RECORD_TYPES,
    CountersSample,
    Datagram,
    FlowSample,
    OpaqueRecord,
    OpaqueSample,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_CHEAP = settings(FUZZ, max_examples=1000)
# CPU seconds of this thread: a guard against hangs and blow-ups, far above any real
# decode time, and blind to how busy the machine is (wall-clock time is not).
SLOW_DECODE = 2.0


def decode_or_reject(data: bytes) -> Datagram | None:
    """Decode ``data``; only DecodeError may escape, and quickly."""
    started = time.thread_time()
    try:
        result = decode(data)
    except DecodeError:
        result = None
    assert time.thread_time() - started < SLOW_DECODE
    assert result is None or isinstance(result, Datagram)
    return result


# ------------------------------------------------------------------ arbitrary bytes

HEADER = bytes.fromhex("00000005000000010a0000010000005000000001000003e8")


@FUZZ_CHEAP
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    decode_or_reject(data)


@FUZZ_CHEAP
@given(st.integers(0, 6), st.binary(max_size=600))
def test_arbitrary_samples_after_a_valid_header(num_samples: int, body: bytes) -> None:
    # A valid header gets the fuzzer past the first checks into sample and record parsing.
    decode_or_reject(HEADER + struct.pack(">I", num_samples) + body)


# ------------------------------------------------------------------ mutated vectors

VECTORS = [
    bytes.fromhex(json.loads(p.read_text())["datagram_hex"])
    for p in sorted(VECTOR_DIR.glob("*.json"))
]
WORDS = st.sampled_from([0, 1, 3, 4, 8, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFC])


@st.composite
def mutated_vector(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VECTORS)))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["truncate", "flip", "word", "nudge"]))
        if how == "truncate":
            del data[draw(st.integers(0, max(len(data) - 1, 0))) :]
        elif how == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif len(data) >= 4:
            at = 4 * draw(st.integers(0, len(data) // 4 - 1))
            word = struct.unpack_from(">I", data, at)[0]
            if how == "word":
                word = draw(WORDS)
            else:  # a length or count a little off
                word = (word + draw(st.sampled_from([-8, -4, -1, 1, 4, 8]))) & 0xFFFFFFFF
            struct.pack_into(">I", data, at, word)
    return bytes(data)


def test_vectors_loaded() -> None:
    assert len(VECTORS) >= 30


@FUZZ_CHEAP
@given(mutated_vector())
def test_mutated_vectors(data: bytes) -> None:
    result = decode_or_reject(data)
    # Whatever is accepted is all there was: no byte (padding...) ignored on the way.
    if result is not None and not has_string_over_max(result):  # the encoder would cut it
        assert encode_datagram(result) == data


def has_string_over_max(dg: Datagram) -> bool:
    return any(
        len(to_bytes(getattr(r, name))) > limit
        for s in dg.samples
        if isinstance(s, FlowSample | CountersSample)
        for r in s.records
        for name, limit in getattr(r, "MAX_BYTES", {}).items()
    )


# ---------------------------------------------------------- encode/decode round trip

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
TEXT = st.one_of(st.text(max_size=80), st.binary(max_size=80), st.text(max_size=300))


def record_strategy(cls: type) -> st.SearchStrategy[Any]:
    kinds = {
        "I": U32,
        "Q": U64,
        "s": TEXT,
        "4": st.ip_addresses(v=4).map(str),
        "6": st.ip_addresses(v=6).map(str),
    }
    return st.builds(cls, *[kinds[k] for k in cls.LAYOUT])  # type: ignore[attr-defined]


KNOWN = {(c.KIND, c.FORMAT) for c in RECORD_TYPES}  # type: ignore[attr-defined]
WORD_ALIGNED = st.binary(max_size=40).map(lambda b: b + b"\0" * (pad4(len(b)) - len(b)))


def opaque_records(kind: str) -> st.SearchStrategy[OpaqueRecord]:
    # Numbers the decoder knows would come back decoded, so they are not opaque here.
    return st.builds(
        OpaqueRecord, st.integers(0, 2**20 - 1), st.integers(0, 4095), WORD_ALIGNED
    ).filter(lambda r: r.enterprise != 0 or (kind, r.format) not in KNOWN)


def records(kind: str) -> st.SearchStrategy[tuple[object, ...]]:
    known = [record_strategy(c) for c in RECORD_TYPES if kind == c.KIND]  # type: ignore[attr-defined]
    return st.lists(st.one_of(opaque_records(kind), *known), max_size=4).map(tuple)


DS_INDEX = st.one_of(st.integers(0, 2**24 - 1), U32)
IF_VALUE = st.one_of(st.integers(0, 2**30 - 1), U32)
FLOW_SAMPLES = st.builds(
    FlowSample,
    U32,
    st.integers(0, 255),
    DS_INDEX,
    U32,
    U32,
    U32,
    st.integers(0, 3),
    IF_VALUE,
    st.integers(0, 3),
    IF_VALUE,
    records("flow"),
    st.booleans(),
)
COUNTERS_SAMPLES = st.builds(
    CountersSample,
    U32,
    st.integers(0, 255),
    DS_INDEX,
    records("counter"),
    st.booleans(),
)
OPAQUE_SAMPLES = st.builds(
    OpaqueSample, st.integers(0, 2**20 - 1), st.integers(0, 4095), WORD_ALIGNED
).filter(lambda s: s.enterprise != 0 or s.format not in (1, 2, 3, 4))
DATAGRAMS = st.builds(
    Datagram,
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    U32,
    U32,
    U32,
    st.lists(st.one_of(FLOW_SAMPLES, COUNTERS_SAMPLES, OPAQUE_SAMPLES), max_size=4).map(tuple),
)


def expected_record(rec: Any) -> Any:
    """What the decoder gives back for ``rec``: strings cut (str if UTF-8), IPs canonical."""
    if isinstance(rec, OpaqueRecord):
        return rec
    changes: dict[str, Any] = {}
    for f, k in zip(dataclasses.fields(rec), rec.LAYOUT, strict=True):
        value = getattr(rec, f.name)
        if k == "s":
            raw = cut_utf8(value, rec.MAX_BYTES[f.name])
            try:
                changes[f.name] = raw.decode()
            except UnicodeDecodeError:
                changes[f.name] = raw
        elif k in "46":
            changes[f.name] = canonical_ip(value)
    return dataclasses.replace(rec, **changes)


def canonical_ip(text: str) -> str:
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    return socket.inet_ntop(family, socket.inet_pton(family, text))


def expected_sample(s: Any) -> Any:
    if isinstance(s, OpaqueSample):
        return s
    return dataclasses.replace(
        s, expanded=needs_expanded(s), records=tuple(expected_record(r) for r in s.records)
    )


@FUZZ
@given(DATAGRAMS)
def test_encode_decode_round_trip(dg: Datagram) -> None:
    expected = dataclasses.replace(
        dg,
        agent_address=canonical_ip(dg.agent_address),
        samples=tuple(expected_sample(s) for s in dg.samples),
    )
    data = encode_datagram(dg)
    out = decode(data)
    assert out == expected
    assert encode_datagram(out) == data

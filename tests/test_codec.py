"""Encoder, decoder and XDR helpers: round trips, cutting, clamping, fitting, errors."""

from __future__ import annotations

import dataclasses
import random
import re
import struct
from typing import Any

import pytest

from sflow_app._encode import (
    encode_counters_sample,
    encode_datagram,
    encode_datagram_header,
    encode_fitted_flow_sample,
    encode_flow_sample,
    encode_record,
    encode_sample,
    fit_flow_sample,
)
from sflow_app._xdr import cut_utf8
from sflow_app.decode import DecodeError, decode, to_fields, to_sflowtool
from sflow_app.records import (
    INTERNAL,
    RECORD_TYPES,
    AppInitiator,
    AppOperation,
    AppStatus,
    AppTarget,
    CountersSample,
    Datagram,
    ExtendedSocketIPv4,
    ExtendedSocketIPv6,
    FlowSample,
    HostParent,
    HttpCounters,
    HttpMethod,
    HttpRequest,
    MemcacheCounters,
    MemcacheOperation,
    OpaqueRecord,
    OpaqueSample,
    socket_record,
)


def flow(*records: object, **kw: Any) -> FlowSample:
    base: dict[str, Any] = dict(
        sequence_number=1,
        ds_class=3,
        ds_index=80,
        sampling_rate=10,
        sample_pool=10,
        drops=0,
        input_format=0,
        input_value=0,
        output_format=0,
        output_value=INTERNAL,
    )
    return FlowSample(records=records, **(base | kw))


def counters(*records: object, **kw: Any) -> CountersSample:
    return CountersSample(
        **({"sequence_number": 1, "ds_class": 3, "ds_index": 80} | kw), records=records
    )


def datagram(*samples: object, agent: str = "10.0.0.1") -> Datagram:
    return Datagram(agent, 80, 1, 1000, samples)


def roundtrip(dg: Datagram) -> Any:  # a Datagram; Any: tests read its records' fields
    return decode(encode_datagram(dg))


# ------------------------------------------------------------------ golden (spec §10)

GOLDEN_COUNTERS = (
    "00000005 00000001 0a000001 00000050 00000001 000003e8 00000001"
    "00000002 0000001c 00000001 03000050 00000001"
    "000007d2 00000008 00000002 00000001"
)
GOLDEN_FLOW = (
    "00000005 00000001 0a000001 00000050 00000002 000007d0 00000001"
    "00000001 00000048 00000001 03000050 0000000a 0000000a 00000000 00000000 3fffffff 00000001"
    "00000898 00000020 00000001 00000007 00000002 6b310000 00000001 00000005 00000064 00000001"
)


def test_golden_counters_sample() -> None:
    dg = datagram(counters(HostParent(2, 1)))
    data = encode_datagram(dg)
    assert data == bytes.fromhex(GOLDEN_COUNTERS.replace(" ", ""))
    assert len(data) == 64
    assert decode(data) == dg


def test_golden_flow_sample() -> None:
    op = MemcacheOperation(1, 7, "k1", 1, 5, 100, 1)
    dg = Datagram("10.0.0.1", 80, 2, 2000, (flow(op),))
    data = encode_datagram(dg)
    assert data == bytes.fromhex(GOLDEN_FLOW.replace(" ", ""))
    view = to_sflowtool(decode(data))
    element = view["samples"][0]["elements"][0]
    assert element["memcache_op_key"] == "k1"
    assert element["memcache_op_status"] == "1"
    assert view["samples"][0]["outputPort"] == "1073741823"


# ------------------------------------------------------------------ round trips


def random_value(kind: str, rng: random.Random) -> object:
    if kind == "I":
        return rng.choice([0, 1, 2**31, 2**32 - 1, rng.getrandbits(32)])
    if kind == "Q":
        return rng.choice([0, 2**32, 2**64 - 1, rng.getrandbits(64)])
    if kind == "4":
        return ".".join(str(rng.randrange(256)) for _ in range(4))
    if kind == "6":
        return "2001:db8::" + format(rng.getrandbits(16), "x")
    return "".join(rng.choice("abcé€😀/?&= ") for _ in range(rng.randrange(40)))


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda c: c.__name__)
def test_every_record_type_round_trips(cls: type) -> None:
    rng = random.Random(cls.__name__)
    for _ in range(50):
        values = [random_value(k, rng) for k in cls.LAYOUT]  # type: ignore[attr-defined]
        rec = cls(*values)
        limits = getattr(cls, "MAX_BYTES", {})
        expected = dataclasses.replace(  # type: ignore[type-var]
            rec, **{k: cut_utf8(getattr(rec, k), n).decode() for k, n in limits.items()}
        )
        kind = cls.KIND  # type: ignore[attr-defined]
        sample = flow(rec) if kind == "flow" else counters(rec)
        (out,) = roundtrip(datagram(sample)).samples
        assert out.records == (expected,)  # type: ignore[attr-defined]


def test_same_format_number_decodes_by_context() -> None:
    # 2204 is app_initiator in a flow sample, memcache_counters in a counters sample.
    from sflow_app.records import AppInitiator

    dg = datagram(flow(AppInitiator("me")), counters(MemcacheCounters(cmd_set=3)))
    out = roundtrip(dg)
    assert type(out.samples[0].records[0]) is AppInitiator  # type: ignore[attr-defined]
    assert type(out.samples[1].records[0]) is MemcacheCounters  # type: ignore[attr-defined]


def test_opaque_records_and_samples_survive_decode() -> None:
    host_descr = OpaqueRecord(0, 2000, bytes(range(8)))
    vendor = OpaqueRecord(4413, 7, b"\xff" * 12)
    packet = OpaqueRecord(0, 1, b"\x00\x00\x00\x01")  # sampled_header: not decoded here
    discarded = OpaqueSample(0, 5, b"\x01\x02\x03\x04")
    dg = datagram(counters(host_descr, HostParent()), flow(vendor, packet), discarded)
    assert roundtrip(dg) == dg
    fields = to_fields(roundtrip(dg))
    assert fields["samples"][0]["records"][0] == {
        "record": "unknown",
        "enterprise": 0,
        "format": 2000,
        "length": 8,
        "data_hex": "0001020304050607",
    }
    assert fields["samples"][2]["sample"] == "unknown"


def test_strings_decode_to_str_when_utf8_else_bytes() -> None:
    op = MemcacheOperation(key=b"\x80\xffbin")
    assert roundtrip(datagram(flow(op))).samples[0].records[0].key == b"\x80\xffbin"  # type: ignore[attr-defined]
    op = MemcacheOperation(key=b"plain")
    assert roundtrip(datagram(flow(op))).samples[0].records[0].key == "plain"  # type: ignore[attr-defined]


def test_a_string_field_equals_its_bytes_and_hashes_alike() -> None:
    # The decoder gives str for UTF-8 and bytes otherwise: a record built with bytes
    # must equal what comes back, and sets and dicts must agree with ==.
    sent = HttpRequest(uri=b"/a", host="h\u00e9")
    assert roundtrip(datagram(flow(sent))).samples[0].records[0] == sent
    assert HttpRequest(uri="/caf\udce9") == HttpRequest(uri=b"/caf\xe9")  # surrogate escape
    assert len({sent, HttpRequest(uri="/a", host="h\u00e9".encode())}) == 1
    assert HttpRequest(uri="/a") != HttpRequest(uri=b"/b")


def test_ipv6_agent_address_uses_type_2() -> None:
    header = encode_datagram_header("2001:db8::7", 1, 2, 3, 0)
    assert len(header) == 40
    assert header[4:8] == b"\0\0\0\x02"
    assert decode(header).agent_address == "2001:db8::7"


def test_unparseable_agent_address_is_never_type_0() -> None:
    header = encode_datagram_header("not-an-ip", 1, 2, 3, 0)
    assert header[:12] == bytes.fromhex("000000050000000100000000")


# -------------------------------------------------------------------- cutting


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_cut_never_splits_a_character(char: str) -> None:
    n = len(char.encode())
    text = "a" * 10 + char
    for limit in range(10, 10 + n):
        assert cut_utf8(text, limit) == b"a" * 10  # the character does not fit whole
    assert cut_utf8(text, 10 + n) == text.encode()
    assert cut_utf8(text.encode(), 10 + n - 1) == b"a" * 10  # valid UTF-8 bytes alike


def test_cut_plain_for_invalid_utf8_and_odd_limits() -> None:
    assert cut_utf8(b"\x80\x80\x80\x80", 2) == b"\x80\x80"
    assert cut_utf8("abc", 0) == b""
    assert cut_utf8("abc", 5) == b"abc"


def test_cut_judges_only_the_bytes_it_keeps() -> None:
    # Invalid UTF-8 past the cut (a surrogate-escaped byte ending a long URI) once made
    # the whole value "not UTF-8": cut plainly, through the middle of an é.
    assert cut_utf8("é" * 200 + "\udcff", 255) == "é".encode() * 127
    assert cut_utf8(b"\xc3\xa9" * 10 + b"\xff", 5) == b"\xc3\xa9" * 2
    assert cut_utf8(b"a\xffb\xc3\xa9", 4) == b"a\xffb"  # or before it
    assert cut_utf8(b"ab\xff\x80\x80", 3) == b"ab\xff"  # no character at the cut: plain
    rec = HttpRequest(uri="/" + "é" * 200 + "\udcff")
    assert roundtrip(datagram(flow(rec))).samples[0].records[0].uri == "/" + "é" * 127


def test_encoder_cuts_strings_to_their_maximum() -> None:
    rec = HttpRequest(uri="/" + "x" * 253 + "é", host="h" * 100, authuser="ü" * 20)
    out = roundtrip(datagram(flow(rec))).samples[0].records[0]
    assert out.uri == "/" + "x" * 253  # type: ignore[attr-defined]  # é would make 256
    assert out.host == "h" * 64  # type: ignore[attr-defined]
    assert out.authuser == "ü" * 16  # type: ignore[attr-defined]


def test_status_descr_goes_out_as_the_31_bytes_sflowtool_prints() -> None:
    # sflowtool and hsflowd hold status_descr in 32 bytes with the NUL: a 32nd was lost.
    rec = AppOperation(application="a" * 32, status_descr="E" * 40)
    out = roundtrip(datagram(flow(rec))).samples[0].records[0]
    assert (out.application, out.status_descr) == ("a" * 32, "E" * 31)  # type: ignore[attr-defined]


def test_a_peers_longer_status_descr_decodes_whole() -> None:
    # The spec's XDR allows 64 bytes: a peer that sends them is read, not refused.
    descr = b"D" * 64
    body = b"".join(
        struct.pack(">I", len(v)) + v + b"\0" * (-len(v) % 4) for v in (b"app", b"op", b"", descr)
    ) + struct.pack(">QQII", 1, 2, 3, 4)
    dg = roundtrip(datagram(flow(OpaqueRecord(0, 2202, body))))
    assert dg.samples[0].records[0] == AppOperation("app", "op", "", "D" * 64, 1, 2, 3, 4)


def test_surrogate_escaped_text_goes_out_as_its_bytes() -> None:
    raw = b"/caf\xe9"
    rec = HttpRequest(uri=raw.decode("utf-8", "surrogateescape"))
    assert roundtrip(datagram(flow(rec))).samples[0].records[0].uri == raw  # type: ignore[attr-defined]


# --------------------------------------------------------------- compact / expanded


def sample_format(data: bytes) -> int:
    return struct.unpack_from(">I", data)[0]  # type: ignore[no-any-return]


def test_compact_until_a_value_needs_more_bits() -> None:
    assert sample_format(encode_flow_sample(flow(ds_index=2**24 - 1))) == 1
    assert sample_format(encode_flow_sample(flow(ds_index=2**24))) == 3
    assert sample_format(encode_flow_sample(flow(ds_class=256))) == 3
    assert sample_format(encode_flow_sample(flow(output_value=2**30))) == 3
    assert sample_format(encode_flow_sample(flow(input_format=4))) == 3
    assert sample_format(encode_flow_sample(flow(expanded=True))) == 3
    assert sample_format(encode_counters_sample(counters(ds_index=2**24 - 1))) == 2
    assert sample_format(encode_counters_sample(counters(ds_index=2**24))) == 4
    assert sample_format(encode_counters_sample(counters(expanded=True))) == 4


def test_auto_expanded_sample_decodes_with_its_full_values() -> None:
    s = flow(HttpRequest(), ds_index=2**24, output_value=2**31)
    (out,) = roundtrip(datagram(s)).samples
    assert out == dataclasses.replace(s, expanded=True)


# ---------------------------------------------------------------------- clamping


def test_out_of_range_values_are_clamped_not_raised() -> None:
    rec = HttpRequest(
        method=-1,
        req_bytes=2**70,
        resp_bytes=-5,
        uS=2**40,
        status=None,  # type: ignore[arg-type]
    )
    out = roundtrip(datagram(flow(rec))).samples[0].records[0]
    assert (out.method, out.req_bytes, out.resp_bytes, out.uS, out.status) == (  # type: ignore[attr-defined]
        0,
        2**64 - 1,
        0,
        2**32 - 1,
        0,
    )
    counters_rec = HttpCounters(method_get_count=2**33, status_2XX_count=-1)
    out = roundtrip(datagram(counters(counters_rec))).samples[0].records[0]
    assert (out.method_get_count, out.status_2XX_count) == (2**32 - 1, 0)  # type: ignore[attr-defined]


def test_sample_and_header_values_are_clamped() -> None:
    s = flow(sequence_number=-1, sample_pool=2**40, ds_index=2**33)
    (out,) = roundtrip(datagram(s)).samples
    assert (out.sequence_number, out.sample_pool, out.ds_index) == (0, 2**32 - 1, 2**32 - 1)  # type: ignore[attr-defined]
    assert out.expanded  # type: ignore[attr-defined]
    c = counters(sequence_number=2**32, ds_class=-3)
    assert roundtrip(datagram(c)).samples[0].sequence_number == 2**32 - 1  # type: ignore[attr-defined]
    dg = decode(encode_datagram_header("10.0.0.1", -1, 2**32, 2**45, 0))
    assert (dg.sub_agent_id, dg.sequence_number, dg.uptime_ms) == (0, 2**32 - 1, 2**32 - 1)


def test_bad_ip_text_encodes_as_unspecified() -> None:
    rec = ExtendedSocketIPv4(6, "nonsense", "10.0.0.1", 1, 2)
    out = roundtrip(datagram(flow(rec))).samples[0].records[0]
    assert (out.local_ip, out.remote_ip) == ("0.0.0.0", "10.0.0.1")  # type: ignore[attr-defined]


def test_non_records_are_a_type_error() -> None:
    with pytest.raises(TypeError):
        encode_record(object())
    with pytest.raises(TypeError):
        encode_sample(object())  # type: ignore[arg-type]


# ---------------------------------------------------------------- socket records


def test_socket_record_picks_the_ipv4_form_where_possible() -> None:
    assert socket_record(6, "10.0.0.7", "192.0.2.1", 80, 5000) == ExtendedSocketIPv4(
        6, "10.0.0.7", "192.0.2.1", 80, 5000
    )
    assert socket_record(6, "::ffff:10.0.0.7", "::FFFF:192.0.2.1", 80, 5000) == (
        ExtendedSocketIPv4(6, "10.0.0.7", "192.0.2.1", 80, 5000)
    )
    assert socket_record(6, "2001:db8::1", "::ffff:192.0.2.1", 443, 1) == ExtendedSocketIPv6(
        6, "2001:db8::1", "::ffff:192.0.2.1", 443, 1
    )
    assert socket_record(17, "fe80::1%eth0", "fe80::2", 1, 2).local_ip == "fe80::1"
    assert socket_record(6, "garbage", "", 1, 2).local_ip == "0.0.0.0"


# ---------------------------------------------------------------------- fitting


def big_request() -> HttpRequest:
    return HttpRequest(
        HttpMethod.GET,
        1001,
        uri="/" + "u" * 300,
        host="h" * 64,
        referer="r" * 200,
        useragent="ü" * 100,
        xff="x" * 10,
    )


def test_fit_returns_the_same_sample_when_it_fits() -> None:
    s = flow(big_request())
    assert fit_flow_sample(s, len(encode_flow_sample(s))) is s


def test_fit_trims_the_longest_strings_first() -> None:
    s = flow(big_request(), ExtendedSocketIPv4())
    full = len(encode_flow_sample(s))
    fitted = fit_flow_sample(s, full - 100)
    assert fitted is not None
    assert len(encode_flow_sample(fitted)) <= full - 100
    rec = fitted.records[0]
    assert isinstance(rec, HttpRequest)
    assert len(rec.uri) < 255 and rec.xff == "x" * 10 and rec.host == "h" * 64
    assert fitted.records[1] == s.records[1]
    assert (fitted.sequence_number, fitted.sample_pool) == (s.sequence_number, s.sample_pool)


def test_fit_keeps_utf8_whole() -> None:
    s = flow(HttpRequest(useragent="€" * 42))
    fitted = fit_flow_sample(s, len(encode_flow_sample(s)) - 40)
    assert fitted is not None
    ua = fitted.records[0].useragent  # type: ignore[attr-defined]
    assert isinstance(ua, str) and set(ua) == {"€"} and len(ua) < 42


def test_fit_cuts_binary_keys_plainly() -> None:
    s = flow(MemcacheOperation(key=b"\x80" * 250))
    fitted = fit_flow_sample(s, len(encode_flow_sample(s)) - 100)
    assert fitted is not None
    key = fitted.records[0].key  # type: ignore[attr-defined]
    assert isinstance(key, bytes) and 0 < len(key) < 150 and set(key) == {0x80}


def test_fit_gives_up_when_even_empty_strings_do_not_fit() -> None:
    s = flow(big_request())
    empty = flow(HttpRequest())
    assert fit_flow_sample(s, len(encode_flow_sample(empty))) is not None
    assert fit_flow_sample(s, len(encode_flow_sample(empty)) - 4) is None
    assert fit_flow_sample(flow(HostParent()), 10) is None


def random_text(rng: random.Random, longest: int) -> str | bytes:
    n = rng.randrange(longest)
    kind = rng.randrange(4)
    if kind == 0:
        return ""
    if kind == 1:
        return "".join(rng.choice("aü€/?=&") for _ in range(n))
    if kind == 2:
        return bytes(rng.randrange(256) for _ in range(n))
    return "x" * n


def test_encode_once_gives_the_bytes_of_fit_then_encode() -> None:
    # What the exporter and capture() send (one encoding) is byte for byte what fitting
    # then encoding gave, at, just above and just below every limit that matters.
    rng = random.Random(15)
    for _ in range(300):
        t = lambda: random_text(rng, 400)  # noqa: E731
        records: list[object] = [HttpRequest(2, 1001, t(), t(), t(), t(), t(), t(), t(), 1, 2)]
        if rng.random() < 0.5:
            records.append(AppOperation(t(), t(), t(), t(), 1, 2, 3, 0))
        if rng.random() < 0.5:
            records.append(ExtendedSocketIPv6(6, "2001:db8::1", "2001:db8::2", 80, 5000))
        s = flow(*records)
        full = len(encode_flow_sample(s))
        for limit in {full + 4, full, full - 1, full - 4, full // 2, 60, 1360, 1400 - 40}:
            fitted = fit_flow_sample(s, limit)
            want = None if fitted is None else encode_flow_sample(fitted)
            got = encode_fitted_flow_sample(s, limit)
            assert got == want, (limit, s)
            assert got is None or len(got) <= limit


def test_encode_once_encodes_a_sample_that_fits_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from sflow_app import _encode

    calls = []
    encode_http = _encode._ENCODERS[HttpRequest]

    def counting(rec: Any) -> bytes:
        calls.append(rec)
        return encode_http(rec)

    monkeypatch.setitem(_encode._ENCODERS, HttpRequest, counting)
    s = flow(HttpRequest(uri="/a"))
    assert encode_fitted_flow_sample(s, 1360) == encode_flow_sample(flow(HttpRequest(uri="/a")))
    assert len(calls) == 2  # once for the fitted sample, once for the comparison
    calls.clear()
    assert encode_fitted_flow_sample(s, 10) is None  # too long: fitting takes over
    assert len(calls) > 1


def test_records_keep_their_dataclass_behaviour() -> None:
    # Their __init__ is a faster one (slot descriptors): same signature, defaults, errors.
    r = HttpRequest(2, uri="/x")
    assert r == HttpRequest(method=2, protocol=0, uri="/x") and hash(r) == hash(
        HttpRequest(2, 0, "/x")
    )
    assert r.method == 2 and r.host == "" and r.status == 0
    assert repr(r).startswith("HttpRequest(method=2, protocol=0, uri='/x', host=''")
    assert dataclasses.replace(r, uri="/y").uri == "/y"
    assert dataclasses.asdict(ExtendedSocketIPv4())["local_ip"] == "0.0.0.0"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.uri = "/z"  # type: ignore[misc]
    with pytest.raises(TypeError):
        FlowSample(1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        HttpRequest(nonsense=1)  # type: ignore[call-arg]
    assert HttpRequest().method is HttpMethod.OTHER
    assert FlowSample(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ()).expanded is False
    # Equality and hash by class, then fields (a base class has them, not generated code).
    assert AppInitiator("a") == AppInitiator("a") != AppTarget("a")
    assert AppInitiator("a") != AppInitiator("b") and HttpRequest() != (0,) * 13
    assert len({AppTarget("x"), AppTarget("x"), AppTarget("y")}) == 2
    assert repr(AppTarget("x")) == "AppTarget(actor='x')"
    assert repr(OpaqueRecord(1, 2, b"x")) == "OpaqueRecord(enterprise=1, format=2, data=b'x')"


# ------------------------------------------------------------------- decode errors

VALID = encode_datagram(datagram(flow(HttpRequest(uri="/a")), counters(HostParent())))


def test_decode_rejects_framing_errors_with_specific_messages() -> None:
    cases = {
        b"": "truncated: need 4 bytes at offset 0, have 0",
        b"\0\0\0\x04" + VALID[4:]: "unsupported datagram version 4",
        VALID[:4] + b"\0\0\0\x07" + VALID[8:]: "agent address type 7 (unknown)",
        VALID[:24] + b"\xff\xff\xff\xff" + VALID[28:]: "num_samples 4294967295 exceeds",
        VALID + b"\0\0\0\0": "4 bytes after the last of 2 samples",
        VALID[:32] + struct.pack(">I", 5000) + VALID[36:]: "length 5000 exceeds datagram",
        VALID[:32] + struct.pack(">I", 30) + VALID[36:]: "length 30 is not a multiple of 4",
        VALID[:-4]: "exceeds datagram",
        VALID[:72] + struct.pack(">I", 5000) + VALID[76:]: "flow record 0:2206 length 5000 "
        "exceeds sample",
    }
    for data, message in cases.items():
        with pytest.raises(DecodeError, match=re.escape(message)):
            decode(data)


def test_decode_reports_a_sample_length_that_disagrees_with_its_body() -> None:
    one = encode_datagram(datagram(counters(HostParent())))
    # Grow the sample length by 8 and append 8 bytes: the records end before the sample.
    bad = one[:32] + struct.pack(">I", 28 + 8) + one[36:] + b"\0" * 8
    with pytest.raises(DecodeError, match=r"length 36 does not match decoded body 28"):
        decode(bad)


def test_decode_reports_a_truncated_string_inside_a_record() -> None:
    data = bytearray(encode_datagram(datagram(flow(HttpRequest(uri="/abc")))))
    uri_length_at = 28 + 8 + 32 + 8 + 8
    data[uri_length_at : uri_length_at + 4] = struct.pack(">I", 10_000)
    with pytest.raises(DecodeError, match=r"flow record 0:2206 .*truncated: need 10000 bytes"):
        decode(bytes(data))


def test_decode_names_the_sample_whose_length_cannot_hold_it() -> None:
    header = encode_datagram_header("10.0.0.1", 0, 1, 0, 1)
    short = struct.pack(">II", 1, 8) + bytes(8)  # a flow sample's fixed part is 32 bytes
    with pytest.raises(
        DecodeError, match=r"^sample 1 of 1 \(0:1\) \(length 8\) at offset 28: truncated: need 32"
    ):
        decode(header + short)
    inner = encode_sample(counters(HostParent()))
    bad = inner[:8] + struct.pack(">III", 1, 80, 5) + inner[20:]  # 5 records, room for 1
    with pytest.raises(DecodeError, match=r"^sample 1 of 1 \(0:2\) \(length 28\) at offset 28: "):
        decode(header + bad)


def test_decode_rejects_string_padding_that_is_not_zero() -> None:
    # Accepted, such bytes vanish on re-encoding: a record would not be what was sent.
    good = encode_datagram(datagram(flow(HttpRequest(uri="/a"), AppInitiator(actor="abcde"))))
    assert decode(good)
    uri_pad_at = 28 + 8 + 32 + 8 + 8 + 4 + 2
    actor_pad_at = len(good) - 3
    cases = [(uri_pad_at, 0), (uri_pad_at, 1), (actor_pad_at, 0), (actor_pad_at, 2)]
    for pad_at, into in cases:
        data = bytearray(good)
        data[pad_at + into] = 0x20
        with pytest.raises(DecodeError, match=rf"string padding at offset {pad_at} is not zero"):
            decode(bytes(data))


# --------------------------------------------------------------------- views


def test_sflowtool_view_formats() -> None:
    s = flow(
        AppOperation(status=AppStatus.UNAUTHORIZED),
        AppOperation(status=12),
        MemcacheOperation(key=b"a:b \x80"),
        OpaqueRecord(0, 1, b"\0" * 4),
        input_format=1,
        input_value=5,
        output_format=2,
        output_value=3,
    )
    view = to_sflowtool(datagram(s, OpaqueSample(0, 5, b""), agent="2001:db8::1"))
    sample = view["samples"][0]
    assert view["agent"] == "2001:0db8:0000:0000:0000:0000:0000:0001"
    assert (sample["inputPort"], sample["outputPort"]) == ("dropCode 5", "multiple 3")
    assert [e.get("status") for e in sample["elements"][:2]] == [
        "UNATHORIZED",
        "<out-of-range=12>",
    ]
    assert sample["elements"][2]["memcache_op_key"] == "a%3Ab+%80"
    assert sample["elements"][3] == {"flowBlock_tag": "0:1"}
    assert view["samples"][1] == {"sampleType_tag": "0:5"}
    assert all(isinstance(v, str) for e in sample["elements"] for v in e.values())

"""The shared conformance vectors: encode from ``fields``, decode to ``fields``, sflowtool view.

The vectors are kept in ``tests/data/vectors`` (see ``tests/data/README.md``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import VECTORS

from sflow_app._encode import encode_datagram
from sflow_app._xdr import cut_utf8, to_bytes
from sflow_app.decode import DecodeError, decode, to_fields, to_sflowtool
from sflow_app.records import (
    RECORD_TYPES,
    AppOperation,
    CountersSample,
    Datagram,
    ExtendedProxyRequest,
    FlowSample,
    MemcacheOperation,
)

POSITIVE = sorted(VECTORS.glob("*.json"))
NEGATIVE = sorted(VECTORS.glob("bad/*.json"))

# What each negative vector's DecodeError must say.
REJECT_REASONS = {
    "agent_address_type_0": "agent address type 0 (unknown)",
    "record_length_mismatch": "flow record 0:2206 length 116 does not match decoded body 124",
    "truncated_datagram": "sample 1 of 1 (0:1) length 192 exceeds datagram",
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_vectors_are_present() -> None:
    assert VECTORS.is_dir(), f"conformance vectors not found at {VECTORS}"
    assert len(POSITIVE) >= 30
    assert len(NEGATIVE) >= 3


# ------------------------------------------------------------- fields -> objects

RECORDS_BY_NAME = {cls.NAME: cls for cls in RECORD_TYPES}  # type: ignore[attr-defined]
BOOKKEEPING = {"record", "enterprise", "format", "length"}


def build_record(f: dict[str, Any]) -> object:
    cls = RECORDS_BY_NAME[f["record"]]
    assert (f["enterprise"], f["format"]) == (0, cls.FORMAT)  # type: ignore[attr-defined]
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in f:
            kwargs[field.name] = f[field.name]
        else:
            kwargs[field.name] = bytes.fromhex(f[field.name + "_hex"])
    used = BOOKKEEPING | set(kwargs) | {k + "_hex" for k in kwargs}
    assert set(f) <= used, f"unused keys {set(f) - used}"
    return cls(**kwargs)


def build_sample(f: dict[str, Any]) -> object:
    records = tuple(build_record(r) for r in f["records"])
    assert f["num_records"] == len(records)
    source = f["source_id"]
    expanded = f["format"] in (3, 4)
    if f["format"] in (1, 3):
        return FlowSample(
            f["sequence_number"],
            source["ds_class"],
            source["ds_index"],
            f["sampling_rate"],
            f["sample_pool"],
            f["drops"],
            f["input"]["format"],
            f["input"]["value"],
            f["output"]["format"],
            f["output"]["value"],
            records,
            expanded,
        )
    return CountersSample(
        f["sequence_number"], source["ds_class"], source["ds_index"], records, expanded
    )


def build_datagram(f: dict[str, Any]) -> Datagram:
    samples = tuple(build_sample(s) for s in f["samples"])
    assert f["num_samples"] == len(samples)
    return Datagram(
        f["agent_address"]["address"],
        f["sub_agent_id"],
        f["sequence_number"],
        f["uptime_ms"],
        samples,
        f["version"],
    )


# -------------------------------------------------------------- sflowtool quirks


# sflowtool's buffers where the encoder sends less than they hold: status_descr is cut
# to 31 bytes, sflowtool's buffer (and hsflowd's) is 32.
SFLOWTOOL_BUFFERS: dict[type, dict[str, int]] = {AppOperation: {"status_descr": 32}}


def _sflowtool_cut(rec: object) -> object:
    """Quirk 3: sflowtool prints at most max-1 bytes of every string."""
    limits = getattr(rec, "MAX_BYTES", {}) | SFLOWTOOL_BUFFERS.get(type(rec), {})
    cut = {}
    for name, limit in limits.items():
        value = getattr(rec, name)
        raw = value.encode() if isinstance(value, str) else value
        if len(raw) >= limit:
            short = raw[: limit - 1]
            cut[name] = short.decode() if isinstance(value, str) else short
    return dataclasses.replace(rec, **cut) if cut else rec  # type: ignore[type-var]


def as_sflowtool_prints(dg: Datagram, size: int) -> dict[str, Any]:
    """``to_sflowtool`` with sflowtool 6.11's printing bugs applied (README quirks 3-6)."""
    samples = tuple(
        dataclasses.replace(s, records=tuple(_sflowtool_cut(r) for r in s.records))
        if isinstance(s, FlowSample | CountersSample)
        else s
        for s in dg.samples
    )
    out = to_sflowtool(dataclasses.replace(dg, samples=samples), datagram_size=size)
    for sample, original in zip(out["samples"], dg.samples, strict=True):
        for i, (element, rec) in enumerate(zip(sample["elements"], original.records, strict=True)):  # type: ignore[attr-defined]
            if isinstance(rec, ExtendedProxyRequest):  # quirk 6: not decoded
                sample["elements"][i] = {"flowBlock_tag": element["flowBlock_tag"]}
            elif isinstance(rec, MemcacheOperation) and "memcache_op_key" in element:
                key = element["memcache_op_key"]
                if re.search(r"%[89A-F][0-9A-F]", key):  # quirk 5: garbage, removed
                    del element["memcache_op_key"]
                else:  # quirk 4: hex digits swapped
                    element["memcache_op_key"] = re.sub(r"%(.)(.)", r"%\2\1", key)
    return out


# ------------------------------------------------------------------------ tests


@pytest.mark.parametrize("path", POSITIVE, ids=lambda p: p.stem)
def test_encode_reproduces_datagram(path: Path) -> None:
    vector = load(path)
    dg = build_datagram(vector["fields"])
    if as_sent(dg) != dg:  # a string above what the encoder sends: it goes out cut
        assert decode(encode_datagram(dg)) == as_sent(dg)
        return
    assert encode_datagram(dg).hex() == vector["datagram_hex"]


def as_sent(dg: Datagram) -> Datagram:
    """``dg`` with every string cut to what the encoder sends (records' MAX_BYTES)."""

    def cut(rec: object) -> object:
        short = {
            name: cut_utf8(getattr(rec, name), limit).decode()
            for name, limit in getattr(rec, "MAX_BYTES", {}).items()
            if len(to_bytes(getattr(rec, name))) > limit
        }
        return dataclasses.replace(rec, **short) if short else rec  # type: ignore[type-var]

    samples = tuple(
        dataclasses.replace(s, records=tuple(cut(r) for r in s.records))
        if isinstance(s, FlowSample | CountersSample)
        else s
        for s in dg.samples
    )
    return dataclasses.replace(dg, samples=samples)


def test_the_longest_status_descr_vector_is_sent_as_sflowtool_prints_it() -> None:
    # app_strings_max_length holds a 32-byte status_descr: sent, it is the 31 bytes
    # sflowtool printed of it, and the peer's 32 still decode.
    vector = load(VECTORS / "app_strings_max_length.json")
    sent = decode(encode_datagram(build_datagram(vector["fields"])))
    printed = vector["sflowtool"]["samples"][0]["elements"][0]["status_descr"]
    assert sent.samples[0].records[0].status_descr == printed  # type: ignore[attr-defined]
    assert len(printed) == 31
    peer = decode(bytes.fromhex(vector["datagram_hex"]))
    assert len(peer.samples[0].records[0].status_descr) == 32  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", POSITIVE, ids=lambda p: p.stem)
def test_decode_gives_fields(path: Path) -> None:
    vector = load(path)
    dg = decode(bytes.fromhex(vector["datagram_hex"]))
    assert dg == build_datagram(vector["fields"])
    assert to_fields(dg) == vector["fields"]


@pytest.mark.parametrize("path", POSITIVE, ids=lambda p: p.stem)
def test_sflowtool_view_agrees(path: Path) -> None:
    vector = load(path)
    data = bytes.fromhex(vector["datagram_hex"])
    dg = decode(data)
    assert as_sflowtool_prints(dg, len(data)) == vector["sflowtool"]
    assert to_sflowtool(dg)["datagramSize"] == str(len(data))  # re-encoded size


def test_sflowtool_view_really_differs_from_sflowtool_output() -> None:
    # Guards the helper above: without the quirks the views must not agree.
    vector = load(VECTORS / "memcache_key_punctuation.json")
    data = bytes.fromhex(vector["datagram_hex"])
    assert to_sflowtool(decode(data), len(data)) != vector["sflowtool"]


@pytest.mark.parametrize("path", NEGATIVE, ids=lambda p: p.stem)
def test_negative_vector_is_rejected(path: Path) -> None:
    vector = load(path)
    assert vector["expect"] == "reject"
    with pytest.raises(DecodeError) as info:
        decode(bytes.fromhex(vector["datagram_hex"]))
    assert REJECT_REASONS.get(path.stem, "") in str(info.value)


def test_negative_vectors_describe_encodable_datagrams() -> None:
    # The bad vectors' fields minus the damage encode to a valid datagram: the decoder
    # rejects the damage, not the content.
    for path in NEGATIVE:
        fields = copy.deepcopy(load(path)["fields"])
        if fields["agent_address"]["type"] == 0:
            continue
        fields.pop("mutation", None)
        for sample in fields["samples"]:
            for rec in sample["records"]:
                rec["length"] -= rec.pop("length_adjust", 0)
        data = encode_datagram(build_datagram(fields))
        assert to_fields(decode(data)) == fields

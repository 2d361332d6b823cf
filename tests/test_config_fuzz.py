"""Fuzzing _config: parse_auto never raises and is coherent; resolve never raises on env."""

from __future__ import annotations

import ipaddress

from helpers import HSFLOWD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sflow_app._config import (
    DATAGRAM_MAX,
    DATAGRAM_MIN,
    MAX_WARNINGS,
    POLLING_MAX,
    QUEUE_MIN,
    U32,
    AutoFile,
    parse_auto,
    resolve,
)

REAL = sorted(HSFLOWD.glob("*.auto"))
assert REAL, f"no sample files under {HSFLOWD}"
TEXTS = [p.read_text() for p in REAL]
APPS = ["http", "memcache", "app.shop", "app.shop.cart", "app", "", ".", "APP.X.Y"]
FAST = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


def check_coherent(auto: AutoFile) -> None:
    assert auto.state in ("ok", "torn", "off")
    assert auto.usable is (auto.state == "ok")
    assert isinstance(auto.reason, str) and auto.reason
    assert len(auto.warnings) <= MAX_WARNINGS + 1
    if auto.usable:
        assert auto.rev_start is not None and auto.rev_start == auto.rev_end
        assert auto.agent_ip is not None and "%" not in auto.agent_ip
        ipaddress.ip_address(auto.agent_ip)
    for ip, port in auto.collectors:
        ipaddress.ip_address(ip)
        assert 1 <= port <= 65535
    assert len(set(auto.collectors)) == len(auto.collectors)
    for app in APPS:
        for value in (auto.sampling_for(app), auto.polling_for(app)):
            assert value is None or 0 <= value <= U32


# -- parse_auto ---------------------------------------------------------------------

KEYS = [
    "rev_start",
    "rev_end",
    "sampling",
    "polling",
    "datagram",
    "header",
    "agentIP",
    "agent",
    "hostname",
    "collector",
    "ds_index",
    "jsonPort",
    "sampling.http",
    "polling.app.a.b",
    "sampling.",
    "Sampling.APP.x",
]
VALUES = st.one_of(
    st.integers(-5, 2**33).map(str),
    st.text(max_size=20),
    st.sampled_from(
        [
            "10.0.0.1",
            "::1",
            "10.0.0.1 6343",
            "1.2.3.4/6343/lo/",
            "fe80::1%eth0",
            "::1 0 9",
            "/",
            "//",
            " = ",
        ]
    ),
)
LINES = st.builds(
    lambda k, sep, v: f"{k}{sep}{v}",
    st.sampled_from(KEYS),
    st.sampled_from(["=", " = ", "\t=", "", "=="]),
    VALUES,
)


@FAST
@given(st.text())
def test_arbitrary_text(text: str) -> None:
    check_coherent(parse_auto(text))


@FAST
@given(
    st.lists(st.one_of(LINES, st.text(max_size=30)), max_size=30), st.sampled_from(["\n", "\r\n"])
)
def test_key_value_soup(lines: list[str], newline: str) -> None:
    check_coherent(parse_auto(newline.join(lines)))


@st.composite
def mutated(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(TEXTS)).split("\n")
    for _ in range(draw(st.integers(1, 5))):
        i = draw(st.integers(0, len(lines)))
        op = draw(st.sampled_from(["drop", "dup", "insert", "swap", "case", "cut"]))
        if op == "insert" or not lines:
            lines.insert(i, draw(st.one_of(LINES, st.text(max_size=30))))
            continue
        i = min(i, len(lines) - 1)
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "case":
            lines[i] = lines[i].swapcase()
        else:
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    return "\n".join(lines)


@FAST
@given(mutated())
def test_mutated_real_files(text: str) -> None:
    check_coherent(parse_auto(text))


def test_every_prefix_of_a_real_file_is_never_trusted_too_early() -> None:
    # A reader racing hsflowd's in-place write sees a prefix; only a prefix that already
    # holds the whole rev_end line may be used.
    for text in TEXTS:
        if not parse_auto(text).usable:
            continue
        start = text.rindex("rev_end=") + len("rev_end=")
        complete_at = start + len(text[start:].split("\n", 1)[0].strip())
        for cut in range(len(text) + 1):
            auto = parse_auto(text[:cut])
            check_coherent(auto)
            assert auto.usable is (cut >= complete_at), (cut, text[:cut])


@FAST
@given(st.sampled_from(TEXTS), st.sampled_from(TEXTS), st.integers(0, 400))
def test_new_head_over_old_tail_is_not_trusted(new: str, old: str, cut: int) -> None:
    new = new.replace("rev_start=", "rev_start=9").replace("rev_end=", "rev_end=9")
    head = new[:cut]
    auto = parse_auto(head + old[len(head) :])
    check_coherent(auto)
    if auto.usable and auto.rev_start == parse_auto(new).rev_start:
        # the new revision is trusted only once its own rev_end line is complete
        assert cut >= new.rindex("rev_end=") + len("rev_end=9")


# -- resolve with random environments ------------------------------------------------

ENV_NAMES = (
    st.sampled_from(
        [
            "SFLOW_APP_DISABLE",
            "SFLOW_APP_COLLECTORS",
            "SFLOW_APP_AGENT_IP",
            "SFLOW_APP_SAMPLING",
            "SFLOW_APP_POLLING",
            "SFLOW_APP_DATAGRAM",
            "SFLOW_APP_DS_INDEX",
            "SFLOW_APP_SUB_AGENT_ID",
            "SFLOW_APP_NAME",
            "SFLOW_APP_PARENT_DS_INDEX",
            "SFLOW_APP_QUEUE",
            "SFLOW_APP_CONFIG",
            "SFLOW_APP_SAMPLING_HTTP",
            "SFLOW_APP_SAMPLING_APP_SHOP",
            "SFLOW_APP_POLLING_MEMCACHE",
            "SFLOW_APP_SAMPLING_",
            "SFLOW_APP_POLLING__",
        ]
    )
    | st.text(max_size=25).map(lambda s: "SFLOW_APP_SAMPLING_" + s)
    | st.text(max_size=10)
)
ENV_VALUES = st.one_of(
    st.integers(-10, 2**33).map(str),
    st.text(max_size=40),
    st.sampled_from(
        [
            "1",
            "yes",
            "off",
            "10.0.0.1",
            "10.0.0.1:7000,[::1]:9",
            "::1",
            "[::1",
            "a:b:c",
            ",",
            "1.2.3.4:99999",
            "fe80::1%lo",
        ]
    ),
)


@FAST
@given(
    st.dictionaries(ENV_NAMES, ENV_VALUES, max_size=12),
    st.one_of(st.none(), st.sampled_from(TEXTS).map(parse_auto), mutated().map(parse_auto)),
)
def test_resolve_never_raises_on_env(env: dict[str, str], auto: AutoFile | None) -> None:
    s = resolve({}, env, auto, "/etc/hsflowd.auto")
    assert s.enabled is bool(s.collectors)
    assert s.source in ("file", "explicit", "off") and (s.source == "off") is not s.enabled
    assert DATAGRAM_MIN <= s.datagram <= DATAGRAM_MAX and s.queue_capacity >= QUEUE_MIN
    for app in APPS:
        assert 0 <= s.sampling_for(app) <= U32
        assert 0 <= s.polling_for(app) <= POLLING_MAX
    assert all(isinstance(w, str) for w in s.warnings)

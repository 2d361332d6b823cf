"""The hsflowd.auto parser: text in, ``AutoFile`` out.

Pure: no file, environment or clock access; never raises on any input (bad lines become
``warnings``). Also home to the value syntax and the per-application lookup that the file
shares with the environment and configure() layers in _config.py, which imports them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_PORT = 6343
U32 = 2**32 - 1
MAX_WARNINGS = 20  # a garbage file must not produce a garbage-sized log line
SHOWN = 60  # characters of a bad value a warning quotes

AutoState = Literal["ok", "torn", "off"]
NO_REV = "no rev_start line"
Collectors = tuple[tuple[str, int], ...]


# -- small validators: each raises ValueError with a message fit for a log line --------


def shown(text: str) -> str:
    """``text`` quoted for a warning, cut: one 60 KB line must not make a 60 KB log line."""
    if len(text) <= SHOWN:
        return repr(text)
    return f"{text[:SHOWN]!r}... ({len(text)} characters)"


_DIGITS = re.compile(r"[0-9]{1,20}")  # ASCII only: int() also takes "1_000" and "٣"


def parse_uint(text: str, lo: int = 0, hi: int = U32) -> int:
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"{shown(text)} is not a non-negative integer")
    value = int(text)
    if not lo <= value <= hi:
        raise ValueError(f"{value} is outside {lo}..{hi}")
    return value


def parse_ip(text: str, *, scoped: bool = True) -> str:
    """Normalised IP literal. Collectors keep a v6 scope (fe80::1%eth0 needs it to send);
    the agent address goes on the wire as 16 bytes, so it drops it."""
    text = text.strip()
    if not scoped:
        text = text.split("%", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{shown(text)} is not an IPv4 or IPv6 address") from None


def _named(ip: str, what: str) -> str:
    """An address that names one host: 0.0.0.0 and :: are a listener's "any" (a datagram
    to them reaches this host's loopback), and a multicast group is no agent."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if address.is_unspecified:
        raise ValueError(f"{ip} is the unspecified address (a listener's 'any'), not {what}")
    if what == "an agent" and address.is_multicast:
        raise ValueError(f"{ip} is a multicast group, not {what}")
    return ip


# For the variables and configure(); the file's lines are hsflowd's own choice.
def parse_collector_ip(text: str) -> str:
    return _named(parse_ip(text), "a collector")


def parse_agent_ip(text: str) -> str:
    return _named(parse_ip(text, scoped=False), "an agent")


def parse_port(text: str) -> int:
    return parse_uint(text, 1, 65535)


def parse_app_name(name: str) -> str:
    name = name.strip().lower()
    if not all(name.split(".")):
        raise ValueError(f"bad application name {shown(name)}")
    return name


# -- application lookup -------------------------------------------------------------


def _deepest(table: Mapping[str, int], app: str, env_style: bool = False) -> int | None:
    """hsflowd's lookupApplicationSettings: the deepest match on whole dotted components,
    so ``app.shop`` applies to ``app.shop.cart`` and ``app.sho`` does not."""
    parts = app.lower().split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        value = table.get(key.upper().replace(".", "_") if env_style else key)
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class Rates:
    """One layer's sampling (or polling) values: a generic one and per-application ones."""

    generic: int | None = None
    apps: Mapping[str, int] = field(default_factory=dict)
    env_style: bool = False  # keys are SFLOW_APP_SAMPLING_<APP> suffixes, e.g. APP_SHOP

    def match(self, app: str) -> int | None:
        specific = _deepest(self.apps, app, self.env_style)
        return self.generic if specific is None else specific


# -- hsflowd.auto -------------------------------------------------------------------


@dataclass(frozen=True)
class AutoFile:
    """One read of hsflowd.auto. ``state``: "ok" = use it; "torn" = caught hsflowd's
    in-place rewrite half way, keep the previous settings and read again; "off" = send
    nothing (empty, rev-only, no agentIP, or refused/missing as reported by the watcher)."""

    state: AutoState
    reason: str
    rev_start: int | None = None
    rev_end: int | None = None
    hostname: str | None = None
    sampling: int | None = None
    polling: int | None = None
    datagram: int | None = None
    header: int | None = None
    agent_ip: str | None = None
    agent: str | None = None
    ds_index: int | None = None
    json_port: int | None = None
    app_sampling: Mapping[str, int] = field(default_factory=dict)
    app_polling: Mapping[str, int] = field(default_factory=dict)
    collectors: Collectors = ()
    device_ignored: bool = False  # an ip/port/dev/ns collector named a device or namespace
    warnings: tuple[str, ...] = ()

    @classmethod
    def off(cls, reason: str, *, warn: bool = False) -> AutoFile:
        return cls("off", reason, warnings=(reason,) if warn else ())

    @property
    def usable(self) -> bool:
        return self.state == "ok"

    def sampling_for(self, app: str) -> int | None:
        return Rates(self.sampling, self.app_sampling).match(app)

    def polling_for(self, app: str) -> int | None:
        return Rates(self.polling, self.app_polling).match(app)


_FILE_INTS = {
    "rev_start": U32,
    "rev_end": U32,
    "sampling": U32,
    "polling": U32,
    "datagram": U32,
    "header": U32,
    "ds_index": U32,
    "jsonport": 65535,
}
_FILE_FIELDS = {"jsonport": "json_port", "agentip": "agent_ip"}


def _file_collector(value: str) -> tuple[str, int, bool]:
    """``ip [port [priority]]`` or ``ip/port/dev/ns`` -> (ip, port, names a device/ns)."""
    tokens = value.split()
    if "/" in value:
        parts = value.split("/")
        if len(tokens) != 1 or len(parts) > 4:
            raise ValueError(f"bad collector {shown(value)} (expected ip/port/dev/ns)")
        ip, port, dev, ns = (*parts, "", "", "")[:4]
        return parse_ip(ip), (parse_port(port) if port else DEFAULT_PORT), bool(dev or ns)
    if not 1 <= len(tokens) <= 3:  # a third token is hsflowd 1.x's priority: ignored
        raise ValueError(f"bad collector {shown(value)} (expected ip [port])")
    return parse_ip(tokens[0]), (parse_port(tokens[1]) if len(tokens) > 1 else DEFAULT_PORT), False


def parse_auto(text: str) -> AutoFile:
    """Parse hsflowd.auto text (sflow-wire.md section 7). Never raises."""
    values: dict[str, Any] = {}
    apps: dict[str, dict[str, int]] = {"sampling": {}, "polling": {}}
    collectors: list[tuple[str, int]] = []
    device = False
    warnings: list[str] = []
    revs: list[str] = []
    settings_lines = 0
    # A byte-order mark (a file saved by a Windows editor) would make the first key unknown.
    for lineno, raw in enumerate(text.removeprefix("\ufeff").split("\n"), 1):
        line = raw.split("#", 1)[0].strip()  # strip() also takes the CR of CRLF
        if not line:
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key:
            warnings.append(f"line {lineno}: expected key=value")
            continue
        if key in ("rev_start", "rev_end"):
            revs.append(key)
        else:
            settings_lines += 1
        try:
            if key in _FILE_INTS:
                values[key] = parse_uint(value, 0, _FILE_INTS[key])
            elif key in ("hostname", "agent"):
                values[key] = value
            elif key == "agentip":
                values[key] = parse_ip(value, scoped=False)
            elif key == "collector":
                ip, port, named_device = _file_collector(value)
                collectors.append((ip, port))
                device = device or named_device
            elif key.startswith(("sampling.", "polling.")):
                kind, _, app = key.partition(".")
                apps[kind][parse_app_name(app)] = parse_uint(value)
            # anything else: a key from a newer hsflowd, ignored (forward compatible)
        except ValueError as exc:
            warnings.append(f"line {lineno}: {key} ignored: {exc}")
    if len(warnings) > MAX_WARNINGS:
        # No count: a file that grows would make a new warning at every change.
        warnings[MAX_WARNINGS:] = [f"... and more (only the first {MAX_WARNINGS} are listed)"]
    state, reason = _judge(values, revs, settings_lines)
    return AutoFile(
        state,
        reason,
        **{_FILE_FIELDS.get(k, k): v for k, v in values.items()},
        app_sampling=apps["sampling"],
        app_polling=apps["polling"],
        collectors=tuple(dict.fromkeys(collectors)),
        device_ignored=device,
        warnings=tuple(warnings),
    )


def _judge(
    values: Mapping[str, Any], revs: list[str], settings_lines: int
) -> tuple[AutoState, str]:
    start, end = values.get("rev_start"), values.get("rev_end")
    if not revs and not settings_lines:
        return "off", "empty file"
    if start is None:
        return "off", NO_REV
    # hsflowd rewrites in place: a read can see the new head and the old tail (whose
    # rev_end repeats), or the new head only. Either way: keep the old settings, retry.
    if len(revs) != len(set(revs)):
        return "torn", "torn read (rev_start/rev_end repeated)"
    if end is None:
        return "torn", f"torn read (rev_start={start}, no rev_end)"
    if start != end:
        return "torn", f"torn read (rev_start={start}, rev_end={end})"
    if not settings_lines:
        return "off", "hsflowd suppressed output (rev-only file)"
    if values.get("agentip") is None:
        return "off", "no agentIP"
    return "ok", f"rev {start}"

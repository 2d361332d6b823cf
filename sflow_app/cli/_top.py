"""What ``sflow-app top`` shows, worked out from the samples a collector receives.

Every flow sample stands for ``sampling_rate`` transactions (sFlow's own estimate), so
counts, bytes and rates are scaled by it and percentiles are weighted by it. Rows are
whole numbers with thousands separators (3,900, never 3.9k): scripts and people both
read them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..records import (
    AppOperation,
    AppStatus,
    CountersSample,
    Datagram,
    FlowSample,
    HttpMethod,
    HttpRequest,
    MemcacheCmd,
    MemcacheOperation,
    MemcacheStatus,
)
from .render import enum_name, plural, text

ROWS = 10


def weighted_percentile(values: list[tuple[int, int]], p: float) -> int | None:
    """The ``p`` (0..1) percentile of (value, weight) pairs, nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    total = sum(w for _, w in ordered)
    target = p * total
    seen = 0
    for value, weight in ordered:
        seen += weight
        if seen >= target:
            return value
    return ordered[-1][0]


@dataclass
class Group:
    """Estimated transactions of one kind (a URI, a key, an operation)."""

    count: int = 0
    samples: int = 0
    bytes: int = 0
    durations: list[tuple[int, int]] = field(default_factory=list)  # (uS, weight)
    statuses: Counter[str] = field(default_factory=Counter)

    def add(self, rate: int, us: int, nbytes: int, status: str) -> None:
        self.count += rate
        self.samples += 1
        self.bytes += nbytes * rate
        self.durations.append((us, rate))
        self.statuses[status] += rate

    def pct(self, p: float) -> str:
        value = weighted_percentile(self.durations, p)
        return "-" if value is None else f"{value / 1000:.1f}"


@dataclass
class Service:
    datagrams: int = 0
    samples: int = 0
    estimated: int = 0  # transactions the flow samples stand for


class Top:
    def __init__(self) -> None:
        self.datagrams = 0
        self.dropped = 0  # by the kernel, its receive buffer full: this view fell behind
        self.services: defaultdict[str, Service] = defaultdict(Service)
        self.uris: defaultdict[tuple[str, str], Group] = defaultdict(Group)
        self.routes: defaultdict[tuple[str, str], Group] = defaultdict(Group)
        self.http_status: Counter[int] = Counter()
        self.keys: defaultdict[str, Group] = defaultdict(Group)
        self.missed: defaultdict[str, Group] = defaultdict(Group)
        self.commands: defaultdict[str, Group] = defaultdict(Group)
        self.operations: defaultdict[str, Group] = defaultdict(Group)

    def add(self, dg: Datagram) -> None:
        self.datagrams += 1
        name = f"{dg.agent_address}/{dg.sub_agent_id}"
        service = self.services[name]
        service.datagrams += 1
        for sample in dg.samples:
            service.samples += 1
            if isinstance(sample, FlowSample):
                service.estimated += sample.sampling_rate
                self._flow(name, sample)
            elif not isinstance(sample, CountersSample):
                continue

    def _flow(self, service: str, sample: FlowSample) -> None:
        rate = max(sample.sampling_rate, 1)
        http = next((r for r in sample.records if isinstance(r, HttpRequest)), None)
        for rec in sample.records:
            if isinstance(rec, HttpRequest):
                uri = text(rec.uri).split("?", 1)[0] or "-"
                method = enum_name(HttpMethod, rec.method)
                status = f"{rec.status // 100}xx"
                self.uris[service, f"{method} {uri}"].add(rate, rec.uS, rec.resp_bytes, status)
                self.http_status[rec.status] += rate
            elif isinstance(rec, AppOperation) and http is not None:
                # The route template an integration named (the sample's HTTP request).
                method = enum_name(HttpMethod, http.method)
                route = f"{method} {text(rec.operation)}"
                status = f"{http.status // 100}xx"
                self.routes[service, route].add(rate, http.uS, http.resp_bytes, status)
            elif isinstance(rec, AppOperation):
                op = f"{text(rec.application)}: {text(rec.operation)}"
                status = enum_name(AppStatus, rec.status)
                self.operations[op].add(rate, rec.uS, rec.resp_bytes, status)
            elif isinstance(rec, MemcacheOperation):
                key = text(rec.key) or "-"
                cmd = enum_name(MemcacheCmd, rec.cmd)
                status = enum_name(MemcacheStatus, rec.status)
                self.keys[key].add(rate, rec.uS, rec.value_bytes, status)
                self.commands[cmd].add(rate, rec.uS, rec.value_bytes, status)
                if rec.status == MemcacheStatus.NOT_FOUND:
                    self.missed[key].add(rate, rec.uS, 0, status)

    # -- plain text ---------------------------------------------------------------------
    def tables(self, elapsed: float) -> list[tuple[str, list[str], list[list[str]]]]:
        """(title, column names, rows) for every section that has something to show; the
        last column names the row (a URI, a key), the others are numbers."""
        secs = max(elapsed, 1e-9)

        def n(value: int) -> str:
            return f"{value:,}"

        def rate(value: int) -> str:
            return f"{value / secs:,.1f}"

        def ranked(groups: Mapping[Any, Group]) -> list[tuple[Any, Group]]:
            return sorted(groups.items(), key=lambda kv: (-kv[1].count, str(kv[0])))[:ROWS]

        def timing(g: Group) -> list[str]:
            return [g.pct(0.5), g.pct(0.95), g.pct(0.99)]

        out: list[tuple[str, list[str], list[list[str]]]] = []
        out.append(
            (
                "services (agent/sub-agent)",
                ["datagrams", "samples", "est. transactions", "service"],
                [
                    [n(s.datagrams), n(s.samples), n(s.estimated), name]
                    for name, s in sorted(self.services.items())
                ],
            )
        )
        http_cols = ["est. requests", "per s", "2xx", "3xx", "4xx", "5xx"]
        http_cols += ["p50 ms", "p95 ms", "p99 ms", "est. bytes"]
        http_groups: list[tuple[str, Mapping[Any, Group]]] = [
            ("URIs", self.uris),
            ("routes", self.routes),
        ]
        for title, groups in http_groups:
            rows = [
                [
                    n(g.count),
                    rate(g.count),
                    *(n(g.statuses[c]) for c in ("2xx", "3xx", "4xx", "5xx")),
                    *timing(g),
                    n(g.bytes),
                    f"{key[1]}  [{key[0]}]",
                ]
                for key, g in ranked(groups)
            ]
            if rows:
                out.append((f"HTTP {title}", [*http_cols, title[:-1].lower()], rows))
        if self.http_status:
            rows = [[n(c), str(s)] for s, c in sorted(self.http_status.items())]
            out.append(("HTTP status mix", ["est. requests", "status"], rows))
        mc_cols = ["est. ops", "per s", "p50 ms", "p95 ms", "p99 ms"]
        mc_groups: list[tuple[str, Mapping[Any, Group], str]] = [
            ("memcache hot keys", self.keys, "key"),
            ("memcache missed keys", self.missed, "key"),
            ("memcache commands", self.commands, "command"),
        ]
        for title, groups, label in mc_groups:
            rows = [[n(g.count), rate(g.count), *timing(g), str(key)] for key, g in ranked(groups)]
            if rows:
                out.append((title, [*mc_cols, label], rows))
        rows = [
            [
                n(g.count),
                rate(g.count),
                n(g.count - g.statuses["SUCCESS"]),
                *timing(g),
                str(key),
            ]
            for key, g in ranked(self.operations)
        ]
        if rows:
            cols = ["est. calls", "per s", "errors", "p50 ms", "p95 ms", "p99 ms", "operation"]
            out.append(("decorated operations", cols, rows))
        return out

    def plain(self, elapsed: float) -> str:
        lost = f", {self.dropped:,} more dropped unread" if self.dropped else ""
        lines = [
            f"sflow-app top: {elapsed:,.0f} s, {plural(self.datagrams, 'datagram')}{lost} "
            "(estimates: each sample counts its sampling rate)"
        ]
        for title, cols, rows in self.tables(elapsed):
            widths = [max(len(r[i]) for r in [cols, *rows]) for i in range(len(cols))]
            lines.append("")
            lines.append(title)
            for row in [cols, *rows]:
                cells = [c.rjust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
                lines.append("  " + "  ".join([*cells, row[-1]]).rstrip())
        return "\n".join(lines)

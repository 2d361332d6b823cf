"""Readable text for decoded datagrams: one line per sample, names instead of numbers.

Used by ``sflow-app listen`` and the demo (examples/demo.py). Enum values print by name
(``GET``, ``NOT_FOUND``); a value outside an enum prints as its number.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from ..records import (
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
    HttpMethod,
    HttpRequest,
    MemcacheCmd,
    MemcacheCounters,
    MemcacheOperation,
    MemcacheStatus,
    OpaqueRecord,
    OpaqueSample,
)
from ._escape import escape

__all__ = ["describe", "describe_record", "enum_name", "plural", "sample_lines", "text"]


def enum_name(enum: type[IntEnum], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def plural(n: int, word: str) -> str:
    """``1 datagram``, ``2 datagrams``."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def text(value: object) -> str:
    """A record's string field, safe to print: what a terminal would act on (controls,
    bidi overrides...) and bytes that are not UTF-8 are shown as backslash escapes."""
    return escape(value if isinstance(value, str | bytes) else str(value))


def ms(us: int) -> str:
    return f"{us / 1000:.1f} ms"


def _nonzero(rec: Any, names: list[str]) -> str:
    return " ".join(f"{n} {getattr(rec, n):,}" for n in names if getattr(rec, n))


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def describe_record(rec: object, client_side: bool = False) -> str:
    """One record in a few words. ``client_side``: the sample is of a call the agent
    made (memcache), so a socket's local end is the client; else the agent served it."""
    if isinstance(rec, HttpRequest):
        version = f"HTTP/{rec.protocol // 1000}.{rec.protocol % 1000}"
        return (
            f"http {enum_name(HttpMethod, rec.method)} {text(rec.uri)} -> {rec.status} "
            f"{text(rec.mime_type) or '-'} req {rec.req_bytes:,} B resp {rec.resp_bytes:,} B "
            f"{ms(rec.uS)} {version}" + (f" host {text(rec.host)}" if rec.host else "")
        )
    if isinstance(rec, MemcacheOperation):
        return (
            f"memcache {enum_name(MemcacheCmd, rec.cmd)} {text(rec.key) or '-'} -> "
            f"{enum_name(MemcacheStatus, rec.status)} keys {rec.nkeys} "
            f"value {rec.value_bytes:,} B {ms(rec.uS)}"
        )
    if isinstance(rec, AppOperation):
        descr = f" ({text(rec.status_descr)})" if rec.status_descr else ""
        return (
            f"app {text(rec.application)}: {text(rec.operation)} -> "
            f"{enum_name(AppStatus, rec.status)}{descr} {ms(rec.uS)}"
        )
    if isinstance(rec, AppParentContext):
        return f"parent {text(rec.application)}: {text(rec.operation)}"
    if isinstance(rec, AppInitiator):
        return f"initiator {text(rec.actor)}"
    if isinstance(rec, AppTarget):
        return f"target {text(rec.actor)}"
    if isinstance(rec, ExtendedSocketIPv4 | ExtendedSocketIPv6):
        local = _endpoint(rec.local_ip, rec.local_port)
        remote = _endpoint(rec.remote_ip, rec.remote_port)
        client, server = (local, remote) if client_side else (remote, local)
        return f"client {client} -> server {server}"
    if isinstance(rec, ExtendedProxyRequest):
        return f"proxied as {text(rec.uri)}"
    if isinstance(rec, HttpCounters):
        methods = {
            "GET": rec.method_get_count,
            "POST": rec.method_post_count,
            "HEAD": rec.method_head_count,
            "PUT": rec.method_put_count,
            "DELETE": rec.method_delete_count,
            "OPTIONS": rec.method_option_count,
            "other": rec.method_other_count + rec.method_trace_count + rec.methd_connect_count,
        }
        statuses = {
            "1XX": rec.status_1XX_count,
            "2XX": rec.status_2XX_count,
            "3XX": rec.status_3XX_count,
            "4XX": rec.status_4XX_count,
            "5XX": rec.status_5XX_count,
            "other": rec.status_other_count,
        }
        # Methods | status classes, the zeros left out; nothing counted at all: "none".
        parts = [
            " ".join(f"{k} {v:,}" for k, v in counts.items() if v) for counts in (methods, statuses)
        ]
        return "http_counters " + (" | ".join(p for p in parts if p) or "none")
    if isinstance(rec, MemcacheCounters):
        names = [
            "cmd_set",
            "get_hits",
            "get_misses",
            "delete_hits",
            "delete_misses",
            "incr_hits",
            "incr_misses",
            "decr_hits",
            "decr_misses",
            "cas_hits",
            "cas_misses",
            "cmd_touch",
            "cmd_flush",
        ]
        return f"memcache_counters {_nonzero(rec, names) or 'none'}"
    if isinstance(rec, AppOperations):
        counts = [(s.name, getattr(rec, s.name.lower())) for s in AppStatus]
        shown = " ".join(f"{n} {v:,}" for n, v in counts if v) or "none"
        return f"app_operations {text(rec.application)}: {shown}"
    if isinstance(rec, AppResources):
        return f"app_resources {_nonzero(rec, ['fd_open', 'conn_open', 'mem_used']) or 'none'}"
    if isinstance(rec, AppWorkers):
        names = ["workers_active", "workers_idle", "workers_max", "req_delayed", "req_dropped"]
        return f"app_workers {_nonzero(rec, names) or 'none'}"
    if isinstance(rec, HostParent):
        return f"host_parent {rec.container_type}:{rec.container_index}"
    if isinstance(rec, OpaqueRecord):
        return f"record {rec.enterprise}:{rec.format} ({len(rec.data)} B)"
    return type(rec).__name__


def sample_lines(dg: Datagram, source: str = "") -> list[str]:
    """One line per sample: who sent it, the data source, then its records."""
    who = f"{dg.agent_address}/{dg.sub_agent_id}"
    if source:
        who = f"{source} {who}"
    lines = []
    for sample in dg.samples:
        if isinstance(sample, FlowSample):
            head = f"{who} {sample.ds_class}:{sample.ds_index} flow 1-in-{sample.sampling_rate:,}"
        elif isinstance(sample, CountersSample):
            head = f"{who} {sample.ds_class}:{sample.ds_index} counters"
        elif isinstance(sample, OpaqueSample):
            lines.append(f"{who} sample {sample.enterprise}:{sample.format} (not decoded)")
            continue
        else:
            continue
        # A memcache operation is sampled at the client (docs/memcache.md), HTTP at the server.
        client_side = any(isinstance(r, MemcacheOperation) for r in sample.records)
        body = " | ".join(describe_record(r, client_side) for r in sample.records)
        lines.append(f"{head}  {body}")
    return lines


def describe(dg: Datagram) -> str:
    """A datagram's header and its samples' lines (the demo prints these)."""
    header = (
        f"datagram agent {dg.agent_address} sub-agent {dg.sub_agent_id} "
        f"seq {dg.sequence_number} uptime {dg.uptime_ms / 1000:.1f} s "
        f"{plural(len(dg.samples), 'sample')}"
    )
    return "\n".join([header, *("  " + line for line in sample_lines(dg))])

"""The shape of ``sflow_app.status()``: what an operator (or a test) can rely on."""

from __future__ import annotations

from typing import TypedDict

__all__ = ["CollectorHealth", "QueueStatus", "SourceStatus", "Stats", "Status"]


class Stats(TypedDict):
    """This process's sending and dropping since it started."""

    datagrams: int
    samples: int
    sent: int  # datagrams sent, summed over collectors
    send_errors: int
    queue_drops: int  # samples dropped because the queue was full
    backlog_drops: int  # samples a worker gave up waiting for a sender
    bad_forwards: int  # malformed forwarded messages the sender dropped
    last_send_error: str


class CollectorHealth(TypedDict):
    sent: int
    errors: int
    failing: bool
    last_errno: str  # "ECONNREFUSED", or "" when it never failed
    last_error: str


class SourceStatus(TypedDict):
    ds_index: int | None  # None until the data source knows its port (HTTP)
    sampling_rate: int
    sample_pool: int
    drops: int
    counters: dict[str, int]


class QueueStatus(TypedDict):
    length: int
    capacity: int


class Status(Stats):
    enabled: bool
    state: str  # why it is on or off, and failing collectors
    source: str  # where the settings came from
    config_path: str
    collectors: list[str]
    collector_health: dict[str, CollectorHealth]
    agent_address: str | None
    sub_agent_id: int | None
    service_name: str
    pid: int
    running: bool
    sender: bool
    shared_state: str | None
    workers_seen: int
    data_sources: dict[str, SourceStatus]  # "http", "memcache", "app:NAME"
    queue: QueueStatus

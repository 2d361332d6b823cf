"""sflow_app._watch: change detection, torn reads, refusals and logging, on real files."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sflow_app._agent import Agent
from sflow_app._config import resolve
from sflow_app._watch import (
    MAX_BYTES,
    NO_FILE,
    TORN_GRACE,
    ConfigWatcher,
    read_bounded,
)

TORN_GRACE_STEPS = int(TORN_GRACE) + 3  # 1 s steps past the grace

STAT_FIELDS = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns", "st_mode", "st_uid")


def auto(rev: int = 1, sampling: int = 400, collector: str = "10.0.0.50", extra: str = "") -> str:
    return (
        f"rev_start={rev}\nsampling={sampling}\npolling=30\n{extra}"
        f"collector={collector}\nagentIP=10.0.0.7\nds_index=1\nrev_end={rev}\n"
    )


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def fake_stat(**override: Any) -> Callable[[str], Any]:
    """os.stat with some fields replaced. ``st_ctime_ns=0`` isolates mtime/size/inode."""

    def stat(path: str) -> Any:
        st = os.stat(path)
        return SimpleNamespace(**{**{f: getattr(st, f) for f in STAT_FIELDS}, **override})

    return stat


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return write(tmp_path / "hsflowd.auto", auto())


@pytest.fixture
def clock() -> Iterator[list[float]]:
    yield [100.0]


def watcher(path: Path, clock: list[float] | None = None, **kwargs: Any) -> ConfigWatcher:
    if clock is not None:
        kwargs["now"] = lambda: clock[0]
    return ConfigWatcher(path, **kwargs)


def rewrite_same_size(path: Path, text: str, mtime_ns: int) -> None:
    """hsflowd's way: rewind, write, truncate (same inode), then set the mtime."""
    assert len(text) == path.stat().st_size
    with open(path, "r+") as f:
        f.write(text)
        f.truncate()
    os.utime(path, ns=(mtime_ns, mtime_ns))


# -- change detection ---------------------------------------------------------------


def test_first_poll_reports_then_nothing_changed(path: Path) -> None:
    w = watcher(path)
    first = w.poll()
    assert first is not None and first.usable and first.sampling == 400
    assert [w.poll() for _ in range(5)] == [None] * 5
    assert w.current() == first


def test_same_size_rewrite_is_seen_by_mtime_ns(path: Path) -> None:
    w = watcher(path, stat=fake_stat(st_ctime_ns=0))  # only mtime_ns can tell
    assert w.poll() is not None
    old = path.stat()
    rewrite_same_size(path, auto(sampling=500), old.st_mtime_ns)
    assert w.poll() is None  # same inode, size and mtime: indistinguishable by stat
    os.utime(path, ns=(old.st_mtime_ns + 1, old.st_mtime_ns + 1))  # 1 ns later
    new = w.poll()
    assert new is not None and new.sampling == 500


def test_size_change_is_seen_with_the_same_mtime(path: Path) -> None:
    w = watcher(path, stat=fake_stat(st_ctime_ns=0))
    assert w.poll() is not None
    mtime = path.stat().st_mtime_ns
    path.write_text(auto(sampling=1000))
    os.utime(path, ns=(mtime, mtime))
    new = w.poll()
    assert new is not None and new.sampling == 1000


def test_atomic_replace_is_seen_by_inode(path: Path, tmp_path: Path) -> None:
    w = watcher(path, stat=fake_stat(st_ctime_ns=0))
    assert w.poll() is not None
    old = path.stat()
    tmp = write(tmp_path / "new", auto(sampling=500))
    os.utime(tmp, ns=(old.st_mtime_ns, old.st_mtime_ns))
    keep_inode_alive = tmp_path / "old"
    os.link(path, keep_inode_alive)  # so the new file cannot reuse the old inode number
    os.replace(tmp, path)
    assert path.stat().st_ino != old.st_ino and path.stat().st_size == old.st_size
    new = w.poll()
    assert new is not None and new.sampling == 500


def test_touch_with_identical_content_is_not_a_change(path: Path) -> None:
    w = watcher(path)
    assert w.poll() is not None
    os.utime(path, ns=(1, 1))
    assert w.poll() is None


def test_file_changing_while_read_is_read_again(path: Path) -> None:
    keys = iter([1, 2, 2, 2])  # stat before the read, after it, then stable

    def stat(p: str) -> Any:
        return SimpleNamespace(**{**vars(fake_stat()(p)), "st_mtime_ns": next(keys)})

    w = watcher(path, stat=stat)
    assert w.poll() is None  # moved under us: no verdict yet
    new = w.poll()
    assert new is not None and new.usable


# -- torn reads ---------------------------------------------------------------------


def test_torn_then_completed_without_mtime_change(path: Path) -> None:
    w = watcher(path, stat=fake_stat(st_ctime_ns=0))
    good = w.poll()
    assert good is not None and good.usable
    mtime = path.stat().st_mtime_ns
    complete = auto(rev=2, sampling=999)
    torn = complete[: complete.index("rev_end")]
    torn += "#" * (len(complete) - len(torn) - 1) + "\n"  # same size as the complete file
    path.write_text(torn)
    os.utime(path, ns=(mtime + 5, mtime + 5))
    report = w.poll()
    assert report is not None and report.state == "torn"
    assert w.current() == good  # keep the previous settings
    # hsflowd finishes the write within the same mtime tick: same size, same stat key
    rewrite_same_size(path, complete, mtime + 5)
    new = w.poll()
    assert new is not None and new.usable and new.sampling == 999
    assert w.current() == new


def test_torn_read_from_a_racing_reader_is_retried(path: Path) -> None:
    full = path.read_bytes()
    reads = iter([full[: full.index(b"rev_end")], full])
    w = watcher(path, read=lambda p, limit: next(reads))
    first = w.poll()
    assert first is not None and first.state == "torn"
    second = w.poll()  # the file did not change on disk: re-read because it was torn
    assert second is not None and second.usable


def test_current_before_any_trusted_read_is_the_torn_one(path: Path) -> None:
    write(path, auto().replace("rev_end=1\n", ""))
    w = watcher(path)
    current = w.current()
    assert current is not None and current.state == "torn"
    settings = resolve({}, {}, current, path)
    assert not settings.enabled and "torn read" in settings.reason


def test_torn_for_long_warns_once(
    path: Path, clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sflow_app")
    w = watcher(path, clock)
    assert w.poll() is not None
    write(path, auto(rev=2).replace("rev_end=2", "rev_end=1"))
    report = w.poll()
    assert report is not None and report.state == "torn"
    for _ in range(3):
        clock[0] += 1
        assert w.poll() is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    for _ in range(20):
        clock[0] += 1
        assert w.poll() is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and f"still inconsistent after {TORN_GRACE:.0f} s" in (
        warnings[0].getMessage()
    )


def test_torn_for_long_goes_to_the_agents_warning_route(
    path: Path, clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """With the agent's route (warned once per service, not by every worker), the
    warning goes there, as the file's other warnings do."""
    caplog.set_level(logging.DEBUG, logger="sflow_app")
    routed: list[str] = []
    w = watcher(path, clock, warn=routed.append)
    assert w.poll() is not None
    write(path, auto(rev=2).replace("rev_end=2", "rev_end=1"))
    assert w.poll() is not None
    for _ in range(TORN_GRACE_STEPS):
        clock[0] += 1
        assert w.poll() is None
    assert [m for m in routed if "still inconsistent" in m] == [
        f"{path}: still inconsistent after {TORN_GRACE:.0f} s "
        "(torn read (rev_start=2, rev_end=1)); "
        "keeping previous settings"
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- missing, refused, oversized ----------------------------------------------------


def test_missing_file_is_off_and_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "hsflowd.auto"
    w = watcher(path)
    off = w.poll()
    assert off is not None and (off.state, off.reason) == ("off", "not found")
    assert w.poll() is None
    write(path, auto())
    on = w.poll()
    assert on is not None and on.usable
    path.unlink()
    gone = w.poll()
    assert gone is not None and gone.reason == "not found"
    assert resolve({}, {}, w.current(), path).reason == f"off: {path}: not found"


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646])
def test_group_or_world_writable_is_refused_with_one_warning(
    path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sflow_app")
    path.chmod(mode)
    w = watcher(path)
    refused = w.poll()
    assert refused is not None and refused.state == "off"
    assert refused.reason.startswith(f"refused: writable by group or others (mode {mode:04o})")
    for _ in range(20):
        assert w.poll() is None
    path.write_text(auto(rev=2))  # hsflowd rewrites it: still refused, still one warning
    assert w.poll() is None
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "writable by group or others" in warnings[0].getMessage()
    path.chmod(0o644)
    fixed = w.poll()
    assert fixed is not None and fixed.usable and fixed.rev_start == 2


@pytest.mark.parametrize(
    "owner, me, allowed",
    [
        (1234, 1000, False),
        (1234, 1234, True),
        (0, 1000, True),
    ],
)
def test_owner_must_be_root_or_this_process(path: Path, owner: int, me: int, allowed: bool) -> None:
    w = watcher(path, stat=fake_stat(st_uid=owner), getuid=lambda: me)
    result = w.poll()
    assert result is not None and result.usable is allowed
    if not allowed:
        assert result.reason.startswith(f"refused: owned by uid {owner}")


def test_no_owner_check_without_getuid(path: Path) -> None:
    path.chmod(0o666)
    result = watcher(path, getuid=None).poll()
    assert result is not None and result.usable


def test_oversized_file_is_refused_without_reading_it(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = auto()
    write(path, text + "#" * (MAX_BYTES - len(text) - 1) + "\n")
    assert path.stat().st_size == MAX_BYTES
    reads: list[int] = []

    def read(p: str, limit: int) -> bytes:
        reads.append(limit)
        return read_bounded(p, limit)

    w = watcher(path, read=read)
    at_limit = w.poll()
    assert at_limit is not None and at_limit.usable and reads == [MAX_BYTES + 1]
    with open(path, "a") as f:
        f.write("x")
    refused = w.poll()
    assert refused is not None and refused.reason.startswith(f"refused: larger than {MAX_BYTES}")
    assert reads == [MAX_BYTES + 1]
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def test_file_growing_after_stat_is_bounded(path: Path) -> None:
    big = auto().encode() + b"#" * MAX_BYTES
    w = watcher(path, read=lambda p, limit: big[:limit])
    refused = w.poll()
    assert refused is not None and refused.reason == f"refused: larger than {MAX_BYTES} bytes"


def test_read_bounded_reads_at_most_limit(path: Path) -> None:
    assert read_bounded(str(path), 10) == auto().encode()[:10]


def test_directory_is_refused(tmp_path: Path) -> None:
    result = watcher(tmp_path).poll()
    assert result is not None and result.reason == "refused: not a regular file"


def test_unreadable_file_is_off_with_a_warning(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def read(p: str, limit: int) -> bytes:
        raise PermissionError(13, "Permission denied")

    w = watcher(path, read=read)
    result = w.poll()
    assert result is not None and result.state == "off"
    assert result.reason.startswith("cannot read:")
    assert w.poll() is None
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


# -- logging ------------------------------------------------------------------------


def test_logs_only_on_change(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sflow_app")
    w = watcher(path)
    w.poll()
    for _ in range(10):
        w.poll()
        w.current()
    assert len(caplog.records) == 1
    path.unlink()
    for _ in range(10):
        w.poll()
    assert len(caplog.records) == 2
    assert all(r.name == "sflow_app" for r in caplog.records)


def test_device_note_and_parse_warnings_logged_once(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sflow_app")
    write(path, auto(collector="10.0.0.1/6343/eth1/", extra="sampling.http=lots\n"))
    w = watcher(path)
    result = w.poll()
    assert result is not None and result.usable and result.device_ignored
    for _ in range(5):
        w.poll()
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(messages) == 2
    assert messages[0][0] == logging.WARNING and "sampling.http ignored" in messages[0][1]
    assert messages[1][0] == logging.INFO and "needs privileges" in messages[1][1]


def test_dev_null_is_no_file_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SFLOW_APP_CONFIG=/dev/null: hsflowd's file ignored on purpose, the variables alone
    configure; no "refused: not a regular file" warning (it is a character device)."""
    w = watcher(Path(os.devnull))
    first = w.poll()
    assert first is not None and first.state == "off" and first.reason == NO_FILE
    assert first.warnings == () and w.poll() is None
    env = {
        "SFLOW_APP_CONFIG": os.devnull,
        "SFLOW_APP_COLLECTORS": "127.0.0.1:6343",
        "SFLOW_APP_STATE_DIR": str(tmp_path),
    }
    agent = Agent(autostart=False, env=env)
    try:
        with caplog.at_level(logging.INFO, logger="sflow_app"):
            agent.reload()
            status = agent.status()
        assert status["enabled"] and status["collectors"] == ["127.0.0.1:6343"]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        agent.shutdown()
        agent.exporter.close()
        agent.runner.close()

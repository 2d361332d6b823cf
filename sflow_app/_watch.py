"""Stat-based watcher for hsflowd.auto, run from the exporter's pass: on its thread, or
(uWSGI without threads) inline from a sampled request at most once a second -- a ``stat``
and, only when the file changed, a read of < 1 KiB.

hsflowd rewrites the file in place, so a read can be torn; ``parse_auto`` notices that
(rev_start != rev_end) and the watcher then reads again on the next poll. The stat key of
a read is recorded only once the read is trusted, so a torn read is never mistaken for
"nothing changed" (the Java peers record the mtime first and keep a torn config forever).

The file decides where request URLs are sent, so one that anyone but root or this
process's user could write is refused (sFlow off), with one warning per change.
"""

from __future__ import annotations

import logging
import os
import stat as st_mode
import time
from collections.abc import Callable
from typing import Any

from ._auto import NO_REV
from ._config import AutoFile, parse_auto

MAX_BYTES = 64 * 1024  # hsflowd writes < 1 KiB; anything near this is not its file
TORN_GRACE = 10.0  # seconds a file may stay torn before it is worth a warning

StatKey = tuple[int, int, int, int, int, int, int]
_GETUID: Callable[[], int] | None = getattr(os, "getuid", None)  # None: no POSIX owners
NOT_FOUND = "not found"
NO_FILE = "no file read"


def file_mistakes(auto: AutoFile | None, path: str, origin: str | None, reason: str) -> list[str]:
    """What is wrong with a read of the config file and worth a warning (the watcher
    already warns for a refused one): a path someone chose that does not exist (the
    default one missing is normal: no hsflowd), a file without agentIP or without
    rev_start (its settings would be ignored without a word). ``origin``:
    where the path came from; ``reason``: the resolved state, to say what follows."""
    if auto is None or auto.state != "off":
        return []
    if auto.reason == NOT_FOUND and origin in ("environment", "configure"):
        who = "SFLOW_APP_CONFIG" if origin == "environment" else "configure(config_path)"
        return [f"{who}={path}: no such file; {reason}"]
    if auto.reason == "no agentIP":
        # Not hsflowd waiting for an address: it writes a rev-only file then.
        return [f"{path} has no valid agentIP line (hsflowd writes one); {reason}"]
    if auto.reason == NO_REV:  # hsflowd always writes it: a hand-written (or wrong) file
        return [
            f"{path} has no rev_start line (hsflowd writes rev_start/rev_end around its "
            f"settings; a file written by hand needs them too); {reason}"
        ]
    return []


def read_bounded(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes. O_NONBLOCK so a FIFO swapped in after the stat cannot
    block the exporter thread."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _key(st: Any) -> StatKey:
    # mtime_ns (hsflowd can rewrite twice within a second), size and inode as specified;
    # ctime, mode and owner as well so a chmod/chown is re-checked at once.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid)


class ConfigWatcher:
    """``poll()`` every second or so; ``current()`` for the AutoFile to resolve against.

    ``poll()`` returns None when nothing changed, else an AutoFile whose ``state`` says:
    "ok" (new usable settings), "off" (missing, empty, rev-only, no agentIP, refused or
    unreadable: send nothing) or "torn" (keep the previous settings; re-read next poll).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        stat: Callable[[str], Any] = os.stat,
        read: Callable[[str, int], bytes] = read_bounded,
        getuid: Callable[[], int] | None = _GETUID,
        now: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self._warn = warn  # None: log each warning (the agent passes its once-per-service)
        self._stat, self._read, self._getuid, self._now = stat, read, getuid, now
        self._log = logger or logging.getLogger("sflow_app")
        self._key: StatKey | None = None  # stat of the last trusted read
        self._last: AutoFile | None = None  # last reported result, torn included
        self._trusted: AutoFile | None = None  # last reported result that was not torn
        self._torn_since = 0.0
        self._torn_warned = False

    @property
    def torn(self) -> bool:
        """Whether the last read was torn (hsflowd caught rewriting the file)."""
        return self._last is not None and self._last.state == "torn"

    def current(self) -> AutoFile | None:
        """Poll, then the AutoFile in effect: a torn read keeps the previous one."""
        self.poll()
        return self._trusted or self._last

    def poll(self) -> AutoFile | None:
        return self._report(self._check())

    def _check(self) -> AutoFile | None:
        if self.path == os.devnull:  # chosen to ignore hsflowd's file: no warning
            return None if self._last is not None else AutoFile.off(NO_FILE)
        try:
            before = _key(self._stat(self.path))
        except FileNotFoundError:
            self._key = None
            return AutoFile.off(NOT_FOUND)
        except OSError as exc:
            self._key = None
            return AutoFile.off(f"cannot stat: {exc}", warn=True)
        if before == self._key:
            return None
        refusal = self._refusal(before)
        if refusal is not None:
            self._key = before
            return AutoFile.off(f"refused: {refusal}", warn=True)
        try:
            data = self._read(self.path, MAX_BYTES + 1)
            after = _key(self._stat(self.path))
        except FileNotFoundError:  # removed between stat and read
            self._key = None
            return AutoFile.off(NOT_FOUND)
        except OSError as exc:
            self._key = before  # e.g. EACCES: try again when the file changes
            return AutoFile.off(f"cannot read: {exc}", warn=True)
        if after != before:
            return None  # changed while we read it: read again on the next poll
        if len(data) > MAX_BYTES:
            self._key = before
            return AutoFile.off(f"refused: larger than {MAX_BYTES} bytes", warn=True)
        auto = parse_auto(data.decode("utf-8", "replace"))
        self._key = None if auto.state == "torn" else before
        return auto

    def _refusal(self, key: StatKey) -> str | None:
        _, _, size, _, _, mode, uid = key
        if not st_mode.S_ISREG(mode):
            return "not a regular file"
        if size > MAX_BYTES:
            return f"larger than {MAX_BYTES} bytes"  # no size: a growing file, one warning
        if self._getuid is None:
            return None
        me = self._getuid()
        why = "; it decides where request URLs are sent"
        if uid not in (0, me):
            return f"owned by uid {uid}, not root or this process's uid {me}{why}"
        if mode & (st_mode.S_IWGRP | st_mode.S_IWOTH):
            return f"writable by group or others (mode {st_mode.S_IMODE(mode):04o}){why}"
        return None

    def _report(self, new: AutoFile | None) -> AutoFile | None:
        """Return ``new`` only when it differs from what was last reported; log changes."""
        last = self._last
        if new is None:
            return None
        if new.state == "torn":
            if last is not None and last.state == "torn":
                self._warn_if_stuck(new)
                return None
            self._torn_since, self._torn_warned = self._now(), False
            self._log.debug(
                "sflow_app: %s: %s; keeping previous settings, re-reading", self.path, new.reason
            )
            self._last = new
            return new
        if new == last:
            return None
        self._last = self._trusted = new
        for warning in new.warnings:
            if self._warn is not None:
                self._warn(f"{self.path}: {warning}")
            else:
                self._log.warning("sflow_app: %s: %s", self.path, warning)
        if new.device_ignored:
            self._log.info(
                "sflow_app: %s: collector device/namespace ignored: binding to a "
                "device needs privileges sflow_app does not ask for; sending via "
                "the routing table",
                self.path,
            )
        self._log.debug("sflow_app: %s: %s", self.path, new.reason)
        return new

    def _warn_if_stuck(self, torn: AutoFile) -> None:
        if not self._torn_warned and self._now() - self._torn_since >= TORN_GRACE:
            self._torn_warned = True
            warning = (
                f"still inconsistent after {TORN_GRACE:.0f} s ({torn.reason}); "
                "keeping previous settings"
            )
            if self._warn is not None:  # the agent's: once per service, not per worker
                self._warn(f"{self.path}: {warning}")
            else:
                self._log.warning("sflow_app: %s: %s", self.path, warning)

"""The layout of a shared state file: header words, table entries, slots, lock bytes.

Kept apart so the layout is easy to read and to extend. A change of layout changes
``LAYOUT``, which is part of the file name: processes of two versions never map each
other's files (a rolling upgrade runs both at once).
"""

from __future__ import annotations

import fcntl
import time

MAGIC = 0x7346_6C6F_7741_7070  # "sFlowApp"
LAYOUT = 3  # also in the file name: v3-<service>-<root pid>-<root start>.state
HEADER_WORDS = 16
MAX_SOURCES = 16
ENTRY_WORDS = 16
MAX_SLOTS = 256
INITIAL_SLOTS = 4
COUNTER_WORDS = 40  # per source in a slot: counters, then pool and drops
POOL = COUNTER_WORDS - 2
DROPS = COUNTER_WORDS - 1
RUNTIME_WORDS = 14  # per slot: this process's runtime figures (see R_* below)
SLOT_HEAD = 2 + RUNTIME_WORDS  # owner pid, spare, runtime
SLOT_WORDS = SLOT_HEAD + MAX_SOURCES * COUNTER_WORDS
TABLE_AT = HEADER_WORDS
SLOTS_AT = TABLE_AT + MAX_SOURCES * ENTRY_WORDS

# Header words.
H_MAGIC, H_LAYOUT, H_EPOCH_NS, H_DATAGRAM_SEQ, H_SENDER_PID = range(5)
H_GEN, H_HEARTBEAT, H_SLOTS = 5, 6, 7  # sender generation, its last progress (monotonic ns)
H_DUE = 8  # when the sender's next pass is due (monotonic ns): it may sleep until then
# Source-table entry words (name: 4 words = 32 bytes).
# E_LAST_POOL: the service's sample_pool, the running sum of the samples' increments.
E_KEY, E_KIND, E_DS_INDEX, E_FLOW_SEQ, E_COUNTER_SEQ, E_LAST_POOL, E_NAME = 0, 1, 2, 3, 4, 5, 6
E_LAST_COUNTS = 10  # digest of the counts in the last counter sample sent (final polls)
# Runtime words of a slot (see _runtime): counters (kept for exited workers), gauges
# (live workers only), and what the server's configuration says (the largest live value).
R_USER_MS, R_SYSTEM_MS, R_DELAYED, R_DROPPED = 0, 1, 2, 3
R_RSS, R_FD_OPEN, R_FD_MAX, R_CONN_OPEN, R_BUSY, R_UNITS = 4, 5, 6, 7, 8, 9
R_CONF_WORKERS, R_CONF_CONNS = 10, 11
R_COUNTERS = (R_USER_MS, R_SYSTEM_MS, R_DELAYED, R_DROPPED)
R_GAUGES = (R_RSS, R_FD_OPEN, R_FD_MAX, R_CONN_OPEN, R_BUSY, R_UNITS)
R_CONFIG = (R_CONF_WORKERS, R_CONF_CONNS)
KINDS = {"http": 1, "memcache": 2, "app": 3}
KIND_NAMES = {v: k for k, v in KINDS.items()}

# Record locks live beyond the data (locking past EOF is allowed). LOCK_USERS is held
# (shared) by every process that has the file open; it is the byte earlier versions held
# as their sender lock, so "is anyone using this file" reads the same for both.
LOCK_BASE = 1 << 40
LOCK_USERS = LOCK_BASE
LOCK_TABLE = LOCK_BASE + 1
LOCK_ELECT = LOCK_BASE + 2
LOCK_SLOT0 = LOCK_BASE + 16
LOCK_GEN0 = LOCK_BASE + 4096  # the sender of generation g holds LOCK_GEN0 + g % GENS
GENS = 64
LOCK_WAIT = 1.0  # s: the longest a short lock is waited for (a stopped holder)
STALE_AFTER = 86400.0  # s: state nobody used for a day is removed by a later start
TOUCH_EVERY = 60.0  # s: how often the sender marks the file as in use


def file_size(slots: int) -> int:
    return (SLOTS_AT + slots * SLOT_WORDS) * 8


def lock(fd: int, what: int, *, shared: bool = False, wait: float = LOCK_WAIT) -> None:
    """Take a record lock, waiting at most ``wait`` s (a stopped process may hold it)."""
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    end = time.monotonic() + wait
    while True:
        try:
            fcntl.lockf(fd, mode, 1, what)
            return
        except OSError:
            if time.monotonic() >= end:
                raise
            time.sleep(0.002)


def unlock(fd: int, what: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, what)


def in_use(fd: int) -> bool:
    """Whether any process (another one: our own locks never conflict) has the file open."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, LOCK_USERS)
    except OSError:
        return True
    unlock(fd, LOCK_USERS)
    return False

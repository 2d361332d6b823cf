"""Configuration warnings a whole service logs once, not once per worker.

Every worker of a pre-fork server resolves the same settings and would log the same
mistake; the issue is the service's, so one line is enough. "The service" is this uid,
the service name and the process group (a server's workers share their master's group; a
restarted service has a new one, so it warns again). A small file per service in the
user's private state directory (``_statedir``: never a name in the world-writable parent,
where another user could have put a FIFO that blocks a read) lists the warnings already
logged. It is touched only when there is something to warn about; any failure logs the
warning anyway (twice is better than never).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import time

from ._statedir import open_private

LOCK_TRIES = 20  # x 1 ms: start-up only, and only when two workers warn at the same moment
MAX_LINES = 256


def first_in_service(parent: str, runtime_dir: str | None, service: str, message: str) -> bool:
    """True when no other process of this service logged ``message`` yet (and record it).
    ``parent``: the state directory setting (the private directory is made in it)."""
    # surrogatepass: a name from a non-UTF-8 environment or argv holds surrogates.
    who = f"{os.getuid()}\0{service}".encode(errors="surrogatepass")
    name = hashlib.blake2b(who, digest_size=8).hexdigest()
    digest = hashlib.blake2b(message.encode(errors="surrogatepass"), digest_size=8).hexdigest()
    group = str(os.getpgrp())
    try:
        private, _ = open_private(parent, runtime_dir)
    except OSError:
        return True
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(f"sflow-app-{name}.warned", flags, 0o600, dir_fd=private.fd)
    except OSError:
        return True
    finally:
        private.close()
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return True  # not a file of ours (the directory is ours: never expected)
        for _ in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.001)
        else:
            return True
        lines = os.read(fd, 64 * 1024).decode("ascii", "replace").split()
        if not lines or lines[0] != group:
            lines = [group]  # a new run of the service: start over
        if digest in lines[1:]:
            return False
        lines = [group, *lines[1:][-(MAX_LINES - 2) :], digest]
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, ("\n".join(lines) + "\n").encode())
        return True
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # also releases the flock

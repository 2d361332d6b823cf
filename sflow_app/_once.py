"""Configuration warnings a whole service logs once, not once per worker.

Every worker of a pre-fork server resolves the same settings and would log the same
mistake; the issue is the service's, so one line is enough. "The service" is this uid,
the service name and the process group (a server's workers share their master's group; a
restarted service has a new one, so it warns again). A small file per service in the
user's private state directory (``_statedir``: never a name in the world-writable parent,
where another user could have put a FIFO that blocks a read) lists the warnings already
logged. It is made only when there is something to warn about; any failure logs the
warning anyway (twice is better than never).

A mistake in the configuration is warned once per service *per occurrence*: recorded
``until_fixed``, its line goes when a load of the configuration no longer has it
(``forget_fixed``), so a bad value fixed by a reload and brought back a week later by
another warns again. Workers and restarts that load it, broken, find it recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Iterable, Iterator

from ._statedir import open_private

LOCK_TRIES = 20  # x 1 ms: start-up only, and only when two workers warn at the same moment
MAX_LINES = 256
UNTIL_FIXED = "~"  # before the digest of a mistake that a load without it forgets


def _digest(message: str) -> str:
    # surrogatepass: a name from a non-UTF-8 environment or argv holds surrogates.
    return hashlib.blake2b(message.encode(errors="surrogatepass"), digest_size=8).hexdigest()


@contextlib.contextmanager
def _locked(parent: str, runtime_dir: str | None, service: str, create: bool) -> Iterator[int]:
    """The service's file, locked; raises OSError when it is not there (or not ours).
    ``create`` False: neither the file nor the private directory is made."""
    name = _digest(f"{os.getuid()}\0{service}")
    private, _ = open_private(parent, runtime_dir, create)
    try:
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(
            f"sflow-app-{name}.warned",
            flags | (os.O_CREAT if create else 0),
            0o600,
            dir_fd=private.fd,
        )
    finally:
        private.close()
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise OSError("not a file of ours")  # the directory is ours: never expected
        for _ in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.001)
        else:
            raise OSError("locked")
        yield fd
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # also releases the flock


def _read(fd: int) -> list[str]:
    return os.read(fd, 64 * 1024).decode("ascii", "replace").split()


def _write(fd: int, lines: list[str]) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, ("\n".join(lines) + "\n").encode())


def first_in_service(
    parent: str, runtime_dir: str | None, service: str, message: str, until_fixed: bool = False
) -> bool:
    """True when no other process of this service logged ``message`` yet (and record it).
    ``parent``: the state directory setting (the private directory is made in it);
    ``until_fixed``: a configuration mistake, forgotten by ``forget_fixed``."""
    digest = _digest(message)
    group = str(os.getpgrp())
    try:
        with _locked(parent, runtime_dir, service, create=True) as fd:
            lines = _read(fd)
            if not lines or lines[0] != group:
                lines = [group]  # a new run of the service: start over
            if digest in lines[1:] or UNTIL_FIXED + digest in lines[1:]:
                return False
            mark = UNTIL_FIXED if until_fixed else ""
            _write(fd, [group, *lines[1:][-(MAX_LINES - 2) :], mark + digest])
            return True
    except OSError:
        return True


def forget_fixed(
    parent: str, runtime_dir: str | None, service: str, current: Iterable[str]
) -> None:
    """Forget the recorded mistakes that are not among ``current``, the mistakes of a
    load of the configuration: they were fixed, and their return warns again. Nothing
    to forget (no file, another run's) writes nothing."""
    keep = {UNTIL_FIXED + _digest(message) for message in current}
    group = str(os.getpgrp())
    with contextlib.suppress(OSError), _locked(parent, runtime_dir, service, False) as fd:
        lines = _read(fd)
        if not lines or lines[0] != group:
            return  # another run's: it warns anew anyway
        kept = [line for line in lines[1:] if not line.startswith(UNTIL_FIXED) or line in keep]
        if len(kept) < len(lines) - 1:
            _write(fd, [group, *kept])

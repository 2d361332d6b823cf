"""Whether this process is still the one that asked, without a system call.

The sampled path must notice a fork that ran no at-fork hook (a server forking from C)
before it queues anything for a thread the child does not have. ``os.getpid()`` is a
system call -- ~0.5 us on a virtual machine, the largest single cost of a sampled
request's bookkeeping. Linux can do it for free: a private page advised
``MADV_WIPEONFORK`` reads as zeros in any child, however it was forked (OpenSSL and
glibc detect forks for their random generators the same way). Elsewhere, or on a
kernel before 4.14, it falls back to comparing pids.
"""

from __future__ import annotations

import mmap
import os
import sys

MADV_WIPEONFORK = 18  # linux/mman.h; not in Python's mmap module


class _SamePid:
    """The fallback: ``flag[0]`` compares pids."""

    __slots__ = ("pid",)

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __getitem__(self, index: int) -> int:
        return int(os.getpid() == self.pid)


def flag() -> mmap.mmap | _SamePid:
    """An object whose ``[0]`` is non-zero in this process and zero in any child forked
    from it later. Make a new one in the child."""
    if sys.platform == "linux":
        try:
            page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            try:
                page.madvise(MADV_WIPEONFORK)
            except BaseException:
                page.close()
                raise
            page[0] = 1
            return page
        except (OSError, ValueError, AttributeError):  # EINVAL: a kernel before 4.14
            pass
    return _SamePid()

"""The exit flush where ``atexit`` never runs: uvicorn re-raises SIGTERM.

uvicorn catches SIGTERM, shuts down gracefully, puts back the handler that was there
before it started, and raises the signal again. With the default handler the process
dies on the spot: ``atexit`` never runs and a worker's last samples and counters are
lost. So in a uvicorn process whose SIGTERM handler is still the default, the agent puts
one there first that flushes (bounded, as at exit) and then lets the signal do what it
would have done. Nothing else changes: other servers, a handler the application set,
or a thread other than the main one are left as they are.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

FLUSH_WAIT = 3.0  # s: the exit flush's own bound is shorter


def flush_on_sigterm(flush: Callable[[], None]) -> bool:
    """In uvicorn's main thread: flush after uvicorn's graceful shutdown; True when set.

    uvicorn loads the application either before it catches signals (one process: SIGTERM
    still has its default handler, which it will put back and raise) or while it does
    (``--workers``: the handler is its server's ``handle_exit``); in the second case the
    server's own ``shutdown`` is followed by the flush.
    """
    if "uvicorn" not in sys.modules or threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    if type(server).__module__ == "uvicorn.server" and hasattr(server, "shutdown"):
        return _after_shutdown(server, flush)
    if handler is not signal.SIG_DFL:
        return False

    def flush_then_die(sig: int, frame: FrameType | None) -> None:
        # In a thread, bounded: the main thread may hold a lock the flush needs (the
        # signal can arrive anywhere), and a stuck flush must not keep a process alive.
        worker = threading.Thread(target=flush, name="sflow-app-exit", daemon=True)
        try:
            worker.start()
            worker.join(FLUSH_WAIT)
        finally:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    signal.signal(signal.SIGTERM, flush_then_die)
    return True


def _after_shutdown(server: Any, flush: Callable[[], None]) -> bool:
    original = server.shutdown

    async def shutdown(*args: Any, **kwargs: Any) -> None:
        try:
            await original(*args, **kwargs)
        finally:
            flush()  # the server is down; nothing else runs in this process now

    server.shutdown = shutdown
    return True

"""The exporter thread of one process: its queue, its sleep, its start, fork and exit.

Modelled on sentry-sdk's ``worker.py``: a ``Runner`` belongs to the process that made it.
A forked child reuses nothing of its parent's runner (a thread does not survive a fork,
and the samples queued are the parent's): its agent makes a new one. A process that
forks with Python's ``os.fork`` (a gunicorn ``--preload`` master) stops the thread for
the fork and starts a fresh one after, so no child inherits a thread's half-held state.
A uWSGI master forks its workers from C, where a thread could hold the GIL at the fork:
nothing runs there, and a uWSGI post-fork hook starts each worker's (``on_uwsgi_fork``).
Inside uWSGI without ``--enable-threads`` no thread runs at all: the sampled path does
the exporter's work, at most once a second (``pass_inline``).

What one pass does, and when the next is due, is the agent's (``Work``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from . import _idle
from ._exporter import TICK
from ._wake import Waker

if TYPE_CHECKING:
    from ._exporter import Exporter
    from ._source import Source
    from ._status import Stats

log = logging.getLogger("sflow_app")

EXIT_FLUSH_TIMEOUT = 1.0
FORK_JOIN_TIMEOUT = 1.0
INLINE_EVERY = 1.0  # s between the passes the sampled path makes when no thread runs
# An exporter error seen before is logged again at most this often (s): a bug that fails
# every pass would otherwise log a traceback ten times a second.
ERROR_REPEAT_EVERY = 60.0
ERROR_KINDS = 16  # distinct errors given a traceback each; any more are repeats


class Work(Protocol):
    """What the thread runs, and all a runner needs of its agent."""

    exporter: Exporter  # the sleep waits on its socket and tells it an idle pass; the exit flush

    def tick(self, now: float, *, final: bool = False) -> None:
        """One pass."""

    def next_due(self, passed_at: float) -> float:
        """When the pass made at ``passed_at`` needs the next one, at the latest."""

    def warn_once(self, message: str) -> None: ...


def threads_run() -> bool:
    """False inside uWSGI started without --enable-threads (its threads never run)."""
    uwsgi = sys.modules.get("uwsgi")
    return uwsgi is None or bool(getattr(uwsgi, "has_threads", True))


def uwsgi_master() -> Any:
    """The ``uwsgi`` module when this is uWSGI's master (worker id 0), else None."""
    uwsgi = sys.modules.get("uwsgi")
    try:
        return uwsgi if uwsgi is not None and uwsgi.worker_id() == 0 else None
    except Exception:
        return None


def on_uwsgi_fork(uwsgi: Any, start: Callable[[], None]) -> None:
    """Call ``start`` in each uWSGI worker right after its fork (chained to any hook there)."""

    def start_here() -> None:
        try:
            start()
        except Exception:
            log.debug("sflow_app: could not start the exporter", exc_info=True)

    decorators = sys.modules.get("uwsgidecorators")
    if isinstance(getattr(decorators, "postfork_chain", None), list):
        decorators.postfork_chain.append(start_here)  # type: ignore[union-attr]
        return  # uwsgidecorators owns the hook: join its chain
    previous = getattr(uwsgi, "post_fork_hook", None)

    def post_fork_hook() -> None:
        if previous is not None:
            previous()
        start_here()

    uwsgi.post_fork_hook = post_fork_hook


class Runner:
    """The queue request threads hand samples to, and the thread that takes them."""

    def __init__(
        self,
        work: Work,
        stats: Stats,
        *,
        capacity: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.work = work
        self.stats = stats  # put() counts its drops there
        self.capacity = capacity  # the agent keeps it at its settings' queue_capacity
        self.clock = clock
        self.pid = os.getpid()
        # The hand-off to the exporter: no lock. deque.append and popleft are atomic
        # under the GIL; a lock here made a request thread that found it held (by a
        # drain switched out) block, and every block hands the GIL over.
        self.queue: deque[tuple[Any, ...]] = deque()
        # The thread's sleep (made when it starts: a runner that never starts one, as
        # in tests, holds no pipe).
        self.waker: Waker | None = None
        # True while the thread sleeps with an empty queue: the next put wakes it.
        self.asleep = False
        self.passes = 0  # the thread's passes (tests count its wake-ups)
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.started = False
        self.paused = False  # stopped for an os.fork, to start again after it
        self.inline = False  # no thread can run: the sampled path makes the passes
        self._last_inline = float("-inf")
        self._lock = threading.Lock()
        self._errors: set[tuple[str, str]] = set()  # the exporter errors logged in full
        self._repeats = 0  # errors since the last line about them
        self._repeat_logged = 0.0

    # -- the hand-off (request threads) --------------------------------------------
    def put(self, source: Source, pool: int, rate: int, records: Any) -> None:
        """Queue a sampled call's records (every sampled request: keep it this small)."""
        queue = self.queue
        # Threads putting at once may each pass the check: the queue can exceed its
        # capacity by at most their number (bounded; nothing is lost uncounted).
        if len(queue) >= self.capacity:
            source.drop()
            self.stats["queue_drops"] += 1
            return
        queue.append((source, pool, rate, records))
        if self.asleep:  # the thread may sleep for a second: wake it (once per sleep)
            self.asleep = False
            waker = self.waker
            if waker is not None:
                waker.set()

    def drain(self) -> list[tuple[Any, ...]]:
        """Everything queued, in order (request threads may append meanwhile)."""
        queue = self.queue
        pop = queue.popleft
        return [pop() for _ in range(len(queue))]

    # -- start and stop ---------------------------------------------------------------
    def start(self) -> None:
        """Start the thread, once (or make the sampled path do its passes, without one)."""
        with self._lock:
            if self.started:
                return
            self.started = True
            if not threads_run():
                self.work.warn_once(
                    "uWSGI runs without --enable-threads, so Python threads do not run: "
                    "this worker reports from its sampled requests, at most once a second, "
                    "and only while it serves. Add --enable-threads."
                )
                self.inline = True
                return
            self._spawn()

    def pass_inline(self) -> None:
        """No thread can run here: a pass from the sampled path, at most once a second.
        It never blocks (non-blocking sockets, small files)."""
        now = self.clock()
        if now - self._last_inline >= INLINE_EVERY:
            self._last_inline = now
            try:
                self.work.tick(now)
            except Exception:
                log.debug("sflow_app: inline tick failed", exc_info=True)

    def _spawn(self) -> None:
        # A fresh event per thread: one that outlived a bounded join still sees its own set.
        self._stop = threading.Event()
        if self.waker is None:
            self.waker = Waker()
        self.thread = threading.Thread(
            target=self._run,
            args=(self._stop, self.waker),
            name="sflow-app-exporter",
            daemon=True,
        )
        self.thread.start()

    def wake(self) -> None:
        waker = self.waker
        if waker is not None:
            waker.set()

    def stop(self, timeout: float) -> None:
        """Tell the thread to end, and wait for it up to ``timeout`` s (not from itself)."""
        self._stop.set()
        self.wake()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def shutdown(self, timeout: float = EXIT_FLUSH_TIMEOUT) -> bool:
        """Stop the thread and send what is left, within a bounded time; False when
        there was nothing to stop (never started, or started by the parent process)."""
        if not self.started or self.pid != os.getpid():
            return False
        self.stop(timeout)
        exporter = self.work.exporter
        try:
            exporter.finish(self.clock())
        except Exception:
            log.exception("sflow_app: final flush failed")
        exporter.close()
        self.started = False
        return True

    def close(self) -> None:
        """Release the pipe (the runner is done with: reset, or a forked child's copy)."""
        if self.waker is not None:
            self.waker.close()

    # -- os.fork ----------------------------------------------------------------------
    def before_fork(self) -> None:
        """Python's os.fork in a process whose thread runs: stop it for the fork."""
        thread = self.thread
        if (
            self.started
            and thread is not None
            and thread.is_alive()
            and self.pid == os.getpid()
            and thread is not threading.current_thread()
        ):
            self.stop(FORK_JOIN_TIMEOUT)
            self.paused = True

    def after_fork_in_parent(self) -> None:
        if self.paused:
            self.paused = False
            self._spawn()

    # -- the thread -------------------------------------------------------------------
    def _run(self, stop: threading.Event, waker: Waker) -> None:
        work = self.work
        while not stop.is_set():
            passed = self.clock()
            self.passes += 1
            due = passed + TICK
            try:
                work.tick(passed)
                due = work.next_due(passed)
                work.exporter.pass_due(due - passed)
            except Exception as exc:  # the exporter must outlive any bug of its own
                self._failed(exc, passed)
            self._sleep(stop, waker, passed, due)

    def _failed(self, exc: Exception, now: float) -> None:
        """Log an exporter error: in full the first time, then as one line a minute with
        how often it came (a bug that fails every pass must not flood the log)."""
        kind = (type(exc).__qualname__, str(exc)[:200])
        if kind not in self._errors and len(self._errors) < ERROR_KINDS:
            self._errors.add(kind)
            self._repeat_logged = now
            log.error("sflow_app: exporter error", exc_info=exc)
            return
        self._repeats += 1
        if now - self._repeat_logged >= ERROR_REPEAT_EVERY:
            log.error(
                "sflow_app: exporter errors again: %d in %.0f s, the last %s: %s",
                self._repeats,
                now - self._repeat_logged,
                kind[0],
                kind[1],
            )
            self._repeats = 0
            self._repeat_logged = now

    def _sleep(self, stop: threading.Event, waker: Waker, passed: float, due: float) -> None:
        """Until ``due``, or until a sample is queued (or, in the sender, a worker
        forwards samples), but at most one pass per TICK however often it is woken.

        Each sleep is a blocking call, and a busy request thread takes the GIL the moment
        this thread lets it go, keeping it up to the switch interval (5 ms): so samples
        already waiting mean one sleep to the TICK, not a sleep and then a wake-up.
        """
        soonest = passed + TICK
        exporter = self.work.exporter
        also = _idle.listening(exporter)
        while not stop.is_set():
            now = self.clock()
            if self.queue or due <= soonest:
                exporter.quiet = False
                if now >= soonest:
                    return
                waker.wait(soonest - now)  # nobody needs to wake it: the pass is near
                continue
            if now >= due:
                return
            self.asleep = True
            if self.queue:  # queued just before it said so: no wake-up will come
                self.asleep = False
                continue
            woken = waker.wait(due - now, also)
            self.asleep = False
            exporter.quiet = not woken and also is not None
            if woken:
                due = soonest

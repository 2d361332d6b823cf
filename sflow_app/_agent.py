"""The one agent per process: settings, data sources, identity, status and capture.

Nothing here runs at import. Building a surface (a source) starts the exporter thread, so
a service reports its counters even while idle -- except in a uWSGI master, which forks
its workers from C (a thread there could hold the GIL at fork): there a uWSGI post-fork
hook starts it in each worker. The slow path (``housekeeping()``) starts it too, if
nothing did, and notices a fork that bypassed ``os.register_at_fork``. The thread, its
queue and its fork and exit handling are the agent's ``runner`` (see ``_lifecycle``);
what one pass does (``tick``) and when the next is due (``next_due``) are the agent's.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, cast

from . import _config, _idle
from ._exit import flush_on_sigterm
from ._exporter import TICK, Exporter
from ._forked import flag as forked_flag
from ._identity import default_service_name, local_index
from ._lifecycle import EXIT_FLUSH_TIMEOUT, Runner, on_uwsgi_fork, uwsgi_master
from ._listen import server_listener
from ._once import first_in_service, forget_fixed
from ._sampler import WINDOW
from ._shared import state_dir
from ._source import AppSource, HttpSource, MemcacheSource, Source
from ._status import Stats, Status
from ._watch import ConfigWatcher, file_mistakes

log = logging.getLogger("sflow_app")
S = TypeVar("S", bound=Source)


class Sink(Protocol):
    """Where sampled records go instead of the queue while ``sflow_app.testing.capture()``
    runs (its ``Capture``)."""

    def add(self, source: Source, pool: int, rate: int, records: Any) -> None: ...

    def track(self, transaction: Any) -> None:
        """A sampled WSGI transaction, to finish at the capture's end if never closed."""


DEFAULT_CONFIG = _config.DEFAULT_CONFIG_PATH
# What reset() calls: decorated functions forget the data sources of the agent as it
# was, so their next call finds the fresh agent's (surfaces with a slow path of their
# own find out there: Source.retire).
ON_RESET: list[Callable[[], None]] = []
# Called (under the configuration lock) when configure() changed the service name:
# @transaction's default-named functions take it from their next call.
ON_RENAME: list[Callable[[], None]] = []
# The config file is re-checked (a stat) by a pass at most once a second; an idle process
# wakes for it only every IDLE_CHECK_EVERY (the peers check every 10 s): each wake-up of
# an idle process costs it ~0.4 ms of CPU, its caches gone cold. A torn read is read
# again a second later, idle or not.
CONFIG_CHECK_EVERY = 1.0
IDLE_CHECK_EVERY = 5.0
# s after start-up a service with no HTTP surface waits before it names itself, unless a
# call went through a surface first: an HTTP surface built later would name it otherwise.
SETTLE = 10.0


def _env_key(env: Mapping[str, str]) -> object:
    """What of the environment settings are resolved from, cheap to compare."""
    data = getattr(env, "_data", None) if env is os.environ else None
    if isinstance(data, dict):  # os.environ's raw bytes: no decoding of every variable
        return [item for item in data.items() if item[0].startswith(b"SFLOW_APP_")]
    return sorted((k, v) for k, v in env.items() if k.startswith("SFLOW_APP_"))


class Agent:
    def __init__(
        self,
        *,
        autostart: bool = True,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._env = env
        self._autostart = autostart
        self._clock = self.clock = clock
        self._kwargs: dict[str, Any] = {}
        self._lock = threading.Lock()
        # One reload at a time: the exporter's periodic one resolves from configure()'s
        # arguments, and one that applied after configure() had applied its own undid it.
        self._config_lock = threading.Lock()
        self._sources: dict[tuple[str, str], Source] = {}
        self._http: HttpSource | None = None
        # (environment key, AutoFile, config path) the settings were last resolved from.
        self._resolved: tuple[object, object, str] | None = None
        self.settings = _config.resolve({}, {}, None, DEFAULT_CONFIG)
        # sflow_app.testing.capture(): samples go there, 1-in-1, and nothing is sent.
        self.capture: Sink | None = None
        self._reset_process_state()
        self._watcher: ConfigWatcher | None = None
        self._loaded = False
        self._default_name: str | None = None
        self._next_config_check = 0.0
        self._warned: set[str] = set()
        self._mistakes: set[str] = set()  # of those, the configuration's (until fixed)
        self._fixed_checked = False  # the service's fixed mistakes forgotten (first load)
        self._file_warnings: list[str] = []  # the watcher's, logged once settings apply
        self._uwsgi_hooked = False
        self._serving = False
        self._born = clock()

    def _reset_process_state(self) -> None:
        """This process's own: a forked child makes them anew (see after_fork)."""
        self.pid = os.getpid()
        self._here = forked_flag()  # [0] reads 0 in a child, however forked
        self._pools = -1  # every source's sample_pool at the last pass: busy or idle
        self._route = ("", "")
        self.stats: Stats = {
            "datagrams": 0,
            "samples": 0,
            "sent": 0,
            "send_errors": 0,
            "queue_drops": 0,
            "backlog_drops": 0,
            "bad_forwards": 0,
            "last_send_error": "",
        }
        runner = Runner(self, self.stats, capacity=self.settings.queue_capacity, clock=self._clock)
        self.runner = runner
        self.exporter = Exporter(self, runner.drain, self.stats)
        # The sampled path's hand-off, bound once (no hop per sampled call): the runner's
        # queue, or a capture's list while one runs.
        self.enqueue: Callable[[Source, int, int, Any], None] = (
            runner.put if self.capture is None else self.capture.add
        )

    # -- configuration ----------------------------------------------------------------
    @property
    def env(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env

    @property
    def config_path(self) -> str:
        return _config.config_path(self._kwargs, self.env)

    def configured(self, name: str) -> Any:
        """What configure() said of setting ``name`` so far (None: nothing), without
        reading the configuration: ``sflow-app run``'s import hooks ask it."""
        return self._kwargs.get(name)

    def configure(self, **kwargs: Any) -> None:
        with self._config_lock:
            merged = {**self._kwargs, **kwargs}
            _config.resolve(merged, {}, None, DEFAULT_CONFIG)  # raises ValueError on bad kwargs
            self._kwargs = merged
            self._watcher = None  # re-read the file (the path may have changed)
            self._resolved = None
            self._reload()

    def reload(self) -> None:
        """Read the config file and apply it (exporter thread, or configure())."""
        with self._config_lock:
            self._reload()

    def _reload(self) -> None:
        # Resolving from the environment is most of an idle process's periodic
        # re-check: done again only when the variables, the file or configure() changed.
        env_key = _env_key(self.env)
        cached = self._resolved
        path = cached[2] if cached is not None and cached[0] == env_key else self.config_path
        if self._watcher is None or self._watcher.path != path:
            self._watcher = ConfigWatcher(path, warn=self._file_warnings.append)
        auto = self._watcher.current()
        self._loaded = True
        if cached is not None and cached[:3] == (env_key, auto, path):
            settings = self.settings
        else:
            settings = _config.resolve(self._kwargs, self.env, auto, path)
            self.apply(settings)
            self._resolved = (env_key, auto, path)
        # After apply: a warning is recorded in the state directory these settings name.
        origin = settings.sources.get("config_path")
        mistakes = file_mistakes(auto, path, origin, settings.reason)
        # The mistakes this load has: the file's own lines (as the watcher words them),
        # what they lead to and the settings'. Others the watcher gives (a file torn for
        # long) are not the configuration's: once per run.
        found = [f"{path}: {w}" for w in auto.warnings] if auto is not None else []
        current = {*settings.warnings, *mistakes, *found}
        # Emptied in place: the watcher holds this list's append.
        pending = [*self._file_warnings, *mistakes]
        self._file_warnings.clear()
        for message in pending:
            self.warn_service(message, until_fixed=message in current)
        self._forget_fixed(current)

    def _forget_fixed(self, current: set[str]) -> None:
        """Mistakes warned before and gone from this load warn again when they come back:
        here, and in the service (checked at this process's first load, then only when
        one went: no file access on the periodic re-checks)."""
        gone = self._mistakes - current
        if not gone and self._fixed_checked:
            return
        self._fixed_checked = True
        self._warned -= gone
        self._mistakes -= gone
        parent, runtime = state_dir(self.settings.state_dir), self.env.get("XDG_RUNTIME_DIR")
        forget_fixed(parent, runtime, self.service_name, current)

    def apply(self, settings: _config.Settings) -> None:
        self._resolved = None  # the next reload resolves again
        old = getattr(self, "settings", None)
        self.settings = settings
        self.runner.capacity = settings.queue_capacity
        for warning in settings.warnings:
            self.warn_service(warning, until_fixed=True)
        if old is None or (old.enabled, old.reason) != (settings.enabled, settings.reason):
            log.info("sflow_app: %s", settings.reason)
        if old is not None and old.service_name != settings.service_name:
            for rename in ON_RENAME:
                rename()
        for source in self.sources():
            self._apply_source(source)

    def _apply_source(self, source: Source) -> None:
        settings = self.settings
        rate = settings.sampling_for(source.app_key) if settings.enabled else 0
        cap = settings.max_samples
        if self.capture is not None:
            rate, cap = 1, 0  # a test sees every sample
        source.sampler.set_rate(rate)
        source.sampler.set_cap(cap)
        if source.kind != "http":
            source.ds_index = local_index(self.service_name, source.kind, source.name)
        elif settings.ds_index is not None:
            source.ds_index = settings.ds_index

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("sflow_app: %s", message)

    def warn_service(self, message: str, until_fixed: bool = False) -> None:
        """A configuration mistake: one warning for the whole service (see _once);
        ``until_fixed``: one per occurrence, warned again after a load without it."""
        if until_fixed:
            self._mistakes.add(message)
        if message in self._warned:
            return
        self._warned.add(message)
        # The state directory setting: an import hook may warn before anything read it.
        self.ensure_loaded()
        parent, runtime = state_dir(self.settings.state_dir), self.env.get("XDG_RUNTIME_DIR")
        if first_in_service(parent, runtime, self.service_name, message, until_fixed):
            log.warning("sflow_app: %s", message)

    # -- sources ----------------------------------------------------------------------
    @property
    def service_name(self) -> str:
        if self.settings.service_name:
            return self.settings.service_name
        if self._default_name is None:
            self._default_name = default_service_name()
        return self._default_name

    def ensure_loaded(self) -> None:
        """Read the configuration now if it never was (surfaces call this at start-up)."""
        if not self._loaded:
            try:
                self.reload()
            except Exception:
                log.debug("sflow_app: could not read the configuration", exc_info=True)

    def _source(self, cls: type[S], name: str) -> S:
        key = (cls.kind, name)
        source = self._sources.get(key)
        if source is None:
            with self._lock:
                source = self._sources.get(key)
                if source is None:
                    # Surfaces are built at start-up, not on a request: read the config
                    # now so the first requests are sampled at the right rate.
                    self.ensure_loaded()
                    source = cls(self, name)
                    applied = self.settings
                    self._apply_source(source)
                    self._sources[key] = source
                    # A reload (the exporter's) that set new settings meanwhile went over
                    # the sources before this one was among them: apply them here.
                    if self.settings is not applied:
                        self._apply_source(source)
                    if isinstance(source, HttpSource):
                        self._http = source
            self.start_early()
        return cast(S, source)  # keyed by cls.kind: one class per key

    def http_source(self) -> HttpSource:
        return self._source(HttpSource, "")

    def memcache_source(self) -> MemcacheSource:
        return self._source(MemcacheSource, "")

    def app_source(self, application: str) -> AppSource:
        return self._source(AppSource, application)

    def sources(self) -> list[Source]:
        return list(self._sources.values())

    def set_http_port(self, port: int | None, where: str) -> None:
        """Identity capture from the server's listening socket (or a unix socket path)."""
        source = self._http
        if source is None or source.ds_index is not None:
            return
        if self.settings.ds_index is not None:
            source.ds_index = self.settings.ds_index
        elif port:
            source.ds_index = port
        else:
            source.ds_index = local_index(self.service_name, "http", where)
            if self.capture is not None:
                return  # a test client has no listener: nothing for a test's output
            self.warn_service(  # alike in every worker: once for the service
                f"HTTP listener {where!r} has no TCP port: using derived data source "
                f"3:{source.ds_index}; set SFLOW_APP_DS_INDEX to choose one"
            )

    def http_index(self) -> int | None:
        return None if self._http is None else self._http.ds_index

    def identity(self) -> tuple[str, int] | None:
        """(agent address, sub_agent_id), or None while the service's index is unknown."""
        settings = self.settings
        agent_ip = settings.agent_ip
        if agent_ip is None:
            if not settings.collectors:
                return None
            collector = settings.collectors[0][0]
            if self._route[0] != collector:  # a system call: once per collector change
                self._route = (collector, _config.route_address(collector))
            agent_ip = self._route[1]
        sub_agent = settings.sub_agent_for(None if self._http is None else self._http.ds_index)
        if sub_agent is not None:
            return agent_ip, sub_agent
        if self._http is not None:
            return None  # its index is not known yet (the listening port)
        if not self._serving and self._clock() - self._born < SETTLE:
            return None  # an HTTP surface may still be built (it would name the service)
        return agent_ip, local_index(self.service_name, "service")

    # -- sampled path -----------------------------------------------------------------
    def housekeeping(self, caller: Source | None = None) -> None:
        if not self._here[0]:  # forked from C: no at-fork hook ran
            self.after_fork(caller)
        if caller is not None:
            self._serving = True  # a call went through a surface: the app is built
        runner = self.runner
        if not runner.started and self._autostart:
            runner.start()
        if runner.inline:
            runner.pass_inline()

    # -- lifecycle (the thread itself is the runner's) --------------------------------
    def start_early(self) -> None:
        """A surface was built: report from now on, requests or not (see the module doc)."""
        if self.runner.started or not self._autostart:
            return
        try:
            flush_on_sigterm(self.shutdown)  # uvicorn: no atexit after its SIGTERM
            uwsgi = uwsgi_master()
            if uwsgi is None:
                self.housekeeping()
            elif not self._uwsgi_hooked:
                self._uwsgi_hooked = True
                on_uwsgi_fork(uwsgi, self.housekeeping)
        except Exception:
            log.debug("sflow_app: could not start the exporter", exc_info=True)

    def before_fork(self) -> None:
        self.runner.before_fork()

    def after_fork_in_parent(self) -> None:
        self.runner.after_fork_in_parent()

    def next_due(self, passed_at: float) -> float:
        """When the thread must pass next (see _idle): earlier while the process serves."""
        check = self._next_config_check
        watcher = self._watcher
        if watcher is None or not watcher.torn:
            check += IDLE_CHECK_EVERY - CONFIG_CHECK_EVERY
        due = min(check, _idle.next_due(self.exporter, passed_at))
        pools = 0
        for source in self.sources():
            pools += source.sampler.sample_pool
            if source.sampler.raised:  # the guard looks at the load again (see tick)
                due = min(due, passed_at + WINDOW)
        if pools != self._pools:
            # It serves: publish its counts every TICK, as when it was last busy, so the
            # sender's counters lag by at most that (and a killed worker loses no more).
            self._pools = pools
            due = min(due, passed_at + TICK)
        return due

    def tick(self, now: float, *, final: bool = False) -> None:
        for source in self.sources():
            if source.sampler.raised:
                # The overload guard lowers N again from the sampled path: make the next
                # candidate take it, so it does even when the load has fallen away.
                source.sampler.force()
        if self.capture is not None:
            return  # a capture sends nothing; what it counted goes out after it
        if now >= self._next_config_check:
            self._next_config_check = now + CONFIG_CHECK_EVERY
            self.reload()
            self._find_port()
        self.exporter.step(now, final=final)

    def _find_port(self) -> None:
        """A worker that has served nothing yet: its server's port from the listener it
        inherited, so it reports (counters) before its first request."""
        source = self._http
        if source is None or source.ds_index is not None:
            return
        try:
            port, where = server_listener()
        except Exception:
            log.debug("sflow_app: could not find the listening socket", exc_info=True)
            return
        if port:
            self.set_http_port(port, where)

    def shutdown(self, timeout: float = EXIT_FLUSH_TIMEOUT) -> None:
        """Stop the thread and send what is left, within a bounded time."""
        if self.runner.shutdown(timeout):
            for source in self.sources():
                source.sampler.force()  # a process that goes on serving starts it again

    def after_fork(self, caller: Source | None = None) -> None:
        """In a child: reuse nothing inherited (runner, sockets, RNG, queued samples)."""
        self.exporter.abandon()
        self._reset_process_state()
        self._serving = True  # servers fork once the application is built
        self._lock = threading.Lock()
        self._config_lock = threading.Lock()  # a thread of the parent may have held it
        self._next_config_check = 0.0
        for source in self.sources():
            source.reset_after_fork(1 if source is caller else 0)

    def status(self) -> Status:
        """Config source and state, identity, what was sent and dropped: for operators."""
        runner = self.runner
        if not runner.started:
            self.reload()
        settings = self.settings
        ident = self.exporter.identity() if settings.enabled else None
        state = self.exporter.state
        failing = self.exporter.senders.failing()
        return Status(
            **self.stats,
            enabled=settings.enabled,
            state=settings.reason + (f"; failing: {', '.join(failing)}" if failing else ""),
            source=settings.source,
            config_path=self.config_path,
            collectors=[f"{h}:{p}" for h, p in settings.collectors],
            collector_health=self.exporter.senders.view(),
            agent_address=ident[0] if ident else settings.agent_ip,
            sub_agent_id=ident[1] if ident else None,
            service_name=self.service_name,
            pid=self.pid,
            running=runner.started,
            sender=bool(state and state.sender),
            shared_state=getattr(state, "path", None),
            workers_seen=self.exporter.workers_seen(),
            data_sources={
                f"{s.kind}:{s.name}" if s.name else s.kind: {
                    "ds_index": s.ds_index,
                    "sampling_rate": s.sampler.rate,
                    "sample_pool": s.sampler.sample_pool,
                    "drops": s.drops,
                    "counters": dict(zip(s.counters.names, s.counters.snapshot(), strict=True)),
                }
                for s in self.sources()
            },
            queue={"length": len(runner.queue), "capacity": settings.queue_capacity},
        )

    # -- sflow_app.testing ------------------------------------------------------------
    def begin_capture(self, capture: Sink) -> None:
        if self.capture is not None:
            raise RuntimeError("sflow_app.testing.capture() is already active")
        self.ensure_loaded()
        self.capture = capture
        self.enqueue = capture.add
        for source in self.sources():
            self._apply_source(source)

    def end_capture(self, capture: Sink) -> None:
        if self.capture is capture:
            self.capture = None
            self.enqueue = self.runner.put
            for source in self.sources():
                self._apply_source(source)

    def reset(self, **init: Any) -> None:
        """Back to the state of a fresh import (sflow_app.testing.reset)."""
        self.shutdown()
        self.exporter.close()
        for source in self.sources():
            source.retire()  # surfaces built before move to the fresh agent's sources
        runner = self.runner
        self.__init__(**init)  # type: ignore[misc]
        runner.close()
        for forget in ON_RESET:
            forget()

    def after_fork_in_child(self) -> None:
        """The at-fork hook: the parent's pipe is closed here, where no other thread of
        the child runs yet (a fork from C, noticed later, leaves its copy open)."""
        runner = self.runner
        self.after_fork()
        runner.close()


AGENT = Agent()
os.register_at_fork(
    before=AGENT.before_fork,
    after_in_parent=AGENT.after_fork_in_parent,
    after_in_child=AGENT.after_fork_in_child,
)
atexit.register(AGENT.shutdown)

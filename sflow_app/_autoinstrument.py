"""Instrumentation without code changes, for ``sflow-app run`` (see ``_bootstrap``).

Nothing is imported eagerly: each hook waits for the import of the module it patches
(gunicorn, uvicorn, hypercorn, werkzeug, Flask, Django, pymemcache), so a process that never
imports a framework pays for none. Servers are patched where they take the application,
so the middleware sits outermost (around Starlette's error page too) and wraps once:

- gunicorn: ``BaseApplication.wsgi()`` (WSGI apps; ASGI apps under uvicorn's worker are
  left to the uvicorn hook);
- uvicorn: ``Config.load()`` (any ASGI app, Starlette and FastAPI included);
- hypercorn: ``hypercorn.utils.wrap_app`` (ASGI and WSGI apps, as hypercorn decided which:
  ``load_application`` for the command, in each spawned worker, and ``serve()``);
- uWSGI: the ``module`` option's callable, when that module is imported;
- Werkzeug's ``run_simple`` / ``make_server`` (``flask run``, ``app.run()``);
- Flask apps get ``init_app`` (route rules); Django gets the route middleware first in
  ``MIDDLEWARE``; pymemcache gets ``instrument()``.

An application that already carries the middleware (``init_app``, ``SFlowMiddleware``,
``add_middleware``) is left as it is. ``SFLOW_APP_DISABLED_INTEGRATIONS`` names what to
skip: ``flask,django,starlette,fastapi,wsgi,asgi,memcache`` (``pymemcache`` too).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

log = logging.getLogger("sflow_app")

DJANGO_MIDDLEWARE = "sflow_app.integrations.django.SFlowMiddleware"


def disabled(env: Mapping[str, str] = os.environ) -> set[str]:
    """The integrations ``SFLOW_APP_DISABLED_INTEGRATIONS`` names. An unknown name is the
    agent's to warn about, with the other configuration mistakes: once per service, not
    once per process started (this runs in every one)."""
    from ._config_args import integration_names

    return set(integration_names(env.get("SFLOW_APP_DISABLED_INTEGRATIONS", ""))[0])


# -- post-import hooks ---------------------------------------------------------------------
class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``hooks[name](module)`` right after module ``name`` is first executed."""

    def __init__(self) -> None:
        self.hooks: dict[str, list[Callable[[ModuleType], None]]] = {}
        self._busy = threading.local()
        # Inside uWSGI: called once the ``uwsgi`` module exists (after start-up, before
        # the application's module is imported) to hook that module.
        self.when_uwsgi: Callable[[], None] | None = None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if self.when_uwsgi is not None and "uwsgi" in sys.modules:
            ready, self.when_uwsgi = self.when_uwsgi, None
            _guarded(lambda _: ready(), sys.modules["uwsgi"])
        if fullname not in self.hooks or getattr(self._busy, "name", None) == fullname:
            return None
        self._busy.name = fullname  # find the real spec with the other finders
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.name = None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _Loader(spec.loader, self.hooks.pop(fullname, []))
        return spec


class _Loader(importlib.abc.Loader):
    """The module's own loader, the hooks run after ``exec_module``. Its other methods
    are the real loader's: ``get_source`` (linecache's, for a zipapp's tracebacks),
    ``get_data`` (``pkgutil.get_data`` returns None without it), resource readers."""

    def __init__(self, loader: Any, hooks: list[Callable[[ModuleType], None]]) -> None:
        self._loader = loader
        self._hooks = hooks

    def __getattr__(self, name: str) -> Any:
        if name == "_loader":  # not set yet (a half-built copy): no recursion
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        for hook in self._hooks:
            _guarded(hook, module)


_FINDER = _AfterImport()


def when_imported(name: str, hook: Callable[[ModuleType], None]) -> None:
    """Run ``hook(module)`` once ``name`` is imported (now, if it already is)."""
    module = sys.modules.get(name)
    if module is not None:
        _guarded(hook, module)
        return
    _FINDER.hooks.setdefault(name, []).append(hook)
    _listen()


def _listen() -> None:
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _guarded(hook: Callable[[ModuleType], None], module: ModuleType) -> None:
    try:
        hook(module)
    except Exception:  # instrumentation must never stop the application from starting
        log.warning("sflow_app: could not instrument %s", module.__name__, exc_info=True)


# -- is it ours already? ------------------------------------------------------------------
def carries_middleware(app: Any, depth: int = 8) -> bool:
    """Whether ``app`` or what it wraps is already instrumented by sflow_app."""
    from . import asgi, wsgi

    ours = (wsgi.SFlowMiddleware, asgi.SFlowMiddleware)
    seen = 0
    while app is not None and seen < depth:
        if isinstance(app, ours):
            return True
        for middleware in getattr(app, "user_middleware", None) or ():  # Starlette
            if getattr(middleware, "cls", None) is asgi.SFlowMiddleware:
                return True
        inner = getattr(app, "wsgi_app", None)  # Flask: init_app wraps wsgi_app
        if isinstance(inner, ours):
            return True
        app = getattr(app, "app", None) or getattr(app, "application", None)
        seen += 1
    return False


def mounted_middleware(app: Any, depth: int = 4) -> str | None:
    """The path of an app mounted in ``app`` (Starlette's ``Mount``, Werkzeug's
    ``DispatcherMiddleware``) that carries sflow_app's middleware already, or None."""
    if app is None or depth <= 0:
        return None
    mounts: list[tuple[str, Any]] = []
    try:
        for holder in (app, getattr(app, "wsgi_app", None)):
            for route in getattr(holder, "routes", None) or ():
                inner = getattr(route, "app", None)
                if inner is not None:
                    mounts.append((str(getattr(route, "path", "")), inner))
            mounted = getattr(holder, "mounts", None)
            if isinstance(mounted, dict):
                mounts.extend((str(prefix), inner) for prefix, inner in mounted.items())
    except Exception:  # an app's own "routes" that is something else: nothing found
        return None
    for path, inner in mounts:
        if carries_middleware(inner):
            return path or "/"
        deeper = mounted_middleware(inner, depth - 1)
        if deeper is not None:
            return path + deeper
    return None


def _left_alone(app: Any) -> bool:
    """Whether a mounted app carries the middleware (then one warning): wrapping the
    outer app would count that app's requests twice."""
    where = mounted_middleware(app)
    if where is None:
        return False
    from ._agent import AGENT

    AGENT.warn_service(
        f"the app mounted at {where} carries SFlowMiddleware already: sflow-app run "
        "leaves the outer app as it is (wrapped, that app's requests would count twice; "
        f"requests outside {where} are not counted). Put the middleware on the outer app "
        "instead, or set SFLOW_APP_DISABLED_INTEGRATIONS"
    )
    return True


# -- wrapping -----------------------------------------------------------------------------
class Wrapper:
    """Wraps applications as the enabled integrations allow; each app at most once."""

    def __init__(self, off: set[str]) -> None:
        self._env_off = off
        self._done: dict[int, Any] = {}

    @property
    def off(self) -> set[str]:
        """The integrations turned off: configure()'s list once the app gave one (it wins
        over the variable, as for every setting), else SFLOW_APP_DISABLED_INTEGRATIONS's.
        Asked when a hook fires: an app's configure() before its imports counts."""
        from ._agent import AGENT
        from ._config_args import integration_names

        configured = AGENT.configured("disabled_integrations")
        if configured is None:
            return self._env_off
        return set(integration_names(configured)[0])

    def wsgi(self, app: Any) -> Any:
        off = self.off
        if app is None or "wsgi" in off or _is_asgi(app):
            return app
        done = self._done.get(id(app))
        if done is not None:
            return done
        kind = _framework(app, "wsgi")
        if kind in off:  # as for Starlette and FastAPI: that framework's apps left alone
            return app
        wrapped = app
        if not carries_middleware(app) and not _left_alone(app):
            if kind == "flask":
                # (imported by name: integrations/ is installed inside the package)
                importlib.import_module("sflow_app.integrations.flask").init_app(app)
            else:
                from .wsgi import SFlowMiddleware

                wrapped = SFlowMiddleware(app)
        self._done[id(app)] = wrapped
        return wrapped

    def asgi(self, app: Any, user_app: Any = None) -> Any:
        off = self.off
        if app is None or "asgi" in off:
            return app
        kind = _framework(user_app if user_app is not None else app, "asgi")
        if kind in off or carries_middleware(app) or carries_middleware(user_app):
            return app
        if _left_alone(user_app if user_app is not None else app):
            return app
        from .asgi import SFlowMiddleware

        return SFlowMiddleware(app)


def _is_asgi(app: Any) -> bool:
    import inspect

    call = app if inspect.isfunction(app) else getattr(app, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call)


# The frameworks SFLOW_APP_DISABLED_INTEGRATIONS can name, by a class of the app's.
_FRAMEWORKS = (
    ("fastapi.applications.FastAPI", "fastapi"),
    ("starlette.applications.Starlette", "starlette"),
    ("flask.app.Flask", "flask"),
    ("django.core.handlers.wsgi.WSGIHandler", "django"),
)


def _framework(app: Any, other: str) -> str:
    """The framework ``app`` is an application of, else ``other`` ("wsgi", "asgi")."""
    names = {f"{c.__module__}.{c.__name__}" for c in type(app).__mro__}
    return next((kind for cls, kind in _FRAMEWORKS if cls in names), other)


# -- the hooks ------------------------------------------------------------------------------
def _gunicorn(module: ModuleType, wrap: Wrapper) -> None:
    base = module.BaseApplication
    original = base.wsgi

    def wsgi(self: Any) -> Any:
        return wrap.wsgi(original(self))

    base.wsgi = wsgi


def _uvicorn(module: ModuleType, wrap: Wrapper) -> None:
    config = module.Config
    original = config.load

    def load(self: Any) -> None:
        original(self)
        if getattr(self, "_sflow_app_wrapped", False):
            return
        self._sflow_app_wrapped = True
        user_app = self.app if not isinstance(self.app, str) else _innermost(self.loaded_app)
        self.loaded_app = wrap.asgi(self.loaded_app, user_app)

    config.load = load


def _hypercorn(module: ModuleType, wrap: Wrapper) -> None:
    # Patched in hypercorn.utils itself: load_application calls it there, and the modules
    # that import it by name (asyncio/trio ``serve``) are imported after this hook ran.
    original = module.wrap_app
    asgi_wrapper = module.ASGIWrapper

    def wrap_app(app: Any, *args: Any, **kwargs: Any) -> Any:
        wrapper = original(app, *args, **kwargs)
        try:
            # hypercorn has chosen the mode (``asgi:``/``wsgi:`` prefix, else a coroutine
            # ``__call__``); its wrapper keeps the application as ``app``.
            inner = wrapper.app
            if isinstance(wrapper, asgi_wrapper):
                wrapper.app = wrap.asgi(inner)
            else:
                wrapper.app = wrap.wsgi(inner)
        except Exception:  # the application must start, instrumented or not
            log.warning("sflow_app: could not instrument the hypercorn application", exc_info=True)
        return wrapper

    setattr(module, "wrap_app", wrap_app)  # noqa: B010 - typed module


def _innermost(app: Any, depth: int = 8) -> Any:
    """The application under uvicorn's own wrappers (proxy headers, ASGI 2, logging)."""
    for _ in range(depth):
        if not type(app).__module__.startswith("uvicorn."):
            return app
        inner = getattr(app, "app", None)
        if inner is None:
            return app
        app = inner
    return app


def _werkzeug(module: ModuleType, wrap: Wrapper) -> None:
    run_simple, make_server = module.run_simple, module.make_server

    def run_simple_wrapped(hostname: str, port: int, application: Any, *a: Any, **k: Any) -> Any:
        return run_simple(hostname, port, wrap.wsgi(application), *a, **k)

    def make_server_wrapped(host: str, port: int, app: Any, *a: Any, **k: Any) -> Any:
        return make_server(host, port, wrap.wsgi(app), *a, **k)

    setattr(module, "run_simple", run_simple_wrapped)  # noqa: B010 - typed module
    setattr(module, "make_server", make_server_wrapped)  # noqa: B010


def _django(module: ModuleType, wrap: Wrapper) -> None:
    if "django" in wrap.off:
        return
    handler = module.BaseHandler
    original = handler.load_middleware

    def load_middleware(self: Any, *args: Any, **kwargs: Any) -> Any:
        from django.conf import settings

        current = list(settings.MIDDLEWARE)
        if DJANGO_MIDDLEWARE not in current:
            settings.MIDDLEWARE = [DJANGO_MIDDLEWARE, *current]
        return original(self, *args, **kwargs)

    handler.load_middleware = load_middleware


def _memcache(module: ModuleType, wrap: Wrapper) -> None:
    if "memcache" in wrap.off:
        return
    from . import memcache

    memcache.instrument()


def _uwsgi_target() -> tuple[str, str] | None:
    """(module, callable) of uWSGI's ``module``/``wsgi`` option, inside uWSGI."""
    uwsgi = sys.modules.get("uwsgi")
    opt = getattr(uwsgi, "opt", None)
    if not isinstance(opt, dict):
        return None

    def text(key: str) -> str | None:
        value = opt.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        return value.decode() if isinstance(value, bytes) else value

    spec = text("module") or text("wsgi")
    if not spec:
        return None
    name, _, attr = spec.partition(":")
    return name, attr or text("callable") or "application"


def install(env: Mapping[str, str] = os.environ) -> bool:
    """Set up every enabled integration's hook; False when sflow_app is off."""
    if env.get("SFLOW_APP_DISABLE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    off = disabled(env)
    wrap = Wrapper(off)
    when_imported("gunicorn.app.base", lambda m: _gunicorn(m, wrap))
    when_imported("uvicorn.config", lambda m: _uvicorn(m, wrap))
    when_imported("hypercorn.utils", lambda m: _hypercorn(m, wrap))
    when_imported("werkzeug.serving", lambda m: _werkzeug(m, wrap))
    when_imported("django.core.handlers.base", lambda m: _django(m, wrap))
    when_imported("pymemcache", lambda m: _memcache(m, wrap))  # once its __init__ has run

    def uwsgi_ready() -> None:
        target = _uwsgi_target()
        if target is not None:
            name, attr = target

            def wrap_callable(module: ModuleType) -> None:
                setattr(module, attr, wrap.wsgi(getattr(module, attr)))

            when_imported(name, wrap_callable)

    _FINDER.when_uwsgi = uwsgi_ready
    _listen()
    return True

"""sflow_app._autoinstrument and the bootstrap, in process and in fresh interpreters (the
end-to-end runs under real servers are in test_run.py)."""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import logging
import os
import pkgutil
import subprocess
import sys
import traceback
import zipfile
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from helpers import missing

from sflow_app import _autoinstrument as auto
from sflow_app._config import resolve
from sflow_app.asgi import SFlowMiddleware as ASGIMiddleware
from sflow_app.cli._run_cmd import BOOTSTRAP, command_env
from sflow_app.wsgi import SFlowMiddleware as WSGIMiddleware


def plain(environ, start_response):
    start_response("200 OK", [])
    return [b"x"]


async def plain_asgi(scope, receive, send):
    pass


def test_disabled_integrations_parsed_and_unknown_left_to_the_agent(caplog) -> None:
    env = {"SFLOW_APP_DISABLED_INTEGRATIONS": " Flask, pymemcache ,,bogus,flsk"}
    with caplog.at_level(logging.WARNING, logger="sflow_app"):
        assert auto.disabled(env) == {"flask", "memcache"}
    # Every process sflow-app run starts gets here: a warning would repeat in each.
    assert caplog.records == []
    s = resolve({}, env, None, "/etc/hsflowd.auto")
    assert s.disabled_integrations == ("flask", "memcache")
    known = "known: flask, django, starlette, fastapi, wsgi, asgi, memcache"
    assert s.warnings == (
        f"SFLOW_APP_DISABLED_INTEGRATIONS: unknown integration 'bogus' ignored ({known})",
        "SFLOW_APP_DISABLED_INTEGRATIONS: unknown integration 'flsk' ignored "
        f"(did you mean 'flask'? {known})",
    )
    with pytest.raises(ValueError, match=r"unknown integration 'flsk' \(did you mean 'flask'"):
        resolve({"disabled_integrations": "flask,flsk"}, {}, None, "/etc/hsflowd.auto")


def config_json(disabled: str) -> subprocess.CompletedProcess[str]:
    """``sflow-app config --json`` with SFLOW_APP_DISABLED_INTEGRATIONS=``disabled``."""
    return subprocess.run(
        [sys.executable, "-m", "sflow_app", "config", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "SFLOW_APP_DISABLED_INTEGRATIONS": disabled},
        timeout=60,
    )


def test_disabled_integrations_in_sflow_app_config() -> None:
    out = config_json("memcache,asgi")
    setting = json.loads(out.stdout)["settings"]["disabled_integrations"]
    assert setting == {"value": ["memcache", "asgi"], "source": "environment"}
    assert "warning" not in out.stderr


def test_an_unknown_integration_is_a_warning_of_sflow_app_config() -> None:
    out = config_json("memcache,bogus")
    setting = json.loads(out.stdout)["settings"]["disabled_integrations"]
    assert setting == {"value": ["memcache"], "source": "environment"}
    warning = "warning: SFLOW_APP_DISABLED_INTEGRATIONS: unknown integration 'bogus' ignored"
    assert out.stderr.count(warning) == 1, out.stderr


def test_carries_middleware() -> None:
    assert not auto.carries_middleware(plain)
    assert auto.carries_middleware(WSGIMiddleware(plain))
    assert auto.carries_middleware(ASGIMiddleware(plain_asgi))
    flask = Flask(__name__)
    assert not auto.carries_middleware(flask)
    flask.wsgi_app = WSGIMiddleware(flask.wsgi_app)  # type: ignore[method-assign]
    assert auto.carries_middleware(flask)

    class Outer:  # a server's own wrapper around the user's app
        def __init__(self, app: object) -> None:
            self.app = app

    assert auto.carries_middleware(Outer(Outer(WSGIMiddleware(plain))))


def test_an_app_whose_mounted_app_carries_the_middleware_is_left_alone(caplog) -> None:
    """Wrapping the outer app would count the mounted app's requests twice: it is left as
    it is, with one warning that says where and what to do."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from sflow_app.records import HttpRequest
    from sflow_app.testing import capture, reset

    reset()  # this test's state directory (the warning is recorded there), not an earlier one's

    def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hi")

    inner = Starlette(routes=[Route("/x", hello)])
    inner.add_middleware(ASGIMiddleware)
    outer = Starlette(routes=[Mount("/api", app=inner)])
    with caplog.at_level(logging.WARNING, logger="sflow_app"):
        assert auto.Wrapper(set()).asgi(outer) is outer
    assert "the app mounted at /api carries SFlowMiddleware already" in caplog.text
    sent: list[dict[str, Any]] = []

    async def get(path: str) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode()}
        scope.update(query_string=b"", headers=[], http_version="1.1", root_path="")
        await outer(scope, receive, send)

    with capture() as cap:
        asyncio.run(get("/api/x"))
    assert sent[-1]["body"] == b"hi"
    assert [r.uri for r in cap.records(HttpRequest)] == ["/api/x"]  # counted once

    flask = Flask(__name__)
    flask.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask.wsgi_app, {"/legacy": WSGIMiddleware(plain)}
    )
    before = flask.wsgi_app
    assert auto.Wrapper(set()).wsgi(flask) is flask and flask.wsgi_app is before
    assert auto.mounted_middleware(Starlette(routes=[Mount("/api", app=Starlette())])) is None


def test_wrapper_wraps_once_and_leaves_asgi_to_asgi() -> None:
    wrap = auto.Wrapper(set())
    once = wrap.wsgi(plain)
    assert isinstance(once, WSGIMiddleware) and wrap.wsgi(plain) is once
    assert wrap.wsgi(plain_asgi) is plain_asgi  # an ASGI app under a WSGI hook: untouched
    assert auto.Wrapper({"wsgi"}).wsgi(plain) is plain
    assert isinstance(wrap.asgi(plain_asgi), ASGIMiddleware)
    assert auto.Wrapper({"asgi"}).asgi(plain_asgi) is plain_asgi
    flask = Flask(__name__)
    assert wrap.wsgi(flask) is flask and isinstance(flask.wsgi_app, WSGIMiddleware)


def test_a_disabled_wsgi_framework_is_left_alone() -> None:
    """flask or django in SFLOW_APP_DISABLED_INTEGRATIONS: that framework's applications
    are neither counted nor sampled (as starlette/fastapi for ASGI), others still are."""
    from django.core.handlers.wsgi import WSGIHandler

    flask = Flask(__name__)
    assert auto.Wrapper({"flask"}).wsgi(flask) is flask
    assert "wsgi_app" not in vars(flask)  # no init_app (it sets the instance's wsgi_app)
    django = WSGIHandler.__new__(WSGIHandler)  # its type is what counts: no settings needed
    assert auto.Wrapper({"django"}).wsgi(django) is django
    assert isinstance(auto.Wrapper({"django"}).wsgi(plain), WSGIMiddleware)
    assert isinstance(auto.Wrapper({"flask"}).wsgi(django), WSGIMiddleware)


def test_when_imported_runs_after_the_module(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sfa_probe_mod.py").write_text("VALUE = 1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[int] = []
    auto.when_imported("sfa_probe_mod", lambda m: seen.append(m.VALUE))
    try:
        import sfa_probe_mod  # type: ignore[import-not-found]

        assert seen == [1] and sfa_probe_mod.VALUE == 1
        auto.when_imported("sfa_probe_mod", lambda m: seen.append(2))  # already imported
        assert seen == [1, 2]
    finally:
        sys.modules.pop("sfa_probe_mod", None)


def test_a_hooked_package_keeps_its_loaders_other_methods(tmp_path: Path, monkeypatch) -> None:
    """The loader that runs the hooks lends the real one's other methods: package data
    (pkgutil, importlib.resources) and source (linecache, for tracebacks) still work."""
    package = tmp_path / "sfa_probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 3\n", encoding="utf-8")
    (package / "data.txt").write_text("payload", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[object] = []
    auto.when_imported("sfa_probe_pkg", seen.append)
    try:
        import sfa_probe_pkg  # type: ignore[import-not-found]

        assert seen == [sfa_probe_pkg]
        assert pkgutil.get_data("sfa_probe_pkg", "data.txt") == b"payload"
        files = importlib.resources.files("sfa_probe_pkg")
        assert files.joinpath("data.txt").read_text(encoding="utf-8") == "payload"
        loader = sfa_probe_pkg.__loader__
        assert loader.is_package("sfa_probe_pkg")
        assert loader.get_source("sfa_probe_pkg") == "VALUE = 3\n"
    finally:
        sys.modules.pop("sfa_probe_pkg", None)


def test_a_hooked_module_from_a_zip_keeps_its_tracebacks_source(
    tmp_path: Path, monkeypatch
) -> None:
    """A zipapp's module has no file on disk: linecache reads its source through the
    module's loader, which must still offer ``get_source``."""
    archive = tmp_path / "app.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("sfa_probe_zip.py", "def fail():\n    raise ValueError('in the zip')\n")
    monkeypatch.syspath_prepend(str(archive))
    auto.when_imported("sfa_probe_zip", lambda m: None)
    try:
        import sfa_probe_zip  # type: ignore[import-not-found]

        with pytest.raises(ValueError) as raised:
            sfa_probe_zip.fail()
        assert "raise ValueError('in the zip')" in "".join(traceback.format_exception(raised.value))
    finally:
        sys.modules.pop("sfa_probe_zip", None)


def test_a_failing_hook_never_stops_the_import(tmp_path: Path, monkeypatch, caplog) -> None:
    (tmp_path / "sfa_probe_bad.py").write_text("VALUE = 2\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))

    def broken(module: object) -> None:
        raise RuntimeError("hook bug")

    auto.when_imported("sfa_probe_bad", broken)
    try:
        with caplog.at_level(logging.WARNING, logger="sflow_app"):
            import sfa_probe_bad  # type: ignore[import-not-found]
        assert sfa_probe_bad.VALUE == 2
        assert "could not instrument sfa_probe_bad" in caplog.text
    finally:
        sys.modules.pop("sfa_probe_bad", None)


def test_command_env_adds_the_bootstrap_once() -> None:
    env = command_env({"PYTHONPATH": "/a:/b"})
    assert env["PYTHONPATH"] == f"{BOOTSTRAP}:/a:/b"
    assert command_env(env)["PYTHONPATH"] == env["PYTHONPATH"]  # a child: not twice
    assert command_env({})["PYTHONPATH"] == BOOTSTRAP


def test_bootstrap_chains_sitecustomize_and_installs_hooks(tmp_path: Path) -> None:
    mine = tmp_path / "site"
    mine.mkdir()
    marker = tmp_path / "chained"
    (mine / "sitecustomize.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n", encoding="utf-8"
    )
    code = (
        "import sys, sitecustomize\n"
        "from sflow_app import _autoinstrument as a\n"
        "print(sorted(a._FINDER.hooks), a._FINDER in sys.meta_path)\n"
    )
    env = command_env({**os.environ, "PYTHONPATH": str(mine)})
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "gunicorn.app.base" in out.stdout and "pymemcache" in out.stdout
    assert out.stdout.rstrip().endswith("True")
    assert marker.read_text() == "ran"  # the shadowed sitecustomize ran first
    chained = subprocess.run(
        [sys.executable, "-c", "import sys; print(sys.modules.get('sitecustomize'))"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "_bootstrap" in chained.stdout  # ours is the module; it ran the other one


@pytest.mark.parametrize("value", ["1", "true"])
def test_disable_means_no_hooks(tmp_path: Path, value: str) -> None:
    code = "from sflow_app import _autoinstrument as a; print(sorted(a._FINDER.hooks))"
    env = command_env({**os.environ, "SFLOW_APP_DISABLE": value})
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stderr


def hooked_wrap_app(monkeypatch, wrap: auto.Wrapper):
    """hypercorn's ``wrap_app`` with the hook on it (hypercorn.utils restored after)."""
    try:
        import hypercorn.utils as hutils
    except ImportError:
        missing("hypercorn", "pip install -e '.[test]' installs it")
    monkeypatch.setattr(hutils, "wrap_app", hutils.wrap_app)  # undone after the test
    auto._hypercorn(hutils, wrap)
    return hutils.wrap_app


def test_hypercorn_hook_wraps_by_mode_and_never_twice(monkeypatch) -> None:
    """hypercorn.utils.wrap_app, patched in place (restored after): ASGI apps get the ASGI
    middleware, WSGI apps the WSGI one, an app carrying either is left alone."""
    wrap_app = hooked_wrap_app(monkeypatch, auto.Wrapper(set()))
    import hypercorn.app_wrappers as wrappers  # (importable: hooked_wrap_app skips if not)

    asgi = wrap_app(plain_asgi, 1000, None)
    assert isinstance(asgi, wrappers.ASGIWrapper) and isinstance(asgi.app, ASGIMiddleware)
    assert asgi.app.app is plain_asgi
    wsgi = wrap_app(plain, 1000, None)
    assert isinstance(wsgi, wrappers.WSGIWrapper) and isinstance(wsgi.app, WSGIMiddleware)
    assert wsgi.max_body_size == 1000  # hypercorn's own arguments still apply
    # ``wsgi:module:app`` / ``asgi:module:app``: hypercorn's mode decides the middleware
    assert isinstance(wrap_app(plain, 1000, "wsgi").app, WSGIMiddleware)

    ours_asgi, ours_wsgi = ASGIMiddleware(plain_asgi), WSGIMiddleware(plain)
    assert wrap_app(ours_asgi, 1000, None).app is ours_asgi
    assert wrap_app(ours_wsgi, 1000, None).app is ours_wsgi

    class Outer:  # e.g. hypercorn's ProxyFixMiddleware around an instrumented app
        def __init__(self, app: ASGIMiddleware) -> None:
            self.app = app

        async def __call__(self, scope, receive, send):
            await self.app(scope, receive, send)

    outer = Outer(ours_asgi)
    assert wrap_app(outer, 1000, None).app is outer


def test_hypercorn_hook_honours_disabled_integrations() -> None:
    from starlette.applications import Starlette

    mp = pytest.MonkeyPatch()
    try:
        wrap_app = hooked_wrap_app(mp, auto.Wrapper({"asgi", "wsgi"}))
        assert wrap_app(plain_asgi, 1000, None).app is plain_asgi
        assert wrap_app(plain, 1000, None).app is plain
    finally:
        mp.undo()
    starlette = Starlette()
    try:
        wrap_app = hooked_wrap_app(mp, auto.Wrapper({"starlette"}))
        assert wrap_app(starlette, 1000, None).app is starlette
        assert isinstance(wrap_app(plain_asgi, 1000, None).app, ASGIMiddleware)
    finally:
        mp.undo()


def test_hypercorn_hook_never_raises_into_hypercorn(monkeypatch, caplog) -> None:
    class Broken(auto.Wrapper):
        def asgi(self, app: object, user_app: object = None) -> object:
            raise RuntimeError("wrapper bug")

    wrap_app = hooked_wrap_app(monkeypatch, Broken(set()))
    with caplog.at_level(logging.WARNING, logger="sflow_app"):
        served = wrap_app(plain_asgi, 1000, None)
    assert served.app is plain_asgi  # hypercorn's wrapper, uninstrumented: it still serves
    assert "could not instrument the hypercorn application" in caplog.text

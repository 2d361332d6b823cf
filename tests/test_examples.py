"""Every example runs as its docstring says, under its real server, and reports."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import Collector, Server, agent_env, free_port, missing, routes
from memcached import running

from sflow_app.records import HttpCounters, MemcacheOperation

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BIN = Path(sys.executable).parent


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sfx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def serve_and_check(
    server: Server, collector: Collector, paths: list[str], want: dict[str, str | None]
) -> None:
    with server:
        for path in paths:
            httpx.get(server.base + path, timeout=10)
        assert collector.wait_for(lambda c: want.items() <= routes(c).items(), 30), (
            routes(collector),
            server.log(),
        )
        assert collector.wait_for(lambda c: c.latest_counters(HttpCounters) is not None, 10)


def test_flask_under_gunicorn_with_its_config(collector: Collector, tmp: Path) -> None:
    port = free_port()
    # --no-control-socket: gunicorn 23+ opens one at a fixed path, shared by every run.
    argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-w", "2", "--no-control-socket"]
    argv += ["-b", f"127.0.0.1:{port}", "flask_app:app"]
    server = Server(argv, cwd=EXAMPLES, env=agent_env(collector, tmp), port=port, log=tmp / "log")
    serve_and_check(
        server,
        collector,
        ["/users/1", "/users/99", "/healthz"],
        {"/users/1": "/users/<int:user_id>", "/users/99": "/users/<int:user_id>"},
    )
    assert "/healthz" not in routes(collector)  # excluded in the example


def test_fastapi_under_uvicorn(collector: Collector, tmp: Path) -> None:
    port = free_port()
    argv = [str(BIN / "uvicorn"), "fastapi_app:app", "--port", str(port), "--workers", "2"]
    server = Server(argv, cwd=EXAMPLES, env=agent_env(collector, tmp), port=port, log=tmp / "log")
    serve_and_check(
        server,
        collector,
        ["/items/1", "/items/7"],
        {"/items/1": "/items/{item_id}", "/items/7": "/items/{item_id}"},
    )


def test_starlette_under_uvicorn(collector: Collector, tmp: Path) -> None:
    port = free_port()
    argv = [str(BIN / "uvicorn"), "starlette_app:app", "--port", str(port)]
    server = Server(argv, cwd=EXAMPLES, env=agent_env(collector, tmp), port=port, log=tmp / "log")
    serve_and_check(server, collector, ["/users/3"], {"/users/3": "/users/{user_id}"})


@pytest.mark.parametrize("entry", ["wsgi", "asgi"])
def test_django_project(collector: Collector, tmp: Path, entry: str) -> None:
    port = free_port()
    if entry == "wsgi":
        argv = [str(BIN / "gunicorn"), "-w", "2", "--no-control-socket"]
        argv += ["-b", f"127.0.0.1:{port}", "shop.wsgi"]
    else:
        argv = [str(BIN / "uvicorn"), "shop.asgi:application", "--port", str(port)]
    server = Server(
        argv,
        cwd=EXAMPLES / "django_project",
        env=agent_env(collector, tmp),
        port=port,
        log=tmp / "log",
    )
    serve_and_check(server, collector, ["/orders/7"], {"/orders/7": "/orders/<int:order_id>"})


def test_flask_under_uwsgi_ini(collector: Collector, tmp: Path) -> None:
    uwsgi = shutil.which("uwsgi", path=str(BIN)) or shutil.which("uwsgi")
    if uwsgi is None:
        missing("uWSGI", "./scripts/setup --with-servers installs it")
    port = free_port()
    env = agent_env(collector, tmp, PORT=str(port))
    server = Server(
        [uwsgi, "--ini", str(EXAMPLES / "uwsgi.ini")],
        cwd=tmp,
        env=env,
        port=port,
        log=tmp / "log",
    )
    serve_and_check(server, collector, ["/users/2"], {"/users/2": "/users/<int:user_id>"})


def test_memcache_client(collector: Collector, tmp: Path) -> None:
    with running() as mc:
        host, port = mc.server  # type: ignore[misc, str-unpack]
        out = subprocess.run(
            [sys.executable, str(EXAMPLES / "memcache_client.py"), f"{host}:{port}"],
            env=agent_env(collector, tmp, SFLOW_APP_NAME="memcache-example"),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    assert "sample_pool" in out.stdout
    collector.wait_for(lambda c: len(c.records(MemcacheOperation)) >= 300, 10)
    assert len(collector.records(MemcacheOperation)) == 300  # 1-in-1, sent at exit

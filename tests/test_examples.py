"""Every example runs as its docstring says, under its real server, and reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Collector, Server, agent_env, free_port, missing, routes, wait_until
from memcached import running

from sflow_app.records import AppOperation, HttpCounters, MemcacheOperation

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


def uwsgi_ini(collector: Collector, tmp: Path) -> Server:
    """examples/uwsgi.ini under real uWSGI (two workers), reporting to ``collector``."""
    uwsgi = shutil.which("uwsgi", path=str(BIN)) or shutil.which("uwsgi")
    if uwsgi is None:
        missing("uWSGI", "./scripts/setup --with-servers installs it")
    port = free_port()
    env = agent_env(collector, tmp, PORT=str(port))
    argv = [uwsgi, "--ini", str(EXAMPLES / "uwsgi.ini")]
    return Server(argv, cwd=tmp, env=env, port=port, log=tmp / "log")


def test_flask_under_uwsgi_ini(collector: Collector, tmp: Path) -> None:
    server = uwsgi_ini(collector, tmp)
    serve_and_check(server, collector, ["/users/2"], {"/users/2": "/users/<int:user_id>"})


def status_services(state_dir: Path) -> list[dict[str, Any]]:
    # Only this test's state: no SFLOW_APP_* of the caller, no other fallback folder.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFLOW_APP_")}
    env.pop("XDG_RUNTIME_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "sflow_app", "status", "--json"],
        env={**env, "SFLOW_APP_STATE_DIR": str(state_dir), "TMPDIR": str(state_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode in (0, 1), done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)["services"]
    return found


def test_uwsgi_service_is_named_after_its_app(collector: Collector, tmp: Path) -> None:
    """Inside uWSGI sys.argv is ['uwsgi']: the default name comes from uWSGI's options
    (the ini's ``module``), as ``gunicorn flask_app:app`` would name it, in both workers."""
    server = uwsgi_ini(collector, tmp)

    def both_workers() -> bool:
        for user in range(4):
            httpx.get(f"{server.base}/users/{user}", timeout=10)
        found = status_services(tmp)
        return len(found) > 1 or any(s["workers_alive"] == 2 for s in found)

    with server:
        assert wait_until(both_workers, 30), (status_services(tmp), server.log())
        assert [s["name"] for s in status_services(tmp)] == ["flask_app:app"]
        assert collector.wait_for(lambda c: bool(c.records(AppOperation)), 10), server.log()
    assert {str(op.application) for op in collector.records(AppOperation)} == {"flask_app:app"}


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

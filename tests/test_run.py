"""``sflow-app run``: unmodified applications under real servers, instrumented from outside.

The apps in tests/apps/plain import nothing of sflow_app (but ``already.py``, which
uses the middleware itself and must not be wrapped twice).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import Collector, Server, agent_env, free_port, missing, routes
from memcached import Memcached, running

from sflow_app.cli._run_cmd import BOOTSTRAP
from sflow_app.records import (
    HttpCounters,
    HttpRequest,
    MemcacheCounters,
    MemcacheOperation,
)

pytestmark = pytest.mark.slow

PLAIN = Path(__file__).resolve().parent / "apps" / "plain"
BIN = Path(sys.executable).parent
SFLOW_APP = [sys.executable, "-m", "sflow_app", "run", "--"]


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sfr-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def memcached() -> Iterator[Memcached]:
    with running() as mc:
        yield mc


def run_env(collector: Collector, tmp: Path, mc: Memcached | None = None, **extra: str) -> dict:
    env = agent_env(collector, tmp, **extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if mc is not None:
        host, port = mc.server  # type: ignore[misc, str-unpack]
        env["MEMCACHED"] = f"{host}:{port}"
    return env


def gunicorn(port: int, app: str, *extra: str) -> list[str]:
    return [
        "gunicorn",
        "-w",
        "2",
        "--no-control-socket",
        "-b",
        f"127.0.0.1:{port}",
        *extra,
        app,
    ]


def hypercorn(port: int, app: str, *extra: str) -> list[str]:
    if importlib.util.find_spec("hypercorn") is None:
        missing("hypercorn", "pip install -e '.[test]' installs it")
    return ["hypercorn", "--bind", f"127.0.0.1:{port}", *extra, app]


def memcache_hits(collector: Collector) -> int:
    found = collector.latest_counters(MemcacheCounters)
    return -1 if found is None else found.get_hits


def http_total(collector: Collector) -> int:
    found = collector.latest_counters(HttpCounters)
    return 0 if found is None else found.method_get_count


@pytest.mark.parametrize("worker", ["sync", "gthread"])
def test_flask_and_pymemcache_under_gunicorn(
    collector: Collector, tmp: Path, memcached: Memcached, worker: str
) -> None:
    """Every request and memcache operation sampled at 1-in-1; counters exact across the
    two workers (one service, one sender)."""
    port = free_port()
    extra = ["-k", worker] + (["--threads", "4"] if worker == "gthread" else [])
    argv = SFLOW_APP + gunicorn(port, "flask_memcache:app", *extra)
    server = Server(
        argv, cwd=PLAIN, env=run_env(collector, tmp, memcached), port=port, log=tmp / "log"
    )
    n = 20
    with server:
        for i in range(n):
            assert httpx.get(f"{server.base}/items/{i}", timeout=10).status_code == 200
        total = n + 1  # and the one health check that answered
        assert collector.wait_for(lambda c: http_total(c) == total, 20), server.log()
        want = {f"/items/{i}": "/items/<int:item_id>" for i in range(n)}
        assert collector.wait_for(lambda c: want.items() <= routes(c).items(), 10)
        assert collector.wait_for(lambda c: len(c.records(MemcacheOperation)) == 2 * n, 10)
        assert collector.wait_for(lambda c: memcache_hits(c) == n, 10)
    counters = collector.latest_counters(MemcacheCounters)
    assert (counters.cmd_set, counters.get_hits) == (n, n)
    assert len(routes(collector)) == n + 1  # one sample per request, none twice
    assert len({s.ds_index for s in collector.counter_samples()}) == 2  # http, memcache


def test_disabled_integration_memcache(
    collector: Collector, tmp: Path, memcached: Memcached
) -> None:
    port = free_port()
    env = run_env(collector, tmp, memcached, SFLOW_APP_DISABLED_INTEGRATIONS="pymemcache")
    server = Server(
        SFLOW_APP + gunicorn(port, "flask_memcache:app"),
        cwd=PLAIN,
        env=env,
        port=port,
        log=tmp / "log",
    )
    with server:
        for i in range(5):
            httpx.get(f"{server.base}/items/{i}", timeout=10)
        assert collector.wait_for(lambda c: http_total(c) == 6, 20), server.log()
    assert collector.records(MemcacheOperation) == []
    assert collector.latest_counters(MemcacheCounters) is None


def test_disabled_integration_by_configure(
    collector: Collector, tmp: Path, memcached: Memcached
) -> None:
    """configure(disabled_integrations=...) in the app, before its imports: honoured by
    sflow-app run's hooks as the variable is (it used to be accepted and do nothing)."""
    port = free_port()
    server = Server(
        SFLOW_APP + gunicorn(port, "configured_off:app"),
        cwd=PLAIN,
        env=run_env(collector, tmp, memcached),
        port=port,
        log=tmp / "log",
    )
    with server:
        for i in range(5):
            assert httpx.get(f"{server.base}/items/{i}", timeout=10).status_code == 200
        assert collector.wait_for(lambda c: http_total(c) == 6, 20), server.log()
        # Flask is still instrumented (its routes), memcache is not.
        assert collector.wait_for(lambda c: "/items/1" in routes(c), 10), server.log()
    assert collector.records(MemcacheOperation) == []
    assert collector.latest_counters(MemcacheCounters) is None


def test_starlette_under_uvicorn_workers(collector: Collector, tmp: Path) -> None:
    port = free_port()
    argv = [*SFLOW_APP, "uvicorn", "starlette_plain:app", "--port", str(port), "--workers", "2"]
    server = Server(argv, cwd=PLAIN, env=run_env(collector, tmp), port=port, log=tmp / "log")
    with server:
        httpx.get(server.base + "/items/4", timeout=10)
        assert httpx.get(server.base + "/boom", timeout=10).status_code == 500
        want = {"/items/4": "/items/{item_id}", "/boom": "/boom"}
        assert collector.wait_for(lambda c: want.items() <= routes(c).items(), 20), server.log()
    # Outermost, around Starlette's error page: what the client received.
    [boom] = [r for r in collector.records(HttpRequest) if r.uri == "/boom"]
    assert (boom.status, boom.resp_bytes, boom.mime_type) == (
        500,
        len(b"Internal Server Error"),
        "text/plain; charset=utf-8",
    )


def test_an_unknown_integration_warns_once_for_uvicorn_workers(
    collector: Collector, tmp: Path
) -> None:
    """The bootstrap runs in the command, uvicorn and each worker: one warning for all."""
    port = free_port()
    argv = [*SFLOW_APP, "uvicorn", "starlette_plain:app", "--port", str(port), "--workers", "2"]
    env = run_env(collector, tmp, SFLOW_APP_DISABLED_INTEGRATIONS="flask,bogus")
    server = Server(argv, cwd=PLAIN, env=env, port=port, log=tmp / "log")
    with server:
        for i in range(8):  # both workers build their middleware and read their settings
            httpx.get(f"{server.base}/items/{i}", timeout=10)
        assert collector.wait_for(lambda c: http_total(c) >= 1, 20), server.log()
    assert server.log().count("unknown integration 'bogus'") == 1, server.log()


def test_starlette_under_hypercorn(collector: Collector, tmp: Path) -> None:
    """An ASGI app under hypercorn: wrapped outermost, route templates, exact counters."""
    port = free_port()
    argv = SFLOW_APP + hypercorn(port, "starlette_plain:app")
    server = Server(argv, cwd=PLAIN, env=run_env(collector, tmp), port=port, log=tmp / "log")
    with server:
        for i in range(5):
            assert httpx.get(f"{server.base}/items/{i}", timeout=10).status_code == 200
        assert httpx.get(server.base + "/boom", timeout=10).status_code == 500
        want = {f"/items/{i}": "/items/{item_id}" for i in range(5)} | {"/boom": "/boom"}
        assert collector.wait_for(lambda c: want.items() <= routes(c).items(), 20), server.log()
        assert collector.wait_for(lambda c: http_total(c) == 7, 20)  # and the health check
    [boom] = [r for r in collector.records(HttpRequest) if r.uri == "/boom"]
    assert (boom.status, boom.resp_bytes, boom.mime_type) == (
        500,
        len(b"Internal Server Error"),
        "text/plain; charset=utf-8",
    )
    counters = collector.latest_counters(HttpCounters)
    # 5 items, the boom, the health check's 404 on "/"
    assert (counters.status_2XX_count, counters.status_4XX_count) == (5, 1)
    assert counters.status_5XX_count == 1
    assert len(routes(collector)) == 7  # one sample per request, none twice


def test_wsgi_under_hypercorn(collector: Collector, tmp: Path) -> None:
    """hypercorn serves WSGI apps too: those get the WSGI middleware."""
    port = free_port()
    argv = SFLOW_APP + hypercorn(port, "wsgi_plain:application")
    server = Server(argv, cwd=PLAIN, env=run_env(collector, tmp), port=port, log=tmp / "log")
    n = 6
    with server:
        for i in range(n):
            httpx.get(f"{server.base}/w/{i}?q={i}", timeout=10)
        want = {f"/w/{i}?q={i}": None for i in range(n)}
        assert collector.wait_for(lambda c: want.items() <= routes(c).items(), 20), server.log()
        assert collector.wait_for(lambda c: http_total(c) == n + 1, 20)
    [first] = [r for r in collector.records(HttpRequest) if r.uri == "/w/0?q=0"]
    assert (first.status, first.resp_bytes, first.mime_type) == (
        200,
        len(b"plain /w/0"),
        "text/plain",
    )
    assert first.protocol == 1001
    assert len(collector.records(HttpRequest)) == n + 1


def test_hypercorn_workers_are_one_service(collector: Collector, tmp: Path) -> None:
    """``--workers 2``: spawned interpreters (multiprocessing's spawn) that inherit the
    bootstrap through PYTHONPATH; both workers count, under one identity, exactly."""
    port = free_port()
    argv = SFLOW_APP + hypercorn(port, "asgi_plain:app", "--workers", "2")
    server = Server(argv, cwd=PLAIN, env=run_env(collector, tmp), port=port, log=tmp / "log")
    pids: set[str] = set()
    sent = 0
    with server:
        # Which worker accepts a connection is the kernel's choice: ask until both did
        # (a fresh connection per request), bounded generously.
        while len(pids) < 2 and sent < 400:
            reply = httpx.get(f"{server.base}/r/{sent}", timeout=10)
            assert reply.status_code == 200
            pids.add(reply.text.split()[0])
            sent += 1
        assert len(pids) == 2, f"one worker answered all {sent} requests\n{server.log()}"
        assert httpx.get(server.base + "/missing", timeout=10).status_code == 404
        total = sent + 2  # and the health check
        assert collector.wait_for(lambda c: http_total(c) == total, 20), server.log()
    assert len(collector.records(HttpRequest)) == total
    counters = collector.latest_counters(HttpCounters)
    assert (counters.status_2XX_count, counters.status_4XX_count) == (total - 1, 1)
    # one service: one agent and sub-agent, one HTTP data source, for both workers
    assert len({(dg.agent_address, dg.sub_agent_id) for dg in collector.datagrams}) == 1
    assert len({s.ds_index for s in collector.samples()}) == 1


def test_django_under_gunicorn(collector: Collector, tmp: Path) -> None:
    port = free_port()
    env = run_env(collector, tmp, DJANGO_SETTINGS_MODULE="djangoplain.settings")
    server = Server(
        SFLOW_APP + gunicorn(port, "djangoplain.wsgi"),
        cwd=PLAIN,
        env=env,
        port=port,
        log=tmp / "log",
        health="/orders/0",
    )
    with server:
        httpx.get(server.base + "/orders/5", timeout=10)
        want = {"/orders/5": "/orders/<int:order_id>"}
        assert collector.wait_for(lambda c: want.items() <= routes(c).items(), 20), server.log()


def test_uwsgi_module(collector: Collector, tmp: Path) -> None:
    uwsgi = shutil.which("uwsgi", path=str(BIN)) or shutil.which("uwsgi")
    if uwsgi is None:
        missing("uWSGI", "./scripts/setup --with-servers installs it")
    port = free_port()
    argv = [
        *SFLOW_APP,
        uwsgi,
        "--http-socket",
        f"127.0.0.1:{port}",
        "--module",
        "wsgi_plain:application",
        "--master",
        "--processes",
        "2",
        "--enable-threads",
        "--die-on-term",
    ]
    server = Server(argv, cwd=PLAIN, env=run_env(collector, tmp), port=port, log=tmp / "log")
    with server:
        for i in range(4):
            httpx.get(f"{server.base}/u/{i}", timeout=10)
        want = {f"/u/{i}": None for i in range(4)}
        assert collector.wait_for(lambda c: want.items() <= routes(c).items(), 20), server.log()
        assert collector.wait_for(lambda c: http_total(c) == 5, 20)


def test_python_app_py(collector: Collector, tmp: Path, memcached: Memcached) -> None:
    """Flask's own ``app.run()`` (Werkzeug's server)."""
    port = free_port()
    env = run_env(collector, tmp, memcached, PORT=str(port))
    argv = [*SFLOW_APP, "python", "flask_memcache.py"]
    server = Server(argv, cwd=PLAIN, env=env, port=port, log=tmp / "log")
    with server:
        httpx.get(server.base + "/items/1", timeout=10)
        want = {"/items/1": "/items/<int:item_id>"}
        assert collector.wait_for(lambda c: want.items() <= routes(c).items(), 20), server.log()
        assert collector.wait_for(lambda c: len(c.records(MemcacheOperation)) == 2, 10)


@pytest.mark.parametrize(
    "server_app",
    [
        "gunicorn already:app",
        "gunicorn already_wsgi:application",
        "uvicorn already_asgi:app",
        "hypercorn already_asgi:app",
        "hypercorn already_wsgi:application",
    ],
)
def test_app_with_the_middleware_is_not_wrapped_twice(
    collector: Collector, tmp: Path, server_app: str
) -> None:
    """Flask's init_app, a WSGI app wrapped by its author, Starlette's add_middleware."""
    port = free_port()
    name, app = server_app.split()
    if name == "gunicorn":
        argv = SFLOW_APP + gunicorn(port, app)
    elif name == "hypercorn":
        argv = SFLOW_APP + hypercorn(port, app)
    else:
        argv = [*SFLOW_APP, "uvicorn", app, "--port", str(port)]
    server = Server(argv, cwd=PLAIN, env=run_env(collector, tmp), port=port, log=tmp / "log")
    with server:
        for _ in range(9):
            httpx.get(server.base + "/items/1", timeout=10)
        assert collector.wait_for(lambda c: http_total(c) == 10, 20), server.log()
        collector.poll(2.5)  # a second wrapper would count each request twice: 20
    assert http_total(collector) == 10
    assert len(collector.records(HttpRequest)) == 10


def test_existing_sitecustomize_still_runs(collector: Collector, tmp: Path) -> None:
    mine = tmp / "site"
    mine.mkdir()
    marker = tmp / "marker"
    (mine / "sitecustomize.py").write_text(
        f"open({str(marker)!r}, 'a').write('ran\\n')\n", encoding="utf-8"
    )
    port = free_port()
    env = run_env(collector, tmp, PYTHONPATH=str(mine))
    server = Server(
        SFLOW_APP + gunicorn(port, "already:app"), cwd=PLAIN, env=env, port=port, log=tmp / "log"
    )
    with server:
        assert collector.wait_for(lambda c: http_total(c) == 1, 20), server.log()
    assert marker.read_text().count("ran") >= 1  # each Python process ran it once


def test_sigterm_to_the_run_process_stops_the_server(collector: Collector, tmp: Path) -> None:
    """exec: the process started as ``sflow-app run`` *is* the server."""
    port = free_port()
    server = Server(
        SFLOW_APP + gunicorn(port, "already:app"),
        cwd=PLAIN,
        env=run_env(collector, tmp),
        port=port,
        log=tmp / "log",
    )
    server.start()
    try:
        assert server.proc is not None
        # exec: the process is gunicorn now, not `python -m sflow_app run` (argv, not the
        # paths in it: a checkout may well live in a folder named sflow_app)
        argv = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert any(arg.endswith(b"gunicorn") for arg in argv), argv
        assert b"sflow_app" not in argv and b"run" not in argv, argv
        os.kill(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(20) == 0
        assert "Shutting down: Master" in server.log()
    finally:
        server.stop()


def sflow_app_run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sflow_app", "run", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_what_follows_the_command_is_the_commands() -> None:
    """`sflow-app run --foo` and `run -x gunicorn` ended in sflow-app's top-level usage
    error ("unrecognized arguments"), only `run -- --foo` reached run. By getopt's rule,
    as env, nice and timeout: run's own options (-h) come first, the command and all
    its options after."""
    echo = [sys.executable, "-c", "import sys; print(sys.argv[1:])"]
    ran = sflow_app_run(*echo, "--workers", "2", "-h", "--", "app:app")
    assert (ran.returncode, ran.stdout) == (0, "['--workers', '2', '-h', '--', 'app:app']\n")
    for args in (["--weird-cmd"], ["-x", *echo]):
        bad = sflow_app_run(*args)
        assert bad.returncode == 2 and bad.stdout == "", bad.stderr
        assert bad.stderr.startswith("usage: sflow-app run [-h] [--] COMMAND"), bad.stderr
        assert f"sflow-app run: error: unrecognized option '{args[0]}'" in bad.stderr
        assert "goes after '--'" in bad.stderr
    named_like_an_option = sflow_app_run("--", "--weird-cmd")
    assert named_like_an_option.returncode == 127
    assert "sflow-app run: --weird-cmd: command not found" in named_like_an_option.stderr
    for args in (["-h"], ["--help", "--weird-cmd"]):
        shown = sflow_app_run(*args)
        assert shown.returncode == 0 and shown.stdout.startswith("usage: sflow-app run ")
    for args in ([], ["--"]):
        nothing = sflow_app_run(*args)
        assert nothing.returncode == 2 and "error: no command given" in nothing.stderr


def test_exit_status_and_usage(tmp: Path) -> None:
    assert sflow_app_run().returncode == 2
    missing_cmd = sflow_app_run("--", "no-such-command-here")
    assert missing_cmd.returncode == 127 and "not found" in missing_cmd.stderr
    # Its own file: /etc/hostname is mode 755 on some machines (and then, having no #!
    # line, runs with /bin/sh).
    data = tmp / "data"
    data.write_text("not a program\n")
    data.chmod(0o644)
    not_executable = sflow_app_run("--", str(data))
    assert not_executable.returncode == 126 and "not executable" in not_executable.stderr
    assert sflow_app_run("--", sys.executable, "-c", "raise SystemExit(7)").returncode == 7


def test_a_script_without_a_shebang_runs_with_sh(tmp: Path) -> None:
    """A start script with no #! line failed with "Exec format error" (os.execve); env,
    nice, timeout and the shell run it with /bin/sh, as execvp(3) does. A binary the
    kernel refuses is not handed to sh (env's sh says "ELF: not found")."""
    script = tmp / "serve"
    script.write_text('echo "$0" "$@"; echo "$PYTHONPATH"; exit 7\n')
    script.chmod(0o755)
    ran = sflow_app_run("./serve", "a", "b c", cwd=tmp)
    assert ran.returncode == 7, ran.stderr
    said, path = ran.stdout.splitlines()
    assert said == "./serve a b c"
    assert path.split(os.pathsep)[0] == BOOTSTRAP  # what it starts is instrumented
    binary = tmp / "other-machine"
    binary.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))  # no machine's ELF header
    binary.chmod(0o755)
    refused = sflow_app_run(str(binary))
    assert refused.returncode == 126
    assert refused.stderr == (
        f"sflow-app run: {binary}: cannot execute binary file: Exec format error\n"
    )


def test_another_interpreter_ignores_the_bootstrap(tmp: Path) -> None:
    """An interpreter that cannot import sflow_app inherits PYTHONPATH: silence."""
    python = "/usr/bin/python3"
    if not os.path.exists(python):
        pytest.skip("no system Python beside the project's")
    out = subprocess.run(
        [sys.executable, "-m", "sflow_app", "run", "--", python, "-c", "print('ok')"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp,  # not the checkout, where sflow_app would be importable
    )
    assert (out.stdout, out.stderr, out.returncode) == ("ok\n", "", 0)


def test_a_script_whose_interpreter_is_missing(tmp: Path) -> None:
    """`#!/missing/python`: the script exists, so "No such file or directory" (and 126)
    pointed at the wrong file. The shell's words and status: 127."""
    script = tmp / "serve"
    script.write_text("#!/nonexistent/bin/python3\nprint('never')\n")
    script.chmod(0o755)
    out = subprocess.run(
        [sys.executable, "-m", "sflow_app", "run", "--", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 127
    assert "interpreter (the #! line) or loader was not found" in out.stderr

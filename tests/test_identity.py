import logging
import os
import sys
import types

import pytest

from sflow_app import _agent
from sflow_app._identity import LOCAL_FIRST, LOCAL_LAST, default_service_name, local_index


def test_local_index_is_stable_in_range_and_distinct() -> None:
    a = local_index("shop", "memcache")
    assert LOCAL_FIRST <= a <= LOCAL_LAST
    assert a == local_index("shop", "memcache")  # every worker agrees
    assert a != local_index("blog", "memcache")  # two services differ
    assert local_index("shop", "app", "cart") != local_index("shop", "app", "checkout")
    spread = {local_index(f"svc{i}", "memcache") for i in range(2000)}
    assert len(spread) > 1900 and all(LOCAL_FIRST <= i <= LOCAL_LAST for i in spread)


def test_default_service_name() -> None:
    assert (
        default_service_name(["/usr/bin/gunicorn", "-w", "4", "shop.wsgi:app"]) == "shop.wsgi:app"
    )
    assert default_service_name(["uvicorn", "--port", "80", "api.main:app"]) == "api.main:app"
    assert default_service_name(["/srv/worker.py"]) == "worker"
    # gunicorn: -w is its worker count, not uWSGI's module; a bare module is its app.
    assert default_service_name(["gunicorn", "-w", "4", "shop.wsgi"]) == "shop.wsgi"
    assert default_service_name(["/venv/lib/gunicorn/__main__.py", "shop.wsgi"]) == "shop.wsgi"
    assert default_service_name(["gunicorn", "-c", "conf"]) == "python"  # an option's value
    assert default_service_name(["uwsgi", "-w", "shop.wsgi"]) == "shop.wsgi"
    assert default_service_name(["python"]) == "python"
    assert default_service_name([]) == "python"
    uwsgi = ["uwsgi", "--http-socket", "127.0.0.1:80", "--wsgi-file", "/srv/blog/app.py"]
    assert default_service_name(uwsgi) == "app"
    assert default_service_name(["uwsgi", "--ini", "/etc/uwsgi/shop.ini"]) == "shop"
    assert (
        default_service_name(["gunicorn", "-b", "127.0.0.1:80", "api:create_app()"])
        == "api:create_app()"
    )


# uwsgi.opt as uWSGI 2.0 gives it for `uwsgi --ini examples/uwsgi.ini --need-app`: the
# options in the order read, bytes values, True for a bare flag on the command line.
EXAMPLE_OPT = {
    "ini": b"examples/uwsgi.ini",
    "http-socket": b"127.0.0.1:18090",
    "chdir": b"/srv/examples/",
    "module": b"flask_app:app",
    "master": b"true",
    "processes": b"2",
    "enable-threads": b"true",
    "max-requests": b"1000",
    "die-on-term": b"true",
    "need-app": True,
}


def test_a_long_derived_name_is_what_collectors_receive(state_dir: str) -> None:
    """Cut to the 32 bytes of sFlow's application field on a character boundary (the
    encoder cuts there too), so what `sflow-app status` shows and what collectors decode
    are the same name -- and the shared state's source table keeps it whole."""
    from sflow_app._shared import SharedState

    name = default_service_name(["/srv/" + "é" * 40 + ".py"])
    assert name == "é" * 16 and len(name.encode()) == 32
    spec = "a" * 20 + ":x" + "é" * 20
    assert default_service_name(["gunicorn", spec]) == "a" * 20 + ":x" + "é" * 5
    state = SharedState.open(state_dir, "names")
    try:
        state.source_index("app", "€" * 20, 70000)  # 60 bytes: 10 whole characters kept
        assert [e[2] for e in state.entries()] == ["€" * 10]
    finally:
        state.close()


@pytest.mark.parametrize(
    ("opt", "name"),
    [
        (EXAMPLE_OPT, "flask_app:app"),
        ({"ini": b"/etc/uwsgi/shop.ini", "wsgi-file": b"app.py", "master": True}, "shop"),
        ({"http-socket": b"127.0.0.1:80", "wsgi-file": b"/srv/blog/app.py"}, "app"),
        ({"yaml": b"/etc/uwsgi/blog.yaml", "processes": b"4"}, "blog"),
        (
            {"module": [b"blog.wsgi:application", b"admin.wsgi:application"]},
            "blog.wsgi:application",
        ),
        ({"mount": b"/shop=shop.wsgi:application"}, "shop.wsgi:application"),
        # uWSGI 2.0 keeps only a mount's mountpoint: nothing names the app
        ({"mount": b"/shop", "http-socket": b"127.0.0.1:80"}, "python"),
    ],
)
def test_default_service_name_inside_uwsgi(
    monkeypatch: pytest.MonkeyPatch, opt: dict[str, object], name: str
) -> None:
    uwsgi = types.ModuleType("uwsgi")
    uwsgi.opt = opt  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", uwsgi)
    monkeypatch.setattr(sys, "argv", ["uwsgi"])  # what uWSGI's Python sees
    assert default_service_name() == name


def test_unix_socket_listener_gets_a_derived_index_and_one_warning(agent, caplog) -> None:
    a = agent()
    source = a.http_source()
    with caplog.at_level(logging.WARNING, logger="sflow_app"):
        a.set_http_port(None, "unix:/run/app.sock")
        a.set_http_port(None, "unix:/run/app.sock")
    assert source.ds_index == local_index("tests", "http", "unix:/run/app.sock")
    assert LOCAL_FIRST <= source.ds_index <= LOCAL_LAST
    # Another worker of the service (its own agent, the same settings) says nothing more.
    worker = _agent.Agent(autostart=False, env=dict(os.environ))
    worker.reload()
    with caplog.at_level(logging.WARNING, logger="sflow_app"):
        worker.http_source()
        worker.set_http_port(None, "unix:/run/app.sock")
    assert len([r for r in caplog.records if "no TCP port" in r.getMessage()]) == 1


def test_configured_ds_index_wins_over_the_port(agent, monkeypatch) -> None:
    monkeypatch.setenv("SFLOW_APP_DS_INDEX", "70001")
    monkeypatch.setenv("SFLOW_APP_SUB_AGENT_ID", "70002")
    a = agent()
    source = a.http_source()
    a.set_http_port(8080, "test")
    assert source.ds_index == 70001
    assert a.identity() == ("127.0.0.1", 70002)


def test_memcache_and_app_sources_share_the_services_sub_agent(agent) -> None:
    a = agent()
    a.http_source()
    mc = a.memcache_source()
    shop = a.app_source("shop")
    assert mc.ds_index == local_index("tests", "memcache")
    assert shop.ds_index == local_index("tests", "app", "shop")
    assert a.identity() is None  # the HTTP index is not known yet: nothing is sent
    a.set_http_port(8080, "test")
    assert a.identity() == ("127.0.0.1", 8080)


def test_no_http_surface_uses_a_derived_sub_agent(agent) -> None:
    a = agent()
    mc = a.memcache_source()
    # Until a call goes through a surface (or SETTLE seconds pass), an HTTP surface may
    # still be built: it would name the service, so nothing is named yet.
    assert a.identity() is None
    mc.sample(1)  # the slow path of a first call
    assert a.identity() == ("127.0.0.1", local_index("tests", "service"))


def test_no_http_surface_names_itself_after_settling(agent, monkeypatch) -> None:
    a = agent()
    a.memcache_source()
    assert a.identity() is None
    monkeypatch.setattr(a, "_born", a._born - _agent.SETTLE)
    assert a.identity() == ("127.0.0.1", local_index("tests", "service"))

"""sflow_app.integrations.django: the wrapped WSGI application and the route middleware,
in Werkzeug's real server."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

pytest.importorskip("django")

from apps import django_app
from apps.harness import (
    expect,
    flush,
    http_counters,
    http_samples,
    other_samples,
    record,
    serve,
)
from django.core.wsgi import get_wsgi_application as plain_django

from sflow_app import wsgi
from sflow_app.integrations import django as glue
from sflow_app.records import AppOperation, AppParentContext, HttpRequest


def sampled_routes(collector: Any) -> dict[Any, Any]:
    """URI -> the route its sample names (None without one), once everything is sent."""
    flush(collector)
    return {
        record(s, HttpRequest).uri: getattr(record(s, AppOperation), "operation", None)
        for s in http_samples(collector)
    }


def test_routes_counters_and_samples(live, collector):
    live(sampling=1)
    application = glue.get_wsgi_application(exclude=["/feed"])
    assert isinstance(application, wsgi.SFlowMiddleware)
    with serve(application) as url, httpx.Client(base_url=url) as client:
        assert client.get("/blog/2024/hello/").text == "archive 2024"
        assert client.get("/blog/1999/old/").status_code == 404
        assert client.get("/legacy/abc").text == "abc"
        assert client.get("/nowhere").status_code == 404
        assert client.get("/crash").status_code == 500
        assert client.get("/feed").status_code == 200  # excluded
    flush(collector)
    assert http_counters(collector) == expect(
        method_get_count=5, status_2XX_count=2, status_4XX_count=2, status_5XX_count=1
    )
    by_uri = {record(s, HttpRequest).uri: s for s in http_samples(collector)}
    routes = {uri: getattr(record(s, AppOperation), "operation", None) for uri, s in by_uri.items()}
    assert routes == {
        "/blog/2024/hello/": "/blog/<int:year>/<slug:slug>/",
        "/blog/1999/old/": "/blog/<int:year>/<slug:slug>/",
        "/legacy/abc": "^legacy/(?P<code>[a-z]+)$",
        "/nowhere": None,
        "/crash": "/crash",
    }
    assert record(by_uri["/crash"], HttpRequest).status == 500
    assert record(by_uri["/blog/1999/old/"], AppOperation).status == 8  # NOT_FOUND
    (child,) = other_samples(collector)
    assert record(child, AppOperation).operation == "archive_lookup"
    assert record(child, AppParentContext) == AppParentContext(
        "tests", "/blog/<int:year>/<slug:slug>/", "method=GET"
    )


def test_streaming_response_timed_to_its_end(live, collector):
    live(sampling=1)
    with serve(glue.get_wsgi_application()) as url:
        assert httpx.get(url + "/feed").text == "row 0\nrow 1\nrow 2\n"
    flush(collector)
    req = record(http_samples(collector)[-1], HttpRequest)
    assert (req.resp_bytes, req.mime_type, req.status) == (18, "text/csv", 200)
    assert req.uS >= 150_000


def test_middleware_without_wrapping_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(wsgi, "instances", 0)
    monkeypatch.setattr(glue.SFlowMiddleware, "_checked", False)
    application = plain_django()
    with caplog.at_level(logging.WARNING, logger="sflow_app"), serve(application) as url:
        httpx.get(url + "/legacy/a")
        httpx.get(url + "/legacy/b")
    warnings = [r for r in caplog.records if "not wrapped" in r.getMessage()]
    assert len(warnings) == 1
    assert "get_wsgi_application" in warnings[0].getMessage()
    assert django_app.urlpatterns  # the project under test


def test_routes_under_asgi(live, collector):
    """Django's ASGI handler inside sflow_app.asgi.SFlowMiddleware: the same glue
    middleware names the routes (ASGIRequest.scope is the middleware's scope)."""
    import asyncio

    from django.core.asgi import get_asgi_application

    from sflow_app.asgi import SFlowMiddleware as ASGIMiddleware

    live(sampling=1)
    application = ASGIMiddleware(get_asgi_application())

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [
                (await client.get(p)).status_code
                for p in ("/blog/2024/hello/", "/legacy/abc", "/nowhere")
            ]

    assert asyncio.run(run()) == [200, 200, 404]
    routes = sampled_routes(collector)
    assert routes == {
        "/blog/2024/hello/": "/blog/<int:year>/<slug:slug>/",
        "/legacy/abc": "^legacy/(?P<code>[a-z]+)$",
        "/nowhere": None,
    }


def test_routes_under_a_starlette_mount(live, collector):
    """Django's ASGI handler mounted in Starlette (``Mount("/dj", django)``): Django
    resolves the path under the mount (root_path), so its route is named with the
    mount's prefix, as Starlette's own mounted routes are; decorated calls too."""
    import asyncio

    from django.core.asgi import get_asgi_application
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from sflow_app.asgi import SFlowMiddleware as ASGIMiddleware

    live(sampling=1)
    application = Starlette(routes=[Mount("/dj", app=get_asgi_application())])
    application.add_middleware(ASGIMiddleware)

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [(await client.get(p)).status_code for p in ("/dj/blog/2024/hi/", "/dj/no")]

    assert asyncio.run(run()) == [200, 404]
    routes = sampled_routes(collector)
    # A path Django did not resolve: the mount answered (as for any app in a Mount).
    assert routes == {
        "/dj/blog/2024/hi/": "/dj/blog/<int:year>/<slug:slug>/",
        "/dj/no": "/dj/{path}",
    }
    (child,) = other_samples(collector)
    assert record(child, AppParentContext).operation == "/dj/blog/<int:year>/<slug:slug>/"

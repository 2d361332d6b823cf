"""sflow_app.integrations.flask: one call, routes in the samples, Werkzeug's real server."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from apps.harness import (
    expect,
    flush,
    http_counters,
    http_samples,
    other_samples,
    record,
    serve,
)
from flask import Blueprint, Flask, Response, abort, request

from sflow_app._transaction import transaction
from sflow_app.integrations.flask import init_app
from sflow_app.records import AppOperation, AppParentContext, HttpRequest
from sflow_app.wsgi import TRANSACTION_KEY, SFlowMiddleware


def make_app(**options) -> Flask:
    app = Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @transaction("load_user")
    def load_user(user_id: int) -> str:
        return f"user {user_id}"

    @app.get("/users/<int:user_id>")
    def user(user_id: int) -> str:
        if user_id == 0:
            abort(404)
        return load_user(user_id)

    @app.post("/items")
    def items() -> tuple[str, int]:
        return str(len(request.get_data())), 201

    @app.get("/crash")
    def crash() -> str:
        raise RuntimeError("view bug")

    @app.get("/stream")
    def stream() -> Response:
        def generate():
            for _ in range(4):
                time.sleep(0.05)
                yield b"x" * 1000

        return Response(generate(), mimetype="text/csv")

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    shop = Blueprint("shop", __name__, url_prefix="/shop")

    @shop.get("/carts/<cart_id>/lines/<int:line>")
    def line(cart_id: str, line: int) -> str:
        return f"{cart_id}:{line}"

    app.register_blueprint(shop)

    @app.before_request
    def gate():
        if request.path == "/blocked":
            return "blocked", 403
        return None

    @app.get("/blocked")
    def blocked() -> str:  # never reached: the gate answers first
        return "open"

    init_app(app, **options)
    return app


def operation(sample: Any) -> Any:  # an AppOperation or None
    return record(sample, AppOperation)


def test_routes_counters_and_samples(live, collector):
    live(sampling=1)
    app = make_app(exclude=["/healthz"])
    with serve(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/users/7").text == "user 7"
        assert client.get("/users/0").status_code == 404
        assert client.get("/nowhere").status_code == 404
        assert client.post("/items", content=b"abcd").status_code == 201
        assert client.get("/crash").status_code == 500
        assert client.get("/shop/carts/c9/lines/2").text == "c9:2"
        assert client.get("/blocked").status_code == 403
        assert client.get("/healthz").text == "ok"
    flush(collector)
    assert http_counters(collector) == expect(
        method_get_count=6,
        method_post_count=1,
        status_2XX_count=3,
        status_4XX_count=3,
        status_5XX_count=1,
    )
    by_uri = {record(s, HttpRequest).uri: s for s in http_samples(collector)}
    assert set(by_uri) == {
        "/users/7",
        "/users/0",
        "/nowhere",
        "/items",
        "/crash",
        "/shop/carts/c9/lines/2",
        "/blocked",
    }
    routes = {
        uri: (operation(s).operation, operation(s).status) if operation(s) else None
        for uri, s in by_uri.items()
    }
    assert (
        routes
        == {
            "/users/7": ("/users/<int:user_id>", 0),
            "/users/0": ("/users/<int:user_id>", 8),  # NOT_FOUND
            "/nowhere": None,  # no rule matched: no route record
            "/items": ("/items", 0),
            "/crash": ("/crash", 3),  # INTERNAL_ERROR
            # operation is a string<32>: the full template is in the attributes
            "/shop/carts/c9/lines/2": ("/shop/carts/<cart_id>/lines/<int:line>"[:32], 0),
            "/blocked": ("/blocked", 5),  # FORBIDDEN, answered by a before_request
        }
    )
    assert operation(by_uri["/shop/carts/c9/lines/2"]).attributes == (
        "method=GET&route=/shop/carts/<cart_id>/lines/<int:line>"
    )
    op = operation(by_uri["/users/7"])
    assert (op.application, op.attributes, op.status_descr) == (
        "tests",
        "method=GET&route=/users/<int:user_id>",
        "200",
    )
    req = record(by_uri["/crash"], HttpRequest)
    assert (req.status, req.mime_type) == (500, "text/html; charset=utf-8")
    # The decorated function called by the view names the route as its parent.
    (child,) = other_samples(collector)
    assert operation(child).operation == "load_user"
    assert record(child, AppParentContext) == AppParentContext(
        "tests", "/users/<int:user_id>", "method=GET"
    )


def test_streamed_response_timed_to_its_end(live, collector):
    live(sampling=1)
    with serve(make_app()) as url:
        assert len(httpx.get(url + "/stream").content) == 4000
    flush(collector)
    req = record(http_samples(collector)[-1], HttpRequest)
    assert (req.resp_bytes, req.mime_type) == (4000, "text/csv; charset=utf-8")
    assert req.uS >= 200_000
    assert operation(http_samples(collector)[-1]).uS == req.uS


def test_unsampled_requests_get_no_route(live, collector):
    live(sampling=0)
    app = make_app()
    seen = []

    @app.after_request
    def spy(response):
        seen.append(TRANSACTION_KEY in request.environ)
        return response

    with serve(app) as url:
        for _ in range(5):
            httpx.get(url + "/users/1")
    flush(collector)
    assert seen == [False] * 5
    assert http_samples(collector) == []
    assert http_counters(collector) == expect(method_get_count=5, status_2XX_count=5)


def test_init_app_is_idempotent_and_returns_the_middleware(live):
    live(sampling=1)
    app = Flask(__name__)
    first = init_app(app, query="drop")
    assert isinstance(first, SFlowMiddleware) and app.wsgi_app is first
    assert init_app(app) is first
    assert first.query == "drop"
    with pytest.raises(ValueError):
        init_app(Flask(__name__), query="bogus")


def test_transaction_on_a_view(live, collector):
    live(sampling=1)
    app = Flask(__name__)

    @app.get("/report/<int:year>")
    @transaction("report", application="reports")
    def report(year: int) -> str:
        return f"report {year}"

    init_app(app)
    assert app.view_functions["report"].__name__ == "report"  # endpoint name kept
    with serve(app) as url:
        assert httpx.get(url + "/report/2024").text == "report 2024"
    flush(collector)
    (child,) = other_samples(collector)
    op = operation(child)
    assert (op.application, op.operation, op.status) == ("reports", "report", 0)
    assert record(child, AppParentContext) == AppParentContext(
        "tests", "/report/<int:year>", "method=GET"
    )

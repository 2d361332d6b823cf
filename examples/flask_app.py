"""An instrumented Flask application: the one the demo runs, and a template to copy.

    SFLOW_APP_CONFIG=/etc/hsflowd.auto gunicorn -w 2 examples.flask_app:app

Two lines do the sFlow work: ``init_app(app)`` (every request counted, 1-in-N sampled,
routes recorded) and ``@transaction`` on a function worth watching on its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, abort, jsonify, request

from sflow_app import transaction
from sflow_app.integrations.flask import init_app

app = Flask(__name__)
init_app(app, exclude=["/healthz"])

USERS = {1: "ada", 2: "grace", 3: "edsger"}
ORDERS: list[dict[str, object]] = []


@transaction("price_order", application="shop")
def price_order(items: list[str]) -> int:
    time.sleep(0.002)  # pretend to ask a pricing service
    return 250 * len(items)


@app.get("/")
def index() -> Response:
    return jsonify(service="shop", users=len(USERS), orders=len(ORDERS))


@app.get("/healthz")
def healthz() -> str:
    return "ok"  # excluded: neither counted nor sampled


@app.get("/users/<int:user_id>")
def user(user_id: int) -> Response:
    if user_id not in USERS:
        abort(404)
    return jsonify(id=user_id, name=USERS[user_id])


@app.post("/orders")
def create_order() -> tuple[Response, int]:
    items = (request.get_json(silent=True) or {}).get("items", [])
    order = {"id": len(ORDERS) + 1, "items": items, "cents": price_order(items)}
    ORDERS.append(order)
    return jsonify(order), 201


@app.get("/fail")
def fail() -> str:
    raise RuntimeError("an unhandled error: Flask answers 500")


@app.get("/export")
def export() -> Response:
    rows = int(request.args.get("rows", "2000"))

    def generate() -> Iterator[bytes]:
        for i in range(rows):
            if i % 500 == 0:
                time.sleep(0.01)  # a slow producer: the sample's duration covers it
            yield f"{i},order-{i},{i * 3 % 997}\n".encode()

    return Response(generate(), mimetype="text/csv")


if __name__ == "__main__":
    app.run("127.0.0.1", 8000)

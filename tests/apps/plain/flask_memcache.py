"""An application that knows nothing of sflow_app: Flask and pymemcache only.

``sflow-app run`` must instrument both. MEMCACHED is host:port; PORT for ``app.run``.
"""

import os

from flask import Flask
from pymemcache.client.base import Client

app = Flask(__name__)
_host, _, _port = os.environ.get("MEMCACHED", "127.0.0.1:11211").partition(":")
_client: Client | None = None


def cache() -> Client:
    global _client
    if _client is None:
        _client = Client((_host, int(_port)), default_noreply=False, no_delay=True)
    return _client


@app.get("/")
def index() -> str:
    return "plain"


@app.get("/items/<int:item_id>")
def item(item_id: int) -> str:
    cache().set(f"item{item_id}", b"x")
    return str(cache().get(f"item{item_id}"))


if __name__ == "__main__":
    app.run("127.0.0.1", int(os.environ["PORT"]))

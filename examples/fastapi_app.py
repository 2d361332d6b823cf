"""An instrumented FastAPI application.

    SFLOW_APP_CONFIG=/etc/hsflowd.auto uvicorn examples.fastapi_app:app --workers 2

``app.add_middleware(SFlowMiddleware)`` counts every request, samples 1-in-N and records
the route template (``/items/{item_id}``, router prefixes included) with each sample.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException

from sflow_app import transaction
from sflow_app.asgi import SFlowMiddleware

app = FastAPI()
app.add_middleware(SFlowMiddleware, exclude=["/healthz"])

ITEMS = {1: "hammer", 2: "saw"}


@transaction("load_item", application="catalog")
async def load_item(item_id: int) -> str:
    if item_id not in ITEMS:
        raise HTTPException(status_code=404, detail="no such item")
    return ITEMS[item_id]


@app.get("/healthz")
async def healthz() -> str:
    return "ok"  # excluded: neither counted nor sampled


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, object]:
    return {"id": item_id, "name": await load_item(item_id)}

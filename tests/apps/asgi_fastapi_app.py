"""A FastAPI app with a Starlette sub-app, behind sflow_app.asgi.SFlowMiddleware.

Route templates the tests expect in ``app_operation``: ``/items/{item_id}`` (app route),
``/api/users/{uid}`` (include_router prefix), ``/legacy/hello/{name}`` (a Starlette app
mounted under ``/legacy``), ``/ws/{room}`` (websocket route), ``/boom`` (raises).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, WebSocket
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sflow_app.asgi import SFlowMiddleware


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello {request.path_params['name']}")


legacy = Starlette(routes=[Route("/hello/{name}", hello)])

app = FastAPI()
users = APIRouter()


@app.get("/items/{item_id}")
def item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@users.post("/users/{uid}")
async def create_user(uid: str, request: Request) -> dict[str, object]:
    return {"uid": uid, "size": len(await request.body())}


@app.get("/boom")
def boom() -> None:
    raise RuntimeError("boom (expected by the tests)")


@app.websocket("/ws/{room}")
async def chat(websocket: WebSocket, room: str) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"{room}:{text}")
    await websocket.close()


app.include_router(users, prefix="/api")
app.mount("/legacy", legacy)
app.add_middleware(SFlowMiddleware)

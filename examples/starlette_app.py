"""An instrumented Starlette/FastAPI-style ASGI application.

    SFLOW_APP_CONFIG=/etc/hsflowd.auto uvicorn examples.starlette_app:app --workers 2

``app.add_middleware(SFlowMiddleware)`` counts every request, samples 1-in-N and records
the route template (``/users/{user_id}``) with each sample.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sflow_app import transaction
from sflow_app.asgi import SFlowMiddleware


@transaction("lookup_user", application="users")
async def lookup_user(user_id: int) -> dict[str, object]:
    return {"id": user_id, "name": f"user{user_id}"}


async def user(request: Request) -> JSONResponse:
    return JSONResponse(await lookup_user(int(request.path_params["user_id"])))


app = Starlette(routes=[Route("/users/{user_id:int}", user)])
app.add_middleware(SFlowMiddleware, exclude=["/healthz"])

"""A Starlette application that knows nothing of sflow_app."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def item(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"item {request.path_params['item_id']}")


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom (expected by the tests)")


app = Starlette(routes=[Route("/items/{item_id:int}", item), Route("/boom", boom)])

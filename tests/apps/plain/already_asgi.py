"""A Starlette application with the middleware added by its author: not wrapped twice."""

from starlette_plain import app

from sflow_app.asgi import SFlowMiddleware

app.add_middleware(SFlowMiddleware)

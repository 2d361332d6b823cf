"""A bare WSGI application wrapped in the middleware by its author: not to be wrapped twice."""

from wsgi_plain import application as plain

from sflow_app.wsgi import SFlowMiddleware

application = SFlowMiddleware(plain)

"""``_server_apps``' trivial apps behind sflow_app's middleware (configured by the
environment the benchmark gives the server: ``SFLOW_APP_CONFIG``, ``SFLOW_APP_STATE_DIR``)."""

from __future__ import annotations

from _server_apps import bare_asgi, bare_wsgi

from sflow_app.asgi import SFlowMiddleware as ASGIMiddleware
from sflow_app.wsgi import SFlowMiddleware as WSGIMiddleware

sflow_wsgi = WSGIMiddleware(bare_wsgi)
sflow_asgi = ASGIMiddleware(bare_asgi)

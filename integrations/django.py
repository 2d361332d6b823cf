"""Django: the WSGI application, wrapped, and a middleware that records routes.

In ``<project>/wsgi.py``::

    from sflow_app.integrations.django import get_wsgi_application

    application = get_wsgi_application()          # options as sflow_app.wsgi.SFlowMiddleware

or, under an ASGI server, in ``<project>/asgi.py``::

    from django.core.asgi import get_asgi_application
    from sflow_app.asgi import SFlowMiddleware

    application = SFlowMiddleware(get_asgi_application())

and, for route templates in the samples (either way), first in ``settings.py``'s list (a
middleware before it that answers in ``process_view`` would hide the route)::

    MIDDLEWARE = ["sflow_app.integrations.django.SFlowMiddleware", ...]

Counting and sampling happen in :class:`sflow_app.wsgi.SFlowMiddleware` around Django's
WSGI handler (where a response really ends: at the server's ``close()``). The Django
middleware only hands the matched route (``resolver_match.route``, e.g.
``/articles/<int:year>/``) to sampled requests, where it becomes an ``app_operation``
record inside the HTTP flow sample and the parent of ``@transaction`` calls (Django's
ASGI application mounted in Starlette: with the mount's prefix, ``/dj/articles/...``). On
unsampled requests it costs one dict look-up. If no WSGI middleware runs in the process
it logs one warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.core.wsgi import (
    get_wsgi_application as _django_wsgi_application,
)
from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin

from sflow_app import asgi, wsgi
from sflow_app.wsgi import TRANSACTION_KEY, set_route
from sflow_app.wsgi import SFlowMiddleware as _WSGIMiddleware

__all__ = ["SFlowMiddleware", "get_wsgi_application"]

log = logging.getLogger("sflow_app")


def get_wsgi_application(**options: Any) -> _WSGIMiddleware:
    """Django's WSGI application inside :class:`sflow_app.wsgi.SFlowMiddleware`."""
    return _WSGIMiddleware(_django_wsgi_application(), **options)


class SFlowMiddleware(MiddlewareMixin):  # type: ignore[misc]
    """``settings.MIDDLEWARE`` entry: records the route template of sampled requests."""

    _checked = False

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        super().__init__(get_response)

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any, view_kwargs: Any
    ) -> HttpResponseBase | None:
        environ = request.META  # a WSGIRequest's META *is* the WSGI environ
        scope = getattr(request, "scope", None)  # an ASGIRequest's is the ASGI scope
        if TRANSACTION_KEY in environ:
            route = _route(request)
            if route:
                set_route(environ, route)
        elif isinstance(scope, dict):
            if asgi.ROUTE_KEY in scope:
                route = _route(request)
                if route:
                    asgi.set_route(scope, route)
        elif not SFlowMiddleware._checked:
            SFlowMiddleware._checked = True
            if not wsgi.instances and "wsgi.input" in environ:
                log.warning(
                    "sflow_app: %s is in MIDDLEWARE but the WSGI application is not "
                    "wrapped: use sflow_app.integrations.django.get_wsgi_application() "
                    "in wsgi.py",
                    __name__ + ".SFlowMiddleware",
                )
        return None


def _route(request: HttpRequest) -> str | None:
    route = getattr(request.resolver_match, "route", None)
    if not route:
        return None
    return str(route) if route.startswith(("/", "^")) else "/" + route

"""Flask: one call instruments an application, routes included.

::

    from flask import Flask
    from sflow_app.integrations.flask import init_app

    app = Flask(__name__)
    init_app(app)                       # same options as sflow_app.wsgi.SFlowMiddleware

``init_app`` wraps ``app.wsgi_app`` in :class:`sflow_app.wsgi.SFlowMiddleware`, so every
request is counted and sampled whatever server runs the app (``flask run``, gunicorn,
uWSGI). On sampled requests it also records the matched URL rule (``/users/<int:id>``,
blueprint prefixes included) as an ``app_operation`` record inside the HTTP flow sample,
so collectors can group by route without the URI's cardinality; ``@transaction``
functions called by the view name that route as their parent. Unsampled requests pay one
dict look-up for it.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from sflow_app.wsgi import TRANSACTION_KEY, SFlowMiddleware, set_route

__all__ = ["init_app"]


def init_app(app: Flask, **options: Any) -> SFlowMiddleware:
    """Instrument ``app``; returns the middleware (calling it twice changes nothing)."""
    current = app.wsgi_app
    if isinstance(current, SFlowMiddleware):
        return current
    middleware = SFlowMiddleware(current, **options)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    # First in line, so a before_request that answers early still leaves the route.
    app.before_request_funcs.setdefault(None, []).insert(0, _record_route)
    return middleware


def _record_route() -> None:
    environ = request.environ
    if TRANSACTION_KEY in environ:  # sampled
        rule = request.url_rule
        if rule is not None:
            set_route(environ, rule.rule)

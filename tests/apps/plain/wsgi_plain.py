"""A bare WSGI application that knows nothing of sflow_app (for uWSGI)."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"plain " + environ.get("PATH_INFO", "").encode()]

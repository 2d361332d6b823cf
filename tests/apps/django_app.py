"""A minimal Django project in one module, for tests/test_django.py.

Settings are configured on import (once per process); ``urlpatterns`` is the URLconf.
"""

from __future__ import annotations

import time

import django
from django.conf import settings
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.urls import include, path, re_path

from sflow_app._transaction import transaction

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["sflow_app.integrations.django.SFlowMiddleware"],
        INSTALLED_APPS=[],
        DATABASES={},
        LOGGING_CONFIG=None,
    )
    django.setup()


@transaction("archive_lookup")
def archive_lookup(year: int) -> str:
    return f"archive {year}"


def article(request, year: int, slug: str) -> HttpResponse:
    if year < 2000:
        raise Http404("too old")
    return HttpResponse(archive_lookup(year), content_type="text/plain")


def legacy(request, code: str) -> HttpResponse:
    return HttpResponse(code)


def crash(request) -> HttpResponse:
    raise RuntimeError("view bug")


def feed(request) -> StreamingHttpResponse:
    def rows():
        for i in range(3):
            time.sleep(0.05)
            yield f"row {i}\n".encode()

    return StreamingHttpResponse(rows(), content_type="text/csv")


blog = [path("<int:year>/<slug:slug>/", article)]

urlpatterns = [
    path("blog/", include(blog)),
    re_path(r"^legacy/(?P<code>[a-z]+)$", legacy),
    path("crash", crash),
    path("feed", feed),
]

"""WSGI entry point: Django's application wrapped by sflow_app (counts and samples)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

from sflow_app.integrations.django import get_wsgi_application

application = get_wsgi_application()

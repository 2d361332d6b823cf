"""ASGI entry point: Django's ASGI application wrapped by sflow_app's ASGI middleware."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

from django.core.asgi import get_asgi_application

from sflow_app.asgi import SFlowMiddleware

application = SFlowMiddleware(get_asgi_application())

"""Settings of the example shop: the sflow_app middleware first in MIDDLEWARE."""

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS: list[str] = []
# First, so every view's route (``resolver_match.route``) is recorded with its sample.
MIDDLEWARE = ["sflow_app.integrations.django.SFlowMiddleware"]
DATABASES: dict[str, object] = {}
USE_TZ = True

"""flask_memcache's app, but the application turns sflow-app run's memcache integration
off itself, with configure(), before it imports pymemcache."""

import sflow_app

sflow_app.configure(disabled_integrations=["memcache"])

from flask_memcache import app  # noqa: E402  (after configure: that is the point)

__all__ = ["app"]

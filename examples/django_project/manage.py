#!/usr/bin/env python
"""A minimal Django project instrumented with sflow_app.

cd examples/django_project
SFLOW_APP_CONFIG=/etc/hsflowd.auto gunicorn -w 2 shop.wsgi        # WSGI
SFLOW_APP_CONFIG=/etc/hsflowd.auto uvicorn shop.asgi:application  # ASGI
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)

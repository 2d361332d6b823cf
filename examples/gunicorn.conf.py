# gunicorn settings for an instrumented service. The middleware alone is enough; the hook
# hands a stopping worker's counts and samples over before gunicorn tears it down.
from sflow_app.integrations.gunicorn import worker_exit  # noqa: F401

workers = 4
max_requests = 1000
max_requests_jitter = 100

"""Optional gunicorn hooks. The middleware alone is enough; these add precision.

In ``gunicorn.conf.py``::

    from sflow_app.integrations.gunicorn import worker_exit  # noqa: F401

``worker_exit`` hands a recycled or stopped worker's counts and queued samples over before
gunicorn tears the worker down, instead of waiting for the interpreter's ``atexit`` (which
a worker killed by a signal or ``os._exit`` never reaches).
"""

from __future__ import annotations

from typing import Any

from sflow_app._agent import AGENT

__all__ = ["worker_exit"]


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit`` hook: runs in the worker, just before it exits."""
    AGENT.shutdown()

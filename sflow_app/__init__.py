"""sFlow application agent for Python.

Follows the Host sFlow daemon's ``/etc/hsflowd.auto`` and sends sFlow v5 HTTP, memcache
and application samples and counters to the same collectors as the host. Surfaces:
``sflow_app.wsgi.SFlowMiddleware``, ``sflow_app.asgi.SFlowMiddleware``,
``sflow_app.memcache.instrument()`` and the ``sflow_app.transaction`` decorator. Importing
this package starts nothing and imports no framework. The ``sflow-app`` command
(``python -m sflow_app``) lives in ``sflow_app.cli``, which this does not import.
"""

from __future__ import annotations

from typing import Any

from ._transaction import transaction

__all__ = ["configure", "status", "transaction"]
__version__ = "0.1.0"


def configure(**options: Any) -> None:
    """Override settings for this process (highest precedence, per key).

    Keys: ``collectors`` (["127.0.0.1", "[::1]:6343", ...]), ``agent_ip``, ``sampling``
    (int, or {"http": 10, "memcache": 50, "app.shop": 5, "": 400}), ``polling`` (likewise),
    ``datagram``, ``ds_index``, ``sub_agent_id``, ``service_name``, ``parent_ds_index``,
    ``queue_capacity``, ``config_path``, ``state_dir``, ``shared``, ``disable`` -- one per
    ``SFLOW_APP_*`` variable (docs/config.md). Raises ``ValueError`` for a bad value:
    an explicit call should fail loudly; nothing else in the agent ever raises.
    """
    from ._agent import AGENT

    AGENT.configure(**options)


def status() -> dict[str, Any]:
    """What the agent is doing: config source and state, identity, counts sent and dropped."""
    from ._agent import AGENT

    return AGENT.status()

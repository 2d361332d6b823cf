"""sFlow application agent for Python.

Follows the Host sFlow daemon's ``/etc/hsflowd.auto`` and sends sFlow v5 HTTP, memcache
and application samples and counters to the same collectors as the host. Surfaces:
``sflow_app.wsgi.SFlowMiddleware``, ``sflow_app.asgi.SFlowMiddleware``,
``sflow_app.memcache.instrument()`` and the ``sflow_app.transaction`` decorator. Importing
this package starts nothing and imports no framework. The ``sflow-app`` command
(``python -m sflow_app``) lives in ``sflow_app.cli``, which this does not import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ._status import Status
from ._transaction import transaction

if TYPE_CHECKING:
    from ._http import QueryMode

__all__ = ["Status", "configure", "status", "transaction"]
__version__ = "0.1.0"


def configure(
    *,
    collectors: str | Sequence[str | tuple[str, int]] | None = None,
    agent_ip: str | None = None,
    sampling: int | Mapping[str, int] | None = None,
    polling: int | Mapping[str, int] | None = None,
    datagram: int | None = None,
    ds_index: int | None = None,
    sub_agent_id: int | None = None,
    service_name: str | None = None,
    parent_ds_index: int | None = None,
    queue_capacity: int | None = None,
    config_path: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    shared: bool | None = None,
    disable: bool | None = None,
    query: QueryMode | None = None,
    disabled_integrations: str | Sequence[str] | None = None,
    authuser: bool | None = None,
    max_samples: int | None = None,
) -> None:
    """Override settings for this process (highest precedence, per key; None: not given).

    One keyword per ``SFLOW_APP_*`` variable (docs/config.md): ``collectors``
    (["127.0.0.1", "[::1]:6343", ...]), ``agent_ip``, ``sampling`` (int, or {"http": 10,
    "memcache": 50, "app.shop": 5, "": 400}), ``polling`` (likewise), ``datagram``,
    ``ds_index``, ``sub_agent_id``, ``service_name``, ``parent_ds_index``,
    ``queue_capacity``, ``config_path``, ``state_dir``, ``shared``, ``disable``, ``query``
    (the middlewares' default), ``disabled_integrations`` (``sflow-app run``),
    ``authuser`` (user names in samples: personal data), ``max_samples`` (the overload
    guard: flow samples per second per data source, 0 = no cap). Raises
    ``ValueError`` for a bad value (an application other than ``http``, ``memcache`` and
    ``app.<name>`` in ``sampling``/``polling`` too): an explicit call should fail loudly;
    nothing else in the agent ever raises.
    """
    from ._agent import AGENT

    given = {k: v for k, v in locals().items() if k != "AGENT" and v is not None}
    AGENT.configure(**given)


def status() -> Status:
    """What the agent is doing: config source and state, identity, counts sent and dropped."""
    from ._agent import AGENT

    return AGENT.status()

"""pytest plugin (entry point ``pytest11``): the ``sflow_capture`` fixture.

It imports sflow_app only when a test asks for the fixture, so having sflow_app installed
costs other test suites nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .testing import Capture


@pytest.fixture
def sflow_capture() -> Iterator[Capture]:
    """Everything sflow_app samples during the test, 1-in-1, and nothing sent: see
    :func:`sflow_app.testing.capture`."""
    from .testing import capture

    with capture() as cap:
        yield cap

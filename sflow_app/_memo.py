"""Bounded memos for what the exporter derives from values that repeat (a service's URIs,
its clients' addresses, parameter names): computed once, looked up after.

The keys come from clients, so a memo is bounded twice: long keys are never kept, and a
full memo is emptied (a burst of distinct values costs what no memo would, nothing more).
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

MEMO_MAX = 1024  # entries per memo
KEY_MAX = 1024  # characters or bytes of a key's variable parts: at most ~1 MB per memo


def remember(memo: dict[K, V], key: K, value: V, size: int, key_max: int = KEY_MAX) -> V:
    """``value``, kept in ``memo`` under ``key`` when its variable parts (``size``
    characters or bytes in all) are at most ``key_max``."""
    if size <= key_max:
        if len(memo) >= MEMO_MAX:
            memo.clear()
        memo[key] = value
    return value

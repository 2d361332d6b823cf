"""What ``import sflow_app`` costs a process: no wrapt (and so no asyncio, importlib.metadata,
email, zipfile) until something is decorated or memcache is instrumented."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("wrapt", "asyncio", "importlib.metadata", "email", "zipfile")


def loaded_after(code: str) -> list[str]:
    """The heavy modules present in a fresh interpreter after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.split()


def test_import_sflow_app_loads_no_wrapt_nor_asyncio() -> None:
    assert loaded_after("import sflow_app") == []


def test_import_wsgi_middleware_loads_no_wrapt_nor_asyncio() -> None:
    assert loaded_after("import sflow_app.wsgi") == []


def test_decorating_loads_wrapt_and_still_wraps() -> None:
    code = (
        "import sflow_app\n"
        "@sflow_app.transaction\n"
        "def f(x): return x + 1\n"
        "assert f(1) == 2 and f.__wrapped__.__name__ == 'f'\n"
    )
    assert "wrapt" in loaded_after(code)

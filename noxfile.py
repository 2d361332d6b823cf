"""The fast suite on every supported CPython found on this machine (`scripts/test` runs
`nox -s fast` after the full suite; `nox -s fast-3.12` runs one).

Interpreters are looked up on PATH and under pyenv's versions folder, so versions that
pyenv has installed but not selected are found too.
"""

from __future__ import annotations

import glob
import os
import shutil

import nox

SUPPORTED = ("3.11", "3.12", "3.13")
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True


def _interpreter(version: str) -> str | None:
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for path in sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python{version}")):
        return path
    found = shutil.which(f"python{version}")
    return None if found is None or "/shims/" in found else found


FOUND = {v: path for v in SUPPORTED if (path := _interpreter(v))}
# nox finds "pythonX.Y" on PATH: put each found interpreter's folder first.
os.environ["PATH"] = os.pathsep.join(
    [*(os.path.dirname(p) for p in FOUND.values()), os.environ.get("PATH", "")]
)


@nox.session(python=list(FOUND) or list(SUPPORTED))
def fast(session: nox.Session) -> None:
    """ruff and mypy run once in scripts/test; here only the tests, without the slow ones."""
    session.install("-q", "-e", ".[test]")
    session.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "not slow", *session.posargs
    )


if __name__ == "__main__":  # scripts/test: the found versions other than argv[2]
    import sys

    if sys.argv[1:2] == ["--others"]:
        print(" ".join(v for v in FOUND if v not in sys.argv[2:]))

"""``sflow-app run`` puts this folder first on PYTHONPATH: Python imports this module at
start-up, in the command and in every Python process it starts.

It first runs the ``sitecustomize`` it shadows (Debian ships one), then installs
sflow_app's import hooks. In an interpreter where sflow_app cannot be imported (another
virtualenv or Python inheriting PYTHONPATH) it does nothing, silently.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def _instrument() -> None:
    try:
        from sflow_app._autoinstrument import install
    except Exception:
        return  # not this interpreter's package
    install()


_chain()
_instrument()

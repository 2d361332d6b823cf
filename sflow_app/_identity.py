"""Who the service is in sFlow terms: data-source indexes and the sub-agent.

sflow.org's index registry: 1-65535 = the service's primary listening port,
65536-99999 = locally assigned. Locally assigned indexes are a deterministic function of
(service name, kind, name) so every worker of a service agrees and two services on one
host differ.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import zlib
from collections.abc import Mapping

from ._xdr import cut_utf8
from .records import AppOperations

# A service name is the application of app_operations records: sFlow's utf8string<32>.
NAME_BYTES = AppOperations.MAX_BYTES["application"]
LOCAL_FIRST = 65536
LOCAL_LAST = 99999

# Launchers whose argv[0] says nothing about the service they run.
_LAUNCHERS = {
    "gunicorn",
    "uvicorn",
    "uwsgi",
    "hypercorn",
    "daphne",
    "waitress-serve",
    "python",
    "python3",
    "granian",
    "flask",
    "django-admin",
    "celery",
    "-c",
    "-m",
}


def local_index(service: str, kind: str, name: str = "") -> int:
    """A stable index in 65536-99999 for a source with no port of its own."""
    digest = zlib.crc32(f"{service}\0{kind}\0{name}".encode(errors="surrogatepass"))
    return LOCAL_FIRST + digest % (LOCAL_LAST - LOCAL_FIRST + 1)


_APP_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*(\(.*\))?$")
# Options whose value names the application (uWSGI and friends); uWSGI's -w alone, which
# is gunicorn's worker count.
_APP_OPTIONS = {"--module", "--wsgi-file", "--file", "--app", "--wsgi"}
_APP_OPTIONS |= {"--ini", "--yaml", "--json", "--xml"}
# A bare module names gunicorn's application ("shop.wsgi": its "application").
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_BARE_MODULE_SERVERS = {"gunicorn"}
# The same as keys of uwsgi.opt, and mount ("mountpoint=app").
_UWSGI_KEYS = {"module", "wsgi", "wsgi-file", "file", "ini", "yaml", "json", "xml", "mount"}


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".py", ".ini", ".yaml", ".yml", ".json", ".xml"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def uwsgi_args(opt: object) -> list[str]:
    """uWSGI's options that name the application, as command-line arguments.

    Inside uWSGI ``sys.argv`` is ``['uwsgi']``: ``uwsgi.opt`` holds the options of the
    command line and of its config files alike, in the order read (values bytes, True
    for a bare flag, a list when repeated in some versions).
    """
    if not isinstance(opt, Mapping):
        return []
    args = []
    for key, value in opt.items():
        key = os.fsdecode(key)
        if key not in _UWSGI_KEYS:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bytes):
                item = os.fsdecode(item)
            if not isinstance(item, str):
                continue
            if key != "mount":
                args += [f"--{key}", item]
            elif "=" in item:  # uWSGI 2.0 keeps only the mountpoint: nothing to name
                args += ["--module", item.partition("=")[2]]
    return args


def default_service_name(argv: list[str] | None = None) -> str:
    """The documented default for SFLOW_APP_NAME.

    The first ``module:app`` argument (``gunicorn shop.wsgi:app`` -> ``shop.wsgi:app``),
    else the value of ``--module``/``-w``/``--wsgi-file``/``--ini`` (uWSGI), else
    gunicorn's bare module argument (``gunicorn -w 4 shop.wsgi``), else the script's
    name without ``.py``, else ``python``. multiprocessing's spawn restores the parent's
    argv, so uvicorn's spawned workers agree with each other. Under uWSGI the arguments
    are its options (``uwsgi_args``), the same in the master and every worker.
    """
    args = sys.argv if argv is None else argv
    if argv is None and "uwsgi" in sys.modules:
        found = uwsgi_args(getattr(sys.modules["uwsgi"], "opt", None))
        args = ["uwsgi", *found] if found else args
    for arg in args[1:]:
        if _APP_SPEC.match(arg):
            return _fit(arg)
    command = command_name(args[0]) if args else ""
    options = _APP_OPTIONS | {"-w"} if command == "uwsgi" else _APP_OPTIONS
    for option, value in itertools.pairwise(args[1:]):
        if option in options and not value.startswith("-"):
            return _fit(_stem(value.split(":")[0]))
    # gunicorn's positional APP_MODULE, last as usual, not an option's value
    # ("gunicorn -w 4 shop.wsgi"; not "gunicorn -c conf.py").
    last, before = args[-1] if args else "", args[-2] if len(args) > 2 else ""
    valued = not before.startswith("-") or "=" in before  # not "-c conf"
    if command in _BARE_MODULE_SERVERS and len(args) > 1 and _MODULE.match(last) and valued:
        return _fit(last)
    if args:
        base = _stem(args[0])
        if base and base not in _LAUNCHERS:
            return _fit(base)
    return "python"


def command_name(arg0: str) -> str:
    """The command's name: ``gunicorn`` of ``/usr/bin/gunicorn`` and of ``python -m
    gunicorn`` (whose argv[0] is ``.../gunicorn/__main__.py``)."""
    parts = os.path.normpath(arg0).split(os.sep)
    if parts[-1] == "__main__.py" and len(parts) > 1:
        return parts[-2]
    return parts[-1]


def _fit(name: str) -> str:
    """A derived name as collectors receive it whole: at most the 32 bytes of sFlow's
    application field (utf8string<32>), cut on a character boundary."""
    return cut_utf8(name, NAME_BYTES).decode("utf-8", "surrogateescape")

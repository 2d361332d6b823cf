"""``sflow-app status``: every service of this user on this host, read from its state files.

Finds the private state directories (``<state dir>/sflow-app-<uid>[.N]``, also in
``$XDG_RUNTIME_DIR`` and the temp dir, where the agent goes when a name is squatted; root
reads every user's) and reads each instance's file and sidecars without changing anything
(see ``_state_read``). A directory that is not its user's own 0700 folder is skipped:
it is not the agent's. Exit status: 0 when a service was found, 1 when none was, 2 on
usage errors and on a ``--state-dir`` that cannot be read (a configured state directory
that cannot be, the services' too, is noted and the fallbacks searched).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
import tempfile
from typing import Any

from .. import _config
from .._shared import state_dir
from ._escape import escape, utf8_output
from ._state_read import read_instance

PRIVATE = re.compile(r"sflow-app-(\d+)(?:\.\d)?")


class StatusError(Exception):
    """A problem the person running the command must fix (exit status 2)."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="what every service of this user on this host counted and sent",
        description=(
            "Show every sflow_app service of this user on this host (root: of every "
            "user), read from the shared state without changing it: instances, workers "
            "alive and seen, the sender, datagrams and samples sent, drops by cause, send "
            "errors per collector, and per data source its index, sampling rate and "
            "counts. Exit status: 0 when a service was found, 1 when none was, 2 on usage "
            "errors or an unreadable --state-dir."
        ),
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="only the service of this name")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the services keep their state (default: SFLOW_APP_STATE_DIR, else "
        "/dev/shm); also a private folder sflow-app-<uid> itself",
    )
    p.set_defaults(run=run)


def places(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    if args.state_dir:
        return [args.state_dir]
    settings = _config.resolve({}, env, None, _config.config_path({}, env))
    out = [state_dir(settings.state_dir)]
    for extra in (env.get("XDG_RUNTIME_DIR"), tempfile.gettempdir()):
        if extra and extra not in out:
            out.append(extra)
    return out


def private_dirs(place: str, explicit: bool) -> list[tuple[str, int]]:
    """(path, uid) of the private directories in ``place`` this user may read."""
    match = PRIVATE.fullmatch(os.path.basename(os.path.normpath(place)))
    if explicit and match and os.path.isdir(place):
        return [(place, int(match[1]))]  # the private folder itself
    try:
        names = os.listdir(place)
    except FileNotFoundError:
        if explicit:
            raise StatusError(f"{place}: no such directory") from None
        return []
    except NotADirectoryError:
        raise StatusError(f"{place}: not a directory") from None
    except PermissionError:
        raise StatusError(
            f"cannot read {place}: permission denied (the state directory must be "
            "readable by this user; check --state-dir or SFLOW_APP_STATE_DIR)"
        ) from None
    except OSError as exc:
        raise StatusError(f"cannot read {place}: {exc.strerror}") from None
    me = os.getuid()
    out = []
    for name in sorted(names):
        found = PRIVATE.fullmatch(name)
        if found and (me == 0 or int(found[1]) == me):
            out.append((os.path.join(place, name), int(found[1])))
    return out


def read_private(path: str, uid: int, notes: list[str]) -> list[dict[str, Any]]:
    """Every instance in one private directory (none if it is not the agent's)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except PermissionError:
        owner = _owner(path)
        raise StatusError(
            f"cannot read {path}: permission denied (it belongs to uid {owner}: run "
            "'sflow-app status' as that user, or as root)"
        ) from None
    except OSError as exc:
        notes.append(f"skipped {path}: {exc.strerror}")
        return []
    try:
        st = os.fstat(fd)
        if st.st_uid != uid or st.st_mode & 0o077 or not stat.S_ISDIR(st.st_mode):
            notes.append(f"skipped {path}: not a private folder of uid {uid}")
            return []
        out = []
        for name in sorted(os.listdir(fd)):
            report = read_instance(fd, name, uid, notes)
            if report is not None:
                report["state_dir"] = path
                out.append(report)
        return out
    finally:
        os.close(fd)


def _owner(path: str) -> str:
    try:
        return str(os.stat(path).st_uid)
    except OSError:
        return "?"


def gather(args: argparse.Namespace, env: dict[str, str]) -> tuple[list[dict[str, Any]], list[str]]:
    notes: list[str] = []
    services: list[dict[str, Any]] = []
    seen: set[tuple[int, int]] = set()
    explicit = bool(args.state_dir)
    for place in places(args, env):
        try:
            found = private_dirs(place, explicit)
        except StatusError as exc:
            if explicit:
                raise
            # The setting names a file or a folder this user cannot read: the services
            # went on to the fallbacks (_statedir), and so does the search.
            notes.append(f"skipped {exc}")
            continue
        for path, uid in found:
            try:
                key = (os.stat(path).st_dev, os.stat(path).st_ino)
            except OSError:
                continue
            if key not in seen:  # the same folder reached twice (/tmp as two places)
                seen.add(key)
                services += read_private(path, uid, notes)
    if args.name is not None:
        services = [s for s in services if s["name"] == args.name]
    services.sort(key=lambda s: (not s["running"], s["name"] or "", s["instance"]["root_pid"]))
    return services, notes


# -- output -----------------------------------------------------------------------------
def _align(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _show(value: Any) -> str:
    """A cell. Names come from other users' files when root reads them: no control
    characters reach the terminal."""
    return "-" if value is None else escape(str(value))


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{_show(k)}={v}" for k, v in counts.items() if v) or "0"


def table(services: list[dict[str, Any]]) -> str:
    head = ["SERVICE", "UID", "INSTANCE", "STATE", "WORKERS", "SENDER", "DATAGRAMS", "SAMPLES"]
    rows = [[*head, "DROPS", "SEND ERRORS"]]
    sources = [["SERVICE", "INSTANCE", "SOURCE", "DS_INDEX", "RATE", "SAMPLE_POOL", "DROPS"]]
    for s in services:
        name, instance = _show(s["name"]), str(s["instance"]["root_pid"])
        rows.append(
            [
                name,
                str(s["uid"]),
                instance,
                "running" if s["running"] else "not running",
                f"{s['workers_alive']}/{s['workers_seen']}",
                _show(s["sender_pid"]),
                str(s["datagrams"]),
                str(s["samples"]),
                _pairs(s["drops"]),
                _pairs(s["send_errors"]),
            ]
        )
        for d in s["data_sources"]:
            source = _show(f"{d['kind']}:{d['name']}" if d["name"] else d["kind"])
            sources.append(
                [
                    name,
                    instance,
                    source,
                    str(d["ds_index"]),
                    _show(d["sampling_rate"]),
                    str(d["sample_pool"]),
                    str(d["drops"]),
                ]
            )
    lines = _align(rows)
    if len(sources) > 1:
        lines += ["", *_align(sources)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        services, notes = gather(args, dict(os.environ))
    except StatusError as exc:
        print(f"sflow-app status: {exc}", file=sys.stderr)
        return 2
    for note in notes:  # a note can name a file another user named
        print(f"sflow-app status: {escape(note)}", file=sys.stderr)
    if args.json:
        text = json.dumps({"services": services}, ensure_ascii=not utf8_output())
        # A service name with a byte that is not UTF-8 (SFLOW_APP_NAME from a shell) is a
        # surrogate: as its JSON escape, or a UTF-8 stdout fails on it (or writes
        # invalid UTF-8 that jq refuses).
        print(text.encode("utf-8", "backslashreplace").decode())
    elif services:
        print(table(services))
    if not services:
        who = f"named {args.name!r} " if args.name is not None else ""
        where = ", ".join(places(args, dict(os.environ)))
        print(
            f"sflow-app status: no sflow_app service {who}found in {where} (a service "
            "appears once its first worker reports; --state-dir or SFLOW_APP_STATE_DIR "
            "if it keeps its state elsewhere)",
            file=sys.stderr,
        )
        return 1
    return 0

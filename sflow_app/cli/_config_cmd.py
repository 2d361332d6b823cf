"""``sflow-app config``: the settings a process started here would use, and their sources.

Reads the environment and the config file exactly as the agent does (the same watcher, the
same resolution), so what it prints is what a service started from this shell would do.
Exit status 0 when that process would send, 1 when it would send nothing (why, on
stderr), 2 on usage errors -- so ``sflow-app config && exec gunicorn ...`` works.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from .. import _config
from .._config_args import closest_application
from .._shared import state_dir
from .._watch import NO_FILE, NOT_FOUND, ConfigWatcher, file_mistakes
from ._escape import escape, utf8_output

TORN_RETRIES = 10  # x 0.1 s: hsflowd rewrites in place; a torn read usually heals at once
SUPPRESSED = ("empty file", "hsflowd suppressed output (rev-only file)")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "config",
        help="the settings a process started here would use, and where each came from",
        description=(
            "Show the settings a process started here, with this environment, would use: "
            "each with its source (environment, file, default or derived), the config "
            "file's state and the agent's identity. Exit status: 0 when it would send, "
            "1 when it would send nothing (the reason on stderr), 2 on usage errors."
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def _collector(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _disabled(settings: _config.Settings) -> bool:
    return settings.reason.startswith(("off: SFLOW_APP_DISABLE", "off: configure(disable"))


def _file_state(auto: _config.AutoFile | None, settings: _config.Settings) -> str:
    if _disabled(settings):
        return "off"
    if auto is None or auto.reason == NOT_FOUND:
        return "missing"
    if auto.reason == NO_FILE:
        return "none"
    if auto.state == "torn":
        return "torn"
    if auto.state == "ok":
        return "ok" if auto.collectors else "incomplete"
    if auto.reason.startswith(("refused", "cannot")):
        return "refused"
    if auto.reason in SUPPRESSED:
        return "suppressed"
    return "incomplete"  # no agentIP, no rev_start


def _app_keys(auto: _config.AutoFile | None, env: dict[str, str], kind: str) -> list[str]:
    """``http``, ``memcache`` and every application the file or the environment names."""
    names = {"http", "memcache"}
    if auto is not None and auto.usable:
        names |= set(auto.app_sampling if kind == "sampling" else auto.app_polling)
    for var, value in env.items():
        found = _config.per_app_variable(var)
        if found is None or found[0] != f"SFLOW_APP_{kind.upper()}_" or not value.strip():
            continue
        if closest_application(found[1]) is None:  # else ignored, with a warning
            names.add(found[1])
    return sorted(names)


def gather(env: dict[str, str]) -> tuple[dict[str, Any], _config.Settings, list[str]]:
    """(the report, the settings, warnings) for a process started with ``env``."""
    warnings: list[str] = []
    path = _config.config_path({}, env)
    quiet = logging.getLogger("sflow_app.cli.config")
    quiet.propagate, quiet.disabled = False, True
    watcher = ConfigWatcher(path, logger=quiet, warn=warnings.append)
    auto = watcher.current()
    for _ in range(TORN_RETRIES):
        if auto is None or auto.state != "torn":
            break
        time.sleep(0.1)
        auto = watcher.current()
    settings = _config.resolve({}, env, auto, path)
    origin = settings.sources.get("config_path")
    mistakes = file_mistakes(auto, path, origin, settings.reason)
    warnings = [*settings.warnings, *warnings, *mistakes]
    src = settings.sources
    out: dict[str, dict[str, Any]] = {}

    def put(key: str, value: Any, source: str) -> None:
        out[key] = {"value": value, "source": source}

    put("disable", _disabled(settings), src.get("disable", "default"))
    for kind in ("sampling", "polling"):
        get = settings.sampling_setting if kind == "sampling" else settings.polling_setting
        put(kind, *get(""))
        for app in _app_keys(auto, env, kind):
            put(f"{kind}.{app}", *get(app))
    collectors = settings.collectors
    put("collector", [_collector(h, p) for h, p in collectors], src.get("collectors", "default"))
    if settings.agent_ip is not None:
        agent_ip, agent_src = settings.agent_ip, src.get("agent_ip", "default")
    elif collectors:
        agent_ip, agent_src = _config.route_address(collectors[0][0]), "derived"
    else:
        agent_ip, agent_src = None, "derived"
    put("agentIP", agent_ip, agent_src)
    put("datagram", settings.datagram, src.get("datagram", "default"))
    put("parent_ds_index", settings.parent_ds_index, src.get("parent_ds_index", "default"))
    # What only the running server knows (its listening port, its command line): null.
    put("ds_index", settings.ds_index, src.get("ds_index", "derived"))
    sub_agent = settings.sub_agent_for(settings.ds_index)
    put("sub_agent_id", sub_agent, src.get("sub_agent_id", "derived"))
    put("service_name", settings.service_name, src.get("service_name", "derived"))
    put("queue_capacity", settings.queue_capacity, src.get("queue_capacity", "default"))
    put("state_dir", state_dir(settings.state_dir), src.get("state_dir", "default"))
    put("shared", settings.shared, src.get("shared", "default"))
    put("config", path, src.get("config_path", "default"))
    # Every other registered setting, as the registry names it (later ones too).
    shown = {"config_path", "disable", "sampling", "polling", "collectors", "agent_ip"}
    for var in _config.VARS:
        if var.key not in out and var.field not in shown:
            value = getattr(settings, var.field, None)
            put(
                var.key,
                list(value) if isinstance(value, tuple) else value,
                src.get(var.field, "default"),
            )
    report = {
        "settings": out,
        "file": {
            "path": path,
            "state": _file_state(auto, settings),
            "rev": auto.rev_start if auto is not None and auto.rev_start is not None else None,
            "reason": auto.reason if auto is not None else NOT_FOUND,
        },
        "identity": {
            "agent_ip": agent_ip,
            "agent_ip_source": agent_src,
            "sub_agent_id": sub_agent,
            "ds_index": settings.ds_index,
            "service_name": settings.service_name,
        },
        "would_send": {"value": settings.enabled, "reason": settings.reason},
    }
    return report, settings, warnings


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(escape(v) for v in value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return escape(str(value))  # a name from a non-UTF-8 environment holds surrogates


def table(report: dict[str, Any]) -> str:
    rows = [(k, _show(v["value"]), v["source"]) for k, v in report["settings"].items()]
    file, ident, verdict = report["file"], report["identity"], report["would_send"]
    rows += [
        ("", "", ""),
        ("file", escape(file["path"]), file["state"]),
        ("file rev", _show(file["rev"]), escape(file["reason"])),
        ("agent address", _show(ident["agent_ip"]), ident["agent_ip_source"]),
        ("would send", _show(verdict["value"]), escape(verdict["reason"])),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    head = f"{'SETTING':<{widths[0]}}  {'VALUE':<{widths[1]}}  SOURCE"
    lines = [head] + [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report, settings, warnings = gather(dict(os.environ))
    for warning in warnings:
        print(f"sflow-app config: warning: {warning}", file=sys.stderr)
    if args.json:
        # A surrogate (an undecodable byte of the environment) as its JSON escape: a UTF-8
        # stdout cannot write it raw.
        text = json.dumps(report, ensure_ascii=not utf8_output())
        print(text.encode("utf-8", "backslashreplace").decode())
    else:
        print(table(report))
    if not settings.enabled:
        print(f"sflow-app config: would send nothing: {settings.reason}", file=sys.stderr)
        return 1
    return 0

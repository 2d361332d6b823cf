"""What ``configure()`` and the ``SFLOW_APP_*`` variables accept: validators that raise a
ValueError fit for a log line (the registry in _config names which one each setting
uses), and the names of applications and integrations they check against."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ._auto import (
    DEFAULT_PORT,
    Collectors,
    Rates,
    parse_agent_ip,
    parse_app_name,
    parse_collector_ip,
    parse_port,
    shown,
)

if TYPE_CHECKING:
    from ._http import QueryMode


# -- configure() and environment validators: ValueError fit for a log line ----------


def int_arg(value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{value} is outside {lo}..{hi}")
    return value


def flag(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{shown(text)} is not 1/true/yes or 0/false/no")


def collector_spec(item: str) -> tuple[str, int]:
    """``ip``, ``ip:port``, ``[v6]``, ``[v6]:port``, ``ip port`` (hsflowd.auto's form) or
    a bare v6 address (no port) -- unless it may end in a port (``::1:6343``): refused."""
    item = item.strip()
    port = DEFAULT_PORT
    words = item.split()
    if len(words) == 2 and not item.startswith("["):
        return parse_collector_ip(words[0]), parse_port(words[1])
    if item.startswith("["):
        host, closed, rest = item[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"bad collector {shown(item)} (expected [v6]:port)")
        if rest:
            port = parse_port(rest[1:])
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
        port = parse_port(port_text)
    else:
        host = parse_collector_ip(item)
        _refuse_a_port_in_disguise(item)
        return host, port
    return parse_collector_ip(host), port


def _refuse_a_port_in_disguise(item: str) -> None:
    """A bare v6 address whose last group could be a port after another address: which
    one was meant cannot be known, and either guess would send elsewhere unannounced."""
    head, _, tail = item.rpartition(":")
    if not (tail.isascii() and tail.isdigit()):
        return
    try:
        parse_port(tail)
        parse_collector_ip(head)
    except ValueError:
        return  # only the address reading holds (2001:db8::5)
    raise ValueError(
        f"ambiguous: write [{head}]:{tail} for port {tail} of {head}, "
        f"or [{item}] for that address (port {DEFAULT_PORT})"
    )


def collectors_arg(value: object) -> Collectors:
    """configure(collectors=...) or SFLOW_APP_COLLECTORS: a comma-separated string, or an
    iterable of such strings and (ip, port) pairs. IP literals only: no DNS lookups here."""
    items: Iterable[object]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, Iterable):
        items = value
    else:
        raise ValueError(f"expected 'ip[:port]' strings or (ip, port) pairs, got {value!r}")
    found: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str):
            if item.strip():
                found.append(collector_spec(item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            found.append((parse_collector_ip(item[0]), int_arg(item[1], 1, 65535)))
        else:
            raise ValueError(f"bad collector {item!r}")
    if not found:
        raise ValueError("no collectors given (use disable to turn sFlow off)")
    return tuple(dict.fromkeys(found))  # the same collector twice would double-count


def name_arg(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


# The applications sampling.<app> and polling.<app> can name here: these and app.<name>
# (docs/config.md). hsflowd.auto may name others, for other agents: never warned about.
APPLICATIONS = ("http", "memcache", "app")


def closest_application(app: str) -> str | None:
    """None when ``app`` (dotted, lower case) is an application of this agent; else the
    closest one to suggest ("" when none is close). A key no source looks up would be
    silently useless, as a misspelt variable would."""
    first, dot, _ = app.partition(".")
    parts = app.split(".")
    if not all(parts):  # SFLOW_APP_SAMPLING_APP__SHOP: app..shop, never looked up
        cleaned = ".".join(p for p in parts if p)
        return cleaned if cleaned and closest_application(cleaned) is None else ""
    if first == "app" or (app in APPLICATIONS and not dot):
        return None
    close = difflib.get_close_matches(first, APPLICATIONS, n=1, cutoff=0.6)
    if close:
        return close[0]
    return f"app.{app}" if all(app.split(".")) else ""


def rates_arg(value: object, hi: int) -> Rates:
    """``sampling=10`` or ``sampling={"http": 10, "app.shop": 5, "": 400}``."""
    if not isinstance(value, Mapping):
        return Rates(int_arg(value, 0, hi))
    generic, apps = None, {}
    for key, n in value.items():
        if not isinstance(key, str):
            raise ValueError(f"application names are strings, got {key!r}")
        if key.strip().lower() in ("", "default"):
            generic = int_arg(n, 0, hi)
            continue
        app = parse_app_name(key)
        close = closest_application(app)
        if close is not None:
            hint = f"did you mean {close!r}? " if close else ""
            known = "http, memcache, app.<name>"
            raise ValueError(f"unknown application {app!r}; {hint}(the applications: {known})")
        apps[app] = int_arg(n, 0, hi)
    return Rates(generic, apps)


def bool_arg(value: object) -> bool:
    return value if isinstance(value, bool) else flag(str(value))


def agent_ip_arg(value: object) -> str:
    return parse_agent_ip(name_arg(value))


def path_arg(value: object) -> str:
    text = os.fsdecode(os.fspath(value)).strip() if isinstance(value, str | os.PathLike) else ""
    if not text or "\0" in text:  # a NUL: every later stat() would raise, status() too
        raise ValueError(f"expected a path, got {value!r}")
    return text


def path_env(text: str) -> str:
    return text  # already stripped; an empty value means unset


# What SFLOW_APP_DISABLED_INTEGRATIONS can name (sflow-app run's integrations).
INTEGRATIONS = ("flask", "django", "starlette", "fastapi", "wsgi", "asgi", "memcache")
INTEGRATION_SYNONYMS = {"pymemcache": "memcache"}


def query_mode(value: object) -> QueryMode:
    from ._http import QUERY_MODES

    for mode in QUERY_MODES:
        if str(value).strip().lower() == mode:
            return mode
    raise ValueError(f"expected one of {', '.join(QUERY_MODES)}, got {shown(str(value))}")


def integration_names(value: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(known, unknown) integration names in a comma-separated list (or a sequence)."""
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, Iterable):
        items = list(value)
    elif not value:
        items = []
    else:
        raise ValueError(f"expected a comma-separated list or a sequence, got {value!r}")
    known: list[str] = []
    unknown: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        name = INTEGRATION_SYNONYMS.get(name, name)
        if name:
            (known if name in INTEGRATIONS else unknown).append(name)
    return tuple(dict.fromkeys(known)), tuple(unknown)


def _unknown_integration(name: str, verdict: str = "") -> str:
    close = difflib.get_close_matches(name, INTEGRATIONS, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown integration {shown(name)}{verdict} ({hint}known: {', '.join(INTEGRATIONS)})"


def integrations_arg(value: object) -> tuple[str, ...]:
    known, unknown = integration_names(value)
    if unknown:
        raise ValueError(_unknown_integration(unknown[0]))
    return known


def env_integrations(raw: str, warnings: list[str]) -> tuple[str, ...] | None:
    """SFLOW_APP_DISABLED_INTEGRATIONS: an unknown name is ignored with a warning; the known
    ones still apply (a typo must not turn an integration back on)."""
    known, unknown = integration_names(raw)
    for name in unknown:
        message = _unknown_integration(name, " ignored")
        warnings.append(f"SFLOW_APP_DISABLED_INTEGRATIONS: {message}")
    return known if raw.strip() else None

"""Settings resolution: configure() kwargs, environment and a parsed hsflowd.auto.

Pure: no file, environment or clock access except through arguments (``route_address``
is the one exception: it asks the kernel for a route, without sending a packet).
Precedence is per key: ``configure()`` keyword arguments > ``SFLOW_APP_*`` environment
variables > /etc/hsflowd.auto > defaults. docs/config.md is the operator's view of it.
The file itself is parsed by _auto.py.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from ._auto import DEFAULT_PORT, Collectors, Rates, _app_name, _ip, _port, _uint

# Re-exported: _watch and the tests import the parser's names from here.
from ._auto import MAX_WARNINGS as MAX_WARNINGS
from ._auto import U32 as U32
from ._auto import AutoFile as AutoFile
from ._auto import parse_auto as parse_auto

DEFAULT_CONFIG_PATH = "/etc/hsflowd.auto"
DEFAULT_SAMPLING = 400  # hsflowd's own default 1-in-N
DEFAULT_POLLING = 30  # seconds
DEFAULT_DATAGRAM = 1400
DATAGRAM_MIN, DATAGRAM_MAX = 200, 1500  # SFL_MIN/MAX_DATAGRAM_SIZE
DEFAULT_QUEUE = 4096
QUEUE_MIN, QUEUE_MAX = 64, 1 << 20
POLLING_MAX = 3600
DS_INDEX_MAX = 2**24 - 1  # compact source_id keeps 24 bits for the index

SourceKind = Literal["file", "explicit", "off"]

# Names configure() accepts (the Settings field names, plus the file's path).
KWARGS = frozenset(
    {
        "disable",
        "collectors",
        "agent_ip",
        "sampling",
        "polling",
        "datagram",
        "ds_index",
        "sub_agent_id",
        "service_name",
        "parent_ds_index",
        "queue_capacity",
        "config_path",
    }
)


# -- configure() and environment validators: ValueError fit for a log line ----------


def _int_arg(value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{value} is outside {lo}..{hi}")
    return value


def _flag(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not 1/true/yes or 0/false/no")


def _collector_spec(item: str) -> tuple[str, int]:
    """``ip``, ``ip:port``, ``[v6]``, ``[v6]:port`` or a bare v6 address (no port)."""
    item = item.strip()
    port = DEFAULT_PORT
    if item.startswith("["):
        host, closed, rest = item[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"bad collector {item!r} (expected [v6]:port)")
        if rest:
            port = _port(rest[1:])
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
        port = _port(port_text)
    else:
        host = item
    return _ip(host), port


def _collectors_arg(value: object) -> Collectors:
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
                found.append(_collector_spec(item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            found.append((_ip(item[0]), _int_arg(item[1], 1, 65535)))
        else:
            raise ValueError(f"bad collector {item!r}")
    if not found:
        raise ValueError("no collectors given (use disable to turn sFlow off)")
    return tuple(dict.fromkeys(found))  # the same collector twice would double-count


# -- resolution ---------------------------------------------------------------------


@dataclass
class _Layer:
    """One precedence level; None = this level does not set the key."""

    disable: bool | None = None
    collectors: Collectors | None = None
    agent_ip: str | None = None
    sampling: Rates = field(default_factory=Rates)
    polling: Rates = field(default_factory=Rates)
    datagram: int | None = None
    ds_index: int | None = None
    sub_agent_id: int | None = None
    service_name: str | None = None
    parent_ds_index: int | None = None
    queue_capacity: int | None = None


_INT_BOUNDS = {
    "datagram": (DATAGRAM_MIN, DATAGRAM_MAX),
    "ds_index": (1, DS_INDEX_MAX),
    "sub_agent_id": (0, U32),
    "parent_ds_index": (0, U32),
    "queue_capacity": (QUEUE_MIN, QUEUE_MAX),
}
_ENV_NAMES = {
    "SFLOW_APP_DISABLE": "disable",
    "SFLOW_APP_COLLECTORS": "collectors",
    "SFLOW_APP_AGENT_IP": "agent_ip",
    "SFLOW_APP_DATAGRAM": "datagram",
    "SFLOW_APP_DS_INDEX": "ds_index",
    "SFLOW_APP_SUB_AGENT_ID": "sub_agent_id",
    "SFLOW_APP_NAME": "service_name",
    "SFLOW_APP_PARENT_DS_INDEX": "parent_ds_index",
    "SFLOW_APP_QUEUE": "queue_capacity",
}


def _name_arg(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _rates_arg(value: object, hi: int) -> Rates:
    """``sampling=10`` or ``sampling={"http": 10, "app.shop": 5, "": 400}``."""
    if not isinstance(value, Mapping):
        return Rates(_int_arg(value, 0, hi))
    generic, apps = None, {}
    for key, n in value.items():
        if not isinstance(key, str):
            raise ValueError(f"application names are strings, got {key!r}")
        if key.strip().lower() in ("", "default"):
            generic = _int_arg(n, 0, hi)
        else:
            apps[_app_name(key)] = _int_arg(n, 0, hi)
    return Rates(generic, apps)


def _bool_arg(value: object) -> bool:
    return value if isinstance(value, bool) else _flag(str(value))


def _agent_ip_arg(value: object) -> str:
    return _ip(_name_arg(value), scoped=False)


_KWARG_PARSERS: dict[str, Callable[[Any], Any]] = {
    "disable": _bool_arg,
    "collectors": _collectors_arg,
    "agent_ip": _agent_ip_arg,
    "sampling": partial(_rates_arg, hi=U32),
    "polling": partial(_rates_arg, hi=POLLING_MAX),
    "service_name": _name_arg,
    **{k: partial(_int_arg, lo=lo, hi=hi) for k, (lo, hi) in _INT_BOUNDS.items()},
}
_ENV_PARSERS: dict[str, Callable[[str], Any]] = {
    "disable": _flag,
    "collectors": _collectors_arg,
    "agent_ip": partial(_ip, scoped=False),
    "service_name": str,
    **{k: partial(_uint, lo=lo, hi=hi) for k, (lo, hi) in _INT_BOUNDS.items()},
}


def _kwargs_layer(kwargs: Mapping[str, Any]) -> _Layer:
    unknown = sorted(set(kwargs) - KWARGS)
    if unknown:
        raise ValueError(
            f"configure(): unknown argument(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(KWARGS))}"
        )
    layer = _Layer()
    for name, value in kwargs.items():
        if value is None or name == "config_path":  # None = not given; path: the caller's
            continue
        try:
            setattr(layer, name, _KWARG_PARSERS[name](value))
        except ValueError as exc:
            raise ValueError(f"configure({name}=...): {exc}") from None
    return layer


def _env_layer(env: Mapping[str, str], warnings: list[str]) -> _Layer:
    layer = _Layer()

    def parse(var: str, parser: Callable[[str], Any]) -> Any:
        raw = env.get(var)
        if not isinstance(raw, str) or not raw.strip():  # empty = unset, as shells mean it
            return None
        try:
            return parser(raw.strip())
        except ValueError as exc:
            warnings.append(f"{var}={raw.strip()!r} ignored: {exc}")
            return None

    for var, name in _ENV_NAMES.items():
        setattr(layer, name, parse(var, _ENV_PARSERS[name]))
    for kind, hi in (("SAMPLING", U32), ("POLLING", POLLING_MAX)):
        number = partial(_uint, lo=0, hi=hi)
        prefix = f"SFLOW_APP_{kind}_"
        apps = {
            var[len(prefix) :].upper(): parse(var, number)
            for var in sorted(env)
            if var.startswith(prefix) and len(var) > len(prefix)
        }
        rates = Rates(
            parse(f"SFLOW_APP_{kind}", number),
            {k: v for k, v in apps.items() if v is not None},
            env_style=True,
        )
        setattr(layer, kind.lower(), rates)
    return layer


def _clamp(value: int | None, lo: int, hi: int) -> int | None:
    return None if value is None else min(max(value, lo), hi)


def _file_layer(auto: AutoFile) -> _Layer:
    # hsflowd validates its own ranges; clamp rather than discard a whole file for one key.
    return _Layer(
        collectors=auto.collectors or None,
        agent_ip=auto.agent_ip,
        sampling=Rates(auto.sampling, auto.app_sampling),
        polling=Rates(
            _clamp(auto.polling, 0, POLLING_MAX),
            {k: min(v, POLLING_MAX) for k, v in auto.app_polling.items()},
        ),
        datagram=_clamp(auto.datagram, DATAGRAM_MIN, DATAGRAM_MAX),
        parent_ds_index=auto.ds_index,
    )


_DEFAULTS = _Layer(
    disable=False,
    sampling=Rates(DEFAULT_SAMPLING),
    polling=Rates(DEFAULT_POLLING),
    datagram=DEFAULT_DATAGRAM,
    queue_capacity=DEFAULT_QUEUE,
)


@dataclass(frozen=True)
class Settings:
    """The fully resolved configuration the agent runs on."""

    enabled: bool
    reason: str  # one human-readable line: why on or off, and from where
    source: SourceKind
    config_path: str
    agent_ip: str | None = None  # None: the caller uses route_address(collectors[0][0])
    collectors: Collectors = ()
    datagram: int = DEFAULT_DATAGRAM
    parent_ds_index: int | None = None  # hsflowd's ds_index, for host_parent
    rev: int | None = None
    ds_index: int | None = None
    sub_agent_id: int | None = None
    service_name: str | None = None
    queue_capacity: int = DEFAULT_QUEUE
    authuser: bool = True  # SFLOW_APP_AUTHUSER: report the client's user name
    warnings: tuple[str, ...] = ()  # bad environment values, for the caller to log once
    sampling_layers: tuple[Rates, ...] = field(default=(), repr=False)
    polling_layers: tuple[Rates, ...] = field(default=(), repr=False)

    @property
    def state(self) -> Literal["on", "off"]:
        return "on" if self.enabled else "off"

    def sampling_for(self, app: str) -> int:
        """1-in-N for ``http``, ``memcache`` or ``app.<name>``; 0 = no flow samples."""
        return _first_match(self.sampling_layers, app) if self.enabled else 0

    def polling_for(self, app: str) -> int:
        """Counter interval in seconds; 0 = no counter samples."""
        return _first_match(self.polling_layers, app) if self.enabled else 0


def _first_match(layers: tuple[Rates, ...], app: str) -> int:
    # The first layer with any key for the app decides, with its deepest match.
    return next((v for v in (r.match(app) for r in layers) if v is not None), 0)


def config_path(kwargs: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """configure(config_path=...) > SFLOW_APP_CONFIG > /etc/hsflowd.auto."""
    value = kwargs.get("config_path")
    if value:
        return str(os.fspath(value))
    return env.get("SFLOW_APP_CONFIG", "").strip() or DEFAULT_CONFIG_PATH


def resolve(
    kwargs: Mapping[str, Any],
    env: Mapping[str, str],
    auto: AutoFile | None,
    config_path: str | os.PathLike[str],
) -> Settings:
    """Settings from configure() kwargs, the environment and a read of the file.

    Raises ValueError for bad kwargs only; bad environment values become ``warnings``.
    ``auto`` None means the file was not found; a torn or off AutoFile counts as no file.
    """
    path = os.fspath(config_path)
    warnings: list[str] = []
    layers = [_kwargs_layer(kwargs), _env_layer(env, warnings)]
    usable = auto if auto is not None and auto.usable else None
    if usable is not None:
        layers.append(_file_layer(usable))
    layers.append(_DEFAULTS)

    def pick(name: str) -> Any:
        return next((v for v in (getattr(layer, name) for layer in layers) if v is not None), None)

    rev = usable.rev_start if usable is not None else None
    collectors: Collectors = pick("collectors") or ()
    explicit = layers[0].collectors or layers[1].collectors
    source: SourceKind
    if pick("disable"):
        who = (
            "configure(disable=True)"
            if layers[0].disable
            else f"SFLOW_APP_DISABLE={env.get('SFLOW_APP_DISABLE', '').strip()}"
        )
        enabled, source, reason = False, "off", f"off: {who}"
    elif not collectors:
        if usable is not None:
            detail = f"rev {rev} lists no collectors"
        else:
            detail = "not found" if auto is None else auto.reason
        enabled, source, reason = False, "off", f"off: {path}: {detail}"
    else:
        count = f"{len(collectors)} collector{'s' if len(collectors) > 1 else ''}"
        if explicit:
            origin = "configure(collectors=...)" if layers[0].collectors else "SFLOW_APP_COLLECTORS"
            rest = f" (other settings from {path} rev {rev})" if usable is not None else ""
            enabled, source, reason = True, "explicit", f"sending to {count} from {origin}{rest}"
        else:
            enabled, source, reason = True, "file", f"sending to {count} from {path} rev {rev}"
    return Settings(
        enabled=enabled,
        reason=reason,
        source=source,
        config_path=path,
        agent_ip=pick("agent_ip"),
        collectors=collectors if enabled else (),
        datagram=pick("datagram"),
        parent_ds_index=pick("parent_ds_index"),
        rev=rev,
        ds_index=pick("ds_index"),
        sub_agent_id=pick("sub_agent_id"),
        service_name=pick("service_name"),
        queue_capacity=pick("queue_capacity"),
        authuser=_authuser(env, warnings),
        warnings=tuple(warnings),
        sampling_layers=tuple(layer.sampling for layer in layers),
        polling_layers=tuple(layer.polling for layer in layers),
    )


def _authuser(env: Mapping[str, str], warnings: list[str]) -> bool:
    """SFLOW_APP_AUTHUSER (default 1): 0 keeps user names (personal data) out of the
    samples. Kept apart so it moves into the settings registry in one piece."""
    raw = env.get("SFLOW_APP_AUTHUSER", "").strip()
    if not raw:
        return True
    try:
        return _flag(raw)
    except ValueError as exc:
        warnings.append(f"SFLOW_APP_AUTHUSER ignored: {exc}")
        return True


def route_address(collector_ip: str, port: int = DEFAULT_PORT) -> str:
    """The local address the kernel would use towards ``collector_ip``.

    connect() on a UDP socket only picks a route and a source address; nothing is sent.
    """
    v6 = ":" in collector_ip
    try:
        with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((collector_ip, port))
            local = str(s.getsockname()[0]).split("%", 1)[0]
    except OSError:
        local = ""
    if not local or ipaddress.ip_address(local).is_unspecified:
        return "::1" if v6 else "127.0.0.1"
    return local

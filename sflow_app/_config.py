"""Settings resolution: configure() kwargs, environment and a parsed hsflowd.auto.

Pure: no file, environment or clock access except through arguments (``route_address``
is the one exception: it asks the kernel for a route, without sending a packet).
Precedence is per key: ``configure()`` keyword arguments > ``SFLOW_APP_*`` environment
variables > /etc/hsflowd.auto > defaults. docs/config.md is the operator's view of it.
The file itself is parsed by _auto.py. ``VARS`` is the registry of settings: every
``SFLOW_APP_*`` variable with its ``configure()`` keyword and the key ``sflow-app config``
shows; a setting added there is resolved, configurable and known to the typo warning.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from ._auto import (
    DEFAULT_PORT,
    Collectors,
    Rates,
    parse_agent_ip,
    parse_uint,
    shown,
)

# Re-exported (the "as" lines): _watch and the tests import the parser's names from here.
from ._auto import MAX_WARNINGS as MAX_WARNINGS
from ._auto import U32 as U32
from ._auto import AutoFile as AutoFile
from ._auto import parse_auto as parse_auto
from ._config_args import (
    agent_ip_arg,
    bool_arg,
    closest_application,
    collector_spec,
    collectors_arg,
    env_integrations,
    flag,
    int_arg,
    integration_names,
    integrations_arg,
    name_arg,
    path_arg,
    path_env,
    query_mode,
    rates_arg,
)
from ._identity import NAME_BYTES
from ._xdr import cut_utf8, to_bytes

if TYPE_CHECKING:
    from ._http import QueryMode

DEFAULT_CONFIG_PATH = "/etc/hsflowd.auto"
DEFAULT_SAMPLING = 400  # hsflowd's own default 1-in-N
DEFAULT_POLLING = 30  # seconds
DEFAULT_DATAGRAM = 1400
DATAGRAM_MIN, DATAGRAM_MAX = 200, 1500  # SFL_MIN/MAX_DATAGRAM_SIZE
DEFAULT_QUEUE = 4096
QUEUE_MIN, QUEUE_MAX = 64, 1 << 20
POLLING_MAX = 3600
DS_INDEX_MAX = 2**24 - 1  # compact source_id keeps 24 bits for the index
DEFAULT_MAX_SAMPLES = 2000  # flow samples per second, per process and data source
MAX_COLLECTORS = 10  # as hsflowd's other sub-agents

SourceKind = Literal["file", "explicit", "off"]

# -- the registry of settings -------------------------------------------------------


@dataclass(frozen=True)
class Var:
    """One setting: its ``SFLOW_APP_*`` variable, its ``configure()`` keyword (also the
    Settings field) and the name ``sflow-app config`` shows it under -- hsflowd.auto's key
    where the file can set it (but ``parent_ds_index``). This one table drives resolution,
    ``configure()``'s keywords, ``sflow-app config`` and the warning for a misspelt
    variable."""

    env: str
    field: str
    key: str
    env_parser: Callable[[str], Any]
    kwarg_parser: Callable[[Any], Any]
    per_app: bool = False  # SFLOW_APP_<NAME>_<APP> too (sampling, polling)
    in_file: bool = False  # hsflowd.auto can set it


def _int_var(env: str, field: str, key: str, lo: int, hi: int, in_file: bool = False) -> Var:
    return Var(
        env,
        field,
        key,
        partial(parse_uint, lo=lo, hi=hi),
        partial(int_arg, lo=lo, hi=hi),
        False,
        in_file,
    )


VARS: tuple[Var, ...] = (
    Var("SFLOW_APP_CONFIG", "config_path", "config", path_env, path_arg),
    Var("SFLOW_APP_DISABLE", "disable", "disable", flag, bool_arg),
    Var(
        "SFLOW_APP_COLLECTORS",
        "collectors",
        "collector",
        collectors_arg,
        collectors_arg,
        in_file=True,
    ),
    Var(
        "SFLOW_APP_AGENT_IP",
        "agent_ip",
        "agentIP",
        parse_agent_ip,
        agent_ip_arg,
        in_file=True,
    ),
    Var(
        "SFLOW_APP_SAMPLING",
        "sampling",
        "sampling",
        partial(parse_uint, lo=0, hi=U32),
        partial(rates_arg, hi=U32),
        per_app=True,
        in_file=True,
    ),
    Var(
        "SFLOW_APP_POLLING",
        "polling",
        "polling",
        partial(parse_uint, lo=0, hi=POLLING_MAX),
        partial(rates_arg, hi=POLLING_MAX),
        per_app=True,
        in_file=True,
    ),
    _int_var("SFLOW_APP_DATAGRAM", "datagram", "datagram", DATAGRAM_MIN, DATAGRAM_MAX, True),
    # hsflowd's own index (host_parent): the file's ds_index, shown by sflow-app config
    # under the variable's name (ds_index there is the service's own, as in the variables).
    _int_var("SFLOW_APP_PARENT_DS_INDEX", "parent_ds_index", "parent_ds_index", 0, U32, True),
    _int_var("SFLOW_APP_DS_INDEX", "ds_index", "ds_index", 1, DS_INDEX_MAX),
    _int_var("SFLOW_APP_SUB_AGENT_ID", "sub_agent_id", "sub_agent_id", 0, U32),
    Var("SFLOW_APP_NAME", "service_name", "service_name", str, name_arg),
    _int_var("SFLOW_APP_QUEUE", "queue_capacity", "queue_capacity", QUEUE_MIN, QUEUE_MAX),
    Var("SFLOW_APP_STATE_DIR", "state_dir", "state_dir", path_env, path_arg),
    Var("SFLOW_APP_SHARED", "shared", "shared", flag, bool_arg),
    Var("SFLOW_APP_QUERY", "query", "query", query_mode, query_mode),
    # User names are personal data: 0 keeps them out of every sampled request.
    Var("SFLOW_APP_AUTHUSER", "authuser", "authuser", flag, bool_arg),
    Var(
        "SFLOW_APP_DISABLED_INTEGRATIONS",
        "disabled_integrations",
        "disabled_integrations",
        lambda text: integration_names(text)[0],  # _env_layer warns of unknown names
        integrations_arg,
    ),
    # The overload guard: a cap on flow samples per second (0 = no cap), see _sampler.
    _int_var("SFLOW_APP_MAX_SAMPLES", "max_samples", "max_samples", 0, U32),
)
BY_FIELD = {v.field: v for v in VARS}
BY_ENV = {v.env: v for v in VARS}
KWARGS = frozenset(BY_FIELD)  # the names configure() accepts


PER_APP = tuple(f"{v.env}_" for v in VARS if v.per_app)


def per_app_variable(name: str) -> tuple[str, str] | None:
    """(prefix, application) of a ``SFLOW_APP_SAMPLING_<APP>`` (or POLLING) variable, the
    application dotted (``APP_SHOP`` -> ``app.shop``); None for any other variable."""
    for prefix in PER_APP:
        if name.startswith(prefix) and len(name) > len(prefix):
            return prefix, name[len(prefix) :].lower().replace("_", ".")
    return None


def _unknown_application(prefix: str, name: str, app: str) -> str | None:
    close = closest_application(app)
    if close is None:
        return None
    hint = f"; did you mean {prefix}{close.upper().replace('.', '_')}?" if close else ""
    return (
        f"unknown variable {name} ignored: no application {app!r} here "
        f"(HTTP, MEMCACHE or APP_<NAME>){hint}"
    )


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One warning per ``SFLOW_APP_*`` variable that is no setting, naming the closest."""
    found = []
    for name in sorted(env):
        if not name.startswith("SFLOW_APP_") or name in BY_ENV:
            continue
        per_app = per_app_variable(name)
        if per_app is not None and not name.endswith("_"):
            unknown = _unknown_application(per_app[0], name, per_app[1])
            if unknown is not None:
                found.append(unknown)
            continue
        # Compared without the shared prefix, which would make every name look close.
        tails = {v.env[len("SFLOW_APP_") :]: v.env for v in VARS}
        close = difflib.get_close_matches(name[len("SFLOW_APP_") :], tails, n=1, cutoff=0.6)
        hint = (
            f"did you mean {tails[close[0]]}?"
            if close
            else "see docs/config.md for the known names"
        )
        found.append(f"unknown variable {name} ignored; {hint}")
    return found


# -- resolution ---------------------------------------------------------------------

Source = Literal["configure", "environment", "file", "default", "derived"]
LAYER_SOURCES: tuple[Source, ...] = ("configure", "environment", "file", "default")


@dataclass
class _Layer:
    """One precedence level; None = this level does not set the key."""

    source: Source
    config_path: str | None = None
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
    state_dir: str | None = None
    shared: bool | None = None
    disabled_integrations: tuple[str, ...] | None = None
    query: str | None = None
    authuser: bool | None = None
    max_samples: int | None = None


def _kwargs_layer(kwargs: Mapping[str, Any]) -> _Layer:
    unknown = sorted(set(kwargs) - KWARGS)
    if unknown:
        raise ValueError(
            f"configure(): unknown argument(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(KWARGS))}"
        )
    layer = _Layer("configure")
    for name, value in kwargs.items():
        if value is None:  # None = not given
            continue
        try:
            setattr(layer, name, BY_FIELD[name].kwarg_parser(value))
        except ValueError as exc:
            raise ValueError(f"configure({name}=...): {exc}") from None
    return layer


def _env_collectors(raw: str, warnings: list[str]) -> Collectors | None:
    """SFLOW_APP_COLLECTORS: a bad entry drops only itself, with a warning."""
    found: list[tuple[str, int]] = []
    for item in raw.split(","):
        if not item.strip():
            continue
        try:
            found.append(collector_spec(item))
        except ValueError as exc:
            warnings.append(f"SFLOW_APP_COLLECTORS entry {shown(item.strip())} ignored: {exc}")
    return tuple(dict.fromkeys(found)) or None


def _env_layer(env: Mapping[str, str], warnings: list[str]) -> _Layer:
    layer = _Layer("environment")

    def parse(var: str, parser: Callable[[str], Any]) -> Any:
        raw = env.get(var)
        if not isinstance(raw, str) or not raw.strip():  # empty = unset, as shells mean it
            return None
        try:
            return parser(raw.strip())
        except ValueError as exc:
            warnings.append(f"{var}={shown(raw.strip())} ignored: {exc}")
            return None

    for var in VARS:
        if var.per_app:
            apps: dict[str, int] = {}
            for name in sorted(env):
                found = per_app_variable(name)
                if found is None or found[0] != f"{var.env}_":
                    continue
                if closest_application(found[1]) is not None:
                    continue  # no setting: unknown_variables warns of it
                rate = parse(name, var.env_parser)
                if rate is not None:
                    apps[name[len(found[0]) :].upper()] = rate
            value: Any = Rates(parse(var.env, var.env_parser), apps, env_style=True)
        elif var.field == "collectors":
            raw = env.get(var.env)
            value = _env_collectors(raw, warnings) if isinstance(raw, str) else None
        elif var.field == "disabled_integrations":
            raw = env.get(var.env)
            value = env_integrations(raw, warnings) if isinstance(raw, str) else None
        else:
            value = parse(var.env, var.env_parser)
        setattr(layer, var.field, value)
    warnings.extend(unknown_variables(env))
    return layer


def _clamp(value: int | None, lo: int, hi: int) -> int | None:
    return None if value is None else min(max(value, lo), hi)


def _file_layer(auto: AutoFile) -> _Layer:
    # hsflowd validates its own ranges; clamp rather than discard a whole file for one key.
    return _Layer(
        "file",
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
    "default",
    config_path=DEFAULT_CONFIG_PATH,
    disable=False,
    sampling=Rates(DEFAULT_SAMPLING),
    polling=Rates(DEFAULT_POLLING),
    datagram=DEFAULT_DATAGRAM,
    queue_capacity=DEFAULT_QUEUE,
    shared=True,
    disabled_integrations=(),
    query="sensitive",
    authuser=True,
    max_samples=DEFAULT_MAX_SAMPLES,
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
    state_dir: str | None = None  # None: _shared's default directory
    shared: bool = True  # False: each process reports alone (SFLOW_APP_SHARED=0)
    disabled_integrations: tuple[str, ...] = ()  # sflow-app run's integrations to skip
    query: QueryMode = "sensitive"  # what sampled URIs keep of the query (middleware default)
    authuser: bool = True  # SFLOW_APP_AUTHUSER: report the client's user name
    max_samples: int = DEFAULT_MAX_SAMPLES  # flow samples/s per data source; 0 = no cap
    warnings: tuple[str, ...] = ()  # bad environment values, for the caller to log once
    # Where each field's value came from (a Var.field -> "configure", "environment",
    # "file" or "default"; a field no layer sets is absent).
    sources: Mapping[str, Source] = field(default_factory=dict, repr=False)
    sampling_layers: tuple[Rates, ...] = field(default=(), repr=False)
    polling_layers: tuple[Rates, ...] = field(default=(), repr=False)
    layer_sources: tuple[Source, ...] = field(default=(), repr=False)

    @property
    def state(self) -> Literal["on", "off"]:
        return "on" if self.enabled else "off"

    def sampling_for(self, app: str) -> int:
        """1-in-N for ``http``, ``memcache`` or ``app.<name>``; 0 = no flow samples."""
        return _first_match(self.sampling_layers, app)[0] if self.enabled else 0

    def polling_for(self, app: str) -> int:
        """Counter interval in seconds; 0 = no counter samples."""
        return _first_match(self.polling_layers, app)[0] if self.enabled else 0

    def sampling_setting(self, app: str) -> tuple[int, Source]:
        """The configured 1-in-N for ``app`` (on or off) and where it came from."""
        value, at = _first_match(self.sampling_layers, app)
        return value, self.layer_sources[at]

    def polling_setting(self, app: str) -> tuple[int, Source]:
        value, at = _first_match(self.polling_layers, app)
        return value, self.layer_sources[at]

    def sub_agent_for(self, http_index: int | None) -> int | None:
        """sub_agent_id: SFLOW_APP_SUB_AGENT_ID, else the index of the HTTP data source
        (SFLOW_APP_DS_INDEX or the listening port); None while neither is known. A
        service with no HTTP data source gets a derived one (Agent.identity)."""
        return self.sub_agent_id if self.sub_agent_id is not None else http_index


def _first_match(layers: tuple[Rates, ...], app: str) -> tuple[int, int]:
    # The first layer with any key for the app decides, with its deepest match.
    for i, rates in enumerate(layers):
        value = rates.match(app)
        if value is not None:
            return value, i
    return 0, len(layers) - 1


def config_path(kwargs: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """configure(config_path=...) > SFLOW_APP_CONFIG > /etc/hsflowd.auto (stripped, as
    every other setting: the one place the path is worked out)."""
    return str(_pick([_kwargs_layer(kwargs), _env_layer(env, [])], "config_path")[0])


def _pick(layers: list[_Layer], name: str) -> tuple[Any, Source]:
    for layer in [*layers, _DEFAULTS]:
        value = getattr(layer, name)
        if value is not None:
            return value, layer.source
    return None, "default"


def resolve(
    kwargs: Mapping[str, Any],
    env: Mapping[str, str],
    auto: AutoFile | None,
    config_path: str | os.PathLike[str],
) -> Settings:
    """Settings from configure() kwargs, the environment and a read of the file.

    Raises ValueError for bad kwargs only; bad environment values become ``warnings``.
    ``auto`` None means the file was not found; a torn or off AutoFile counts as no file.
    ``config_path`` is the file ``auto`` was read from (see ``config_path()``).
    """
    path = os.fspath(config_path)
    warnings: list[str] = []
    layers = [_kwargs_layer(kwargs), _env_layer(env, warnings)]
    usable = auto if auto is not None and auto.usable else None
    if usable is not None:
        layers.append(_file_layer(usable))
    layers.append(_DEFAULTS)
    sources: dict[str, Source] = {}

    def pick(name: str) -> Any:
        value, sources[name] = _pick(layers, name)
        if value is None:
            del sources[name]
        return value

    rev = usable.rev_start if usable is not None else None
    service_name = pick("service_name")
    warnings.extend(_long_name(service_name, sources.get("service_name")))
    collectors: Collectors = pick("collectors") or ()
    if len(collectors) > MAX_COLLECTORS:  # cut here: status() and config show the ones used
        warnings.append(
            f"{len(collectors)} collectors configured: only the first {MAX_COLLECTORS} are sent to"
        )
        collectors = collectors[:MAX_COLLECTORS]
    explicit = layers[0].collectors or layers[1].collectors
    rejected = [w for w in warnings if w.startswith("SFLOW_APP_COLLECTORS")]
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
        blame = f"{rejected[-1]}; " if rejected else ""
        enabled, source, reason = False, "off", f"off: {blame}{path}: {detail}"
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
        service_name=service_name,
        queue_capacity=pick("queue_capacity"),
        state_dir=pick("state_dir"),
        shared=pick("shared"),
        disabled_integrations=pick("disabled_integrations"),
        query=pick("query"),
        authuser=pick("authuser"),
        max_samples=pick("max_samples"),
        warnings=tuple(warnings),
        sources={**sources, "config_path": _pick(layers, "config_path")[1]},
        sampling_layers=tuple(layer.sampling for layer in layers),
        polling_layers=tuple(layer.polling for layer in layers),
        layer_sources=tuple(layer.source for layer in layers),
    )


def _long_name(name: str | None, source: Source | None) -> list[str]:
    """One warning when the configured service name is longer than collectors see it."""
    if name is None or len(to_bytes(name)) <= NAME_BYTES:
        return []
    sent = cut_utf8(name, NAME_BYTES).decode(errors="replace")  # bytes of a raw env
    who = "configure(service_name=...)" if source == "configure" else "SFLOW_APP_NAME"
    return [
        f"{who} is cut to {len(sent)} characters on the wire (sFlow's application field "
        f"holds {NAME_BYTES} bytes): collectors receive {sent!r}"
    ]


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

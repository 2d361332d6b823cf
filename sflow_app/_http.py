"""Framework-neutral HTTP transaction building, shared by the WSGI and ASGI surfaces.

The surfaces differ only in how they read their protocol; everything sFlow-specific about
an HTTP request (method enum, counter slots, protocol number, URI redaction, the socket
record, the route's app_operation) is here.
"""

from __future__ import annotations

import base64
import contextvars
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol
from urllib.parse import unquote_to_bytes

from ._encode import encode_http_request, encode_record, encode_socket
from ._memo import remember
from .records import AppOperation, AppStatus, HttpRequest, socket_record

log = logging.getLogger("sflow_app")

# method -> (http_method enum, http_counters slot)
METHODS: dict[str, tuple[int, int]] = {
    "OPTIONS": (1, 0),
    "GET": (2, 1),
    "HEAD": (3, 2),
    "POST": (4, 3),
    "PUT": (5, 4),
    "DELETE": (6, 5),
    "TRACE": (7, 6),
    "CONNECT": (8, 7),
}
OTHER_METHOD = (0, 8)
CLIENT_CLOSED = 499  # nginx's status for a response the client never got
MAX_US = 0xFFFFFFFF  # the duration field: u32 microseconds
# RFC 3986 pchar plus '/', for rebuilding a URI from a decoded path.
PATH_SAFE = "/:@!$&'()*+,;=-._~"
# Protocol versions as WSGI's SERVER_PROTOCOL ("HTTP/1.1") and ASGI's http_version ("1.1")
# give them; anything else goes through protocol_number().
PROTOCOLS = {"1.0": 1000, "1.1": 1001, "2": 2000, "2.0": 2000, "3": 3000, "3.0": 3000}
PROTOCOLS.update({f"HTTP/{version}": n for version, n in list(PROTOCOLS.items())})
# http_counters slot per status // 100 (0..6); anything else is "other" (14).
STATUS_SLOTS = (14, 9, 10, 11, 12, 13, 14)
STATUS_OTHER = 14

# Query parameters whose values are replaced by default: credentials end up in URLs.
SENSITIVE = frozenset(
    {
        "token",
        "password",
        "passwd",
        "pwd",
        "pass",
        "secret",
        "key",
        "apikey",
        "signature",
        "sig",
        "auth",
        "authorization",
        "session",
        "sessionid",
        "sid",
        "jwt",
        "credential",
        "credentials",
        "code",
        "otp",
        "private",
        "sessid",
        "phpsessid",
        "jsessionid",
    }
)
PLACEHOLDER = b"REDACTED"
QueryMode = Literal["sensitive", "keep", "redact", "drop"]
QUERY_MODES: tuple[QueryMode, ...] = ("sensitive", "keep", "redact", "drop")


class Request(Protocol):
    """A sampled HTTP request, as decorated calls inside it see it (app_parent_context).

    The request's own object (WSGI: its transaction), so a sampled request sets one
    context variable and builds nothing more for it: most requests never ask."""

    @property
    def service(self) -> str: ...

    @property
    def method(self) -> str: ...

    def path(self) -> str:
        """The route template once a router has matched, else the path."""
        ...


class ParentContexts:
    """Whether this process has a ``@transaction`` function: only then does a sampled
    request set ``current_request`` (a set and a reset, ~0.4 us a sampled request, for
    a context nothing else reads)."""

    wanted = False


# The sampled HTTP request this task runs in (set only on sampled requests, and only
# once a function is decorated: see ParentContexts).
current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "sflow_app_request", default=None
)


def parent_context() -> tuple[str, str, str] | None:
    """(service, method, route-or-path) of the sampled request this task runs in."""
    request = current_request.get()
    # ended: a task the request started, running on after it (asyncio copies contexts)
    if request is None or getattr(request, "ended", False):
        return None
    try:
        path = request.path()
    except Exception:
        path = ""
    return request.service, request.method, path


def middleware_options(
    exclude: Iterable[str] | Callable[[str], bool] | None,
    query: str | None,
) -> Callable[[str], bool] | None:
    """Check the WSGI/ASGI middlewares' shared options; the ``exclude`` predicate.
    ``query=None``: the ``query`` setting (SFLOW_APP_QUERY), read when a sample is taken."""
    if query is not None and query not in QUERY_MODES:
        raise ValueError(f"query must be one of {QUERY_MODES}, not {query!r}")
    if exclude is None or callable(exclude):
        return exclude
    if isinstance(exclude, str):
        raise TypeError("exclude takes a list of path prefixes, not one string")
    prefixes = tuple(exclude)
    if not prefixes:
        return None
    return lambda path: path.startswith(prefixes)


def status_slot(status: int) -> int:
    return STATUS_SLOTS[status // 100] if 0 <= status < 700 else STATUS_OTHER


def protocol_number(version: str) -> int:
    """'HTTP/1.1' or '1.1' -> 1001, '2' / 'HTTP/2.0' -> 2000 (major*1000 + minor)."""
    if version[:5].upper() == "HTTP/":
        version = version[5:]
    major, _, minor = version.partition(".")
    try:
        return int(major) * 1000 + (int(minor) if minor else 0)
    except ValueError:
        return 0


_LAST_BRACKET = re.compile(rb"\[([^\[\]]*)\]$")
_SEPARATOR = re.compile(rb"([&;])")


def _words_sensitive(name: bytes) -> bool:
    lowered = name.lower().replace(b"-", b"_").replace(b".", b"_").replace(b" ", b"_")
    try:
        text = lowered.decode("ascii")
    except UnicodeDecodeError:
        return False
    if text in SENSITIVE:
        return True
    return any(part in SENSITIVE for part in text.split("_") if part)


# Parameter names seen -> sensitive or not: an app's query strings use a few names over
# and over, and deciding one costs several microseconds.
_SENSITIVE_SEEN: dict[bytes, bool] = {}
NAME_MAX = 64  # longer names are decided each time


def _sensitive(name: bytes) -> bool:
    """Whether a parameter name looks like a credential (see ``_decide_sensitive``)."""
    seen = _SENSITIVE_SEEN.get(name)
    if seen is not None:
        return seen
    return remember(_SENSITIVE_SEEN, name, _decide_sensitive(name), len(name), NAME_MAX)


def _decide_sensitive(name: bytes) -> bool:
    """Whether a parameter name looks like a credential: the name as sent and decoded
    (``+`` and %-escapes: ``pass%77ord``), and its last bracketed or dotted component
    (``user[password]``, ``user.password``), case-insensitively."""
    decoded = unquote_to_bytes(name.replace(b"+", b" ")).strip()
    bracket = _LAST_BRACKET.search(decoded)
    last = bracket.group(1) if bracket else decoded.rsplit(b".", 1)[-1]
    return any(_words_sensitive(n) for n in (name, decoded, last))


def redact_query(query: bytes, mode: str = "sensitive") -> bytes:
    """Apply the ``query=`` option to a raw query string (no leading '?').

    Pairs are split on ``&`` and ``;`` (both are used as separators); the separators and
    every pair not redacted are kept as they came: ``a=1;password=REDACTED``.
    """
    if not query or mode == "keep":
        return query
    if mode == "drop":
        return b""
    parts = _SEPARATOR.split(query)  # pairs at even positions, separators between
    for i in range(0, len(parts), 2):
        name, eq, _value = parts[i].partition(b"=")
        if eq and (mode == "redact" or _sensitive(name)):
            parts[i] = name + b"=" + PLACEHOLDER
    return b"".join(parts)


def build_uri(path: bytes, query: bytes, mode: str) -> bytes:
    query = redact_query(query, mode)
    return path + b"?" + query if query else path


def app_status(status: int) -> int:
    """The app_operation outcome of an HTTP status; the HTTP source's app_operations
    counters map every request the same way (``_source.http_app_operations``)."""
    if status < 100:  # no status class: http_counters' "other" too
        return AppStatus.OTHER
    if status < 400:
        return AppStatus.SUCCESS
    special = {
        400: AppStatus.BAD_REQUEST,
        401: AppStatus.UNAUTHORIZED,
        403: AppStatus.FORBIDDEN,
        404: AppStatus.NOT_FOUND,
        408: AppStatus.TIMEOUT,
        413: AppStatus.TOO_LARGE,
        501: AppStatus.NOT_IMPLEMENTED,
        503: AppStatus.UNAVAILABLE,
        504: AppStatus.TIMEOUT,
    }
    if status in special:
        return special[status]
    if status < 500:
        return AppStatus.BAD_REQUEST
    return AppStatus.INTERNAL_ERROR if status < 600 else AppStatus.OTHER


def basic_user(authorization: bytes | str) -> bytes:
    """The user name of a ``Basic`` Authorization header, never the password; b"" for
    anything else (other schemes, bad base64)."""
    if not authorization:
        return b""
    if isinstance(authorization, str):
        authorization = authorization.encode("latin-1", "replace")
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return b""
    try:
        decoded = base64.b64decode(token.strip()[:1024], validate=True)
    except ValueError:
        return b""
    user, colon, _password = decoded.partition(b":")
    return user if colon else b""


def scope_user(scope: Mapping[str, Any]) -> str:
    """The name of ``scope["user"]`` as an auth middleware (Starlette's) set it; "" for
    none or an unauthenticated user."""
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", True):
        return ""
    for attr in ("display_name", "username"):
        try:
            name = getattr(user, attr, None)
        except Exception:  # a property of someone else's class
            continue
        if isinstance(name, str) and name:
            return name
    return user if isinstance(user, str) else ""


def submit_http(source: Any, n: int, rate: int, **fields: Any) -> None:
    """Build and queue one sampled HTTP transaction (``http_records``; ``rate``: what
    ``source.sample(n)`` returned). Never raises into the request."""
    try:
        if fields.get("route") and not fields.get("application"):
            fields["application"] = source.agent.service_name
        source.submit(n, http_records(**fields), rate)
    except Exception:
        log.debug("sflow_app: could not record an HTTP sample", exc_info=True)
        source.drop()


def http_records(
    method: str,
    protocol: int,
    uri: bytes | str,
    host: bytes | str = b"",
    referer: bytes | str = b"",
    useragent: bytes | str = b"",
    xff: bytes | str = b"",
    authuser: bytes | str = b"",
    mime_type: bytes | str = b"",
    req_bytes: int = 0,
    resp_bytes: int = 0,
    duration_us: int = 0,
    status: int = 0,
    local: tuple[str, int] | None = None,
    remote: tuple[str, int] | None = None,
    route: str | None = None,
    application: str | None = None,
) -> tuple[Any, ...]:
    """The records of one sampled HTTP transaction: http_request, extended_socket when
    both ends are known, app_operation when a route is (``application``: the service)."""
    request = HttpRequest(
        METHODS.get(method, OTHER_METHOD)[0],
        protocol,
        uri,
        host,
        referer,
        useragent,
        xff,
        authuser,
        mime_type,
        req_bytes,
        resp_bytes,
        duration_us,
        status,
    )
    if not route:
        if local and remote:
            return (request, socket_record(6, local[0], remote[0], local[1], remote[1]))
        return (request,)
    records: list[Any] = [request]
    if local and remote:
        records.append(socket_record(6, local[0], remote[0], local[1], remote[1]))
    records.append(
        route_operation(route, application, method, status, req_bytes, resp_bytes, duration_us)
    )
    return tuple(records)


def route_operation(
    route: str,
    application: str | None,
    method: str,
    status: int,
    req_bytes: int,
    resp_bytes: int,
    duration_us: int,
) -> AppOperation:
    return AppOperation(
        application=application or "",
        operation=route,
        attributes=f"method={method}&route={route}",
        status_descr=str(status),
        req_bytes=req_bytes,
        resp_bytes=resp_bytes,
        uS=duration_us,
        status=app_status(status),
    )


def encode_http(
    method: str,
    protocol: int,
    uri: bytes | str,
    host: bytes | str = b"",
    referer: bytes | str = b"",
    useragent: bytes | str = b"",
    xff: bytes | str = b"",
    authuser: bytes | str = b"",
    mime_type: bytes | str = b"",
    req_bytes: int = 0,
    resp_bytes: int = 0,
    duration_us: int = 0,
    status: int = 0,
    local: tuple[str, int] | None = None,
    remote: tuple[str, int] | None = None,
    route: str | None = None,
    application: str | None = None,
) -> tuple[bytes, int]:
    """``http_records(...)`` encoded, and how many records: the exporter's path, which
    builds no record objects for the http_request and socket records. The surfaces call
    both with the 17 values in order: passed by keyword, the call alone cost ~1 us."""
    data = encode_http_request(
        METHODS.get(method, OTHER_METHOD)[0],
        protocol,
        (uri, host, referer, useragent, xff, authuser, mime_type),
        req_bytes,
        resp_bytes,
        duration_us,
        status,
    )
    return encode_http_rest(
        data, method, req_bytes, resp_bytes, duration_us, status, local, remote, route, application
    )


def encode_http_rest(
    data: bytes,
    method: str,
    req_bytes: int,
    resp_bytes: int,
    duration_us: int,
    status: int,
    local: tuple[str, int] | None,
    remote: tuple[str, int] | None,
    route: str | None,
    application: str | None,
) -> tuple[bytes, int]:
    """``encode_http``'s records after the http_request one (``data``, encoded): the
    socket record when both ends are known, app_operation when a route is."""
    count = 1
    if local and remote:
        data += encode_socket(6, local, remote)
        count = 2
    if route:
        data += encode_record(
            route_operation(route, application, method, status, req_bytes, resp_bytes, duration_us)
        )
        count += 1
    return data, count

"""sFlow for ASGI servers: HTTP counters and 1-in-N ``http_request`` samples.

One import serves plain ASGI, Starlette and FastAPI::

    from sflow_app.asgi import SFlowMiddleware

    app = SFlowMiddleware(app)              # any ASGI 3 app (ASGI 2 apps through asgiref)
    app.add_middleware(SFlowMiddleware)     # Starlette / FastAPI

Every ``http`` request is counted in ``http_counters``; sampled ones become an
``http_request`` record plus ``extended_socket_ipv4/6`` and, when the framework routed
the request (``scope["route"]``, or ``set_route()`` from framework glue), an
``app_operation`` named by the route template.
``websocket`` connections count as a GET answered 101 (403 when closed before being
accepted, as servers answer) and are sampled with the connection's lifetime as duration
and message payload bytes as sizes. ``lifespan`` (and any other scope) passes untouched.

The URI is the request-target the server received (``raw_path``, as WSGI's
``RAW_URI``): uvicorn's ``--root-path`` prefix, which uvicorn adds to ``raw_path``, is
left out (a proxy that stripped it shows in neither); route templates are the app's,
without the server's root path, with the prefixes of Starlette mounts. The request's
headers, target and HTTP version are taken when it reaches the middleware, as the client
sent them (an inner middleware may rewrite the scope); the client's address, the user
and the route are read at the end, where inner middleware and the router put them.

Sockets are ``scope["client"]`` and ``scope["server"]`` as the server reports them (a
server applying proxy headers, like uvicorn for trusted proxies, reports the forwarded
client with port 0); none for unix sockets. The data source is ``3:<server port>``,
captured on the first request (``SFLOW_APP_DS_INDEX`` wins; a unix socket gets a locally
assigned index and a warning).

Status recorded, in order: the status the app sent in ``http.response.start`` before the
client went away; 500 if the app raised before responding, or returned without
responding while the client was there (the server answers it: uvicorn's 500 "Internal
Server Error", hypercorn's empty 500; its body is not counted); 499 (nginx's "client
closed request") otherwise -- the client disconnected first (as the server knew when the
app returned), or the task was cancelled. Bytes and duration stop at the last body
message, at the disconnect, or when the app returns, whichever comes first; bytes the
server dropped after a disconnect it reported are not counted.

Starlette's (FastAPI's) ``ServerErrorMiddleware`` sits outside a middleware added with
``add_middleware`` and answers an exception with its 500 page through the ``send`` it was
given, bypassing ours. On a *sampled* request that raised before answering, the
middleware follows that page (it redirects the variable the error middleware sends
through, the closure cell of the ``send`` it handed us) and records the sample when the
page is sent: status, bytes and MIME type as the client received them. The unsampled path
is untouched (counters count such a request as 500 either way). Elsewhere -- another
middleware between the two, or a handler that fails -- the sample is recorded at once as
a 500 with no body (or not at all if the handler fails). ``app = SFlowMiddleware(app)``
(outermost) sees every response directly.

``authuser`` is ``scope["user"]`` where an auth middleware set it (Starlette's
``AuthenticationMiddleware``: its ``display_name``), else a ``Basic`` Authorization
header's user name (never the password); ``SFLOW_APP_AUTHUSER=0`` turns it off. A
decorated function called inside a routed request names the route template as its
parent context (once the router matched), not the concrete path; called in a task the
request started, once the request is over, it names none.
"""

from __future__ import annotations

import logging
import struct
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from time import perf_counter_ns
from typing import Any, TypeVar
from urllib.parse import quote

from ._agent import AGENT
from ._asgi_exchange import Exchange as _Exchange
from ._asgi_exchange import follow_error_page, mime_type, unanswered_status, websocket_status
from ._encode import HTTP_TAIL, encode_socket, http_request_head
from ._http import (
    CLIENT_CLOSED,
    MAX_US,
    METHODS,
    OTHER_METHOD,
    PATH_SAFE,
    PROTOCOLS,
    STATUS_OTHER,
    ParentContexts,
    QueryMode,
    basic_user,
    build_uri,
    current_request,
    encode_http,
    encode_http_rest,
    http_records,
    middleware_options,
    protocol_number,
    scope_user,
    status_slot,
)
from ._memo import remember
from ._source import Deferred, detail_slots

try:
    from asgiref.compatibility import guarantee_single_callable
except ImportError as exc:  # pragma: no cover - the "asgi" extra installs it
    raise ImportError("sflow_app.asgi needs asgiref: pip install 'sflow-app[asgi]'") from exc

__all__ = ["ROUTE_KEY", "SFlowMiddleware", "set_route"]

# Scope key present only on sampled requests; set_route() fills it.
ROUTE_KEY = "sflow_app.route"
# Beside it: the root_path the middleware saw, so that set_route() can tell a mount's
# prefix (Starlette's Mount extends root_path) from the server's.
_ROOT_KEY = "sflow_app.root_path"


def set_route(scope: Scope, route: str) -> None:
    """Record the route template (``/users/<int:id>``) that served this request.

    For frameworks whose router does not set ``scope["route"]`` (Django's glue calls
    it); it does nothing unless the request is being sampled. ``route`` is relative to
    the scope's ``root_path``, as the framework routed it: mounted in Starlette
    (``Mount("/dj", django_app)``) it is named with the mount's prefix (``/dj/...``).
    """
    if ROUTE_KEY in scope:
        root, mounted = scope.get(_ROOT_KEY), scope.get("root_path")
        if (
            type(root) is str
            and type(mounted) is str
            and mounted.startswith(root)
            and route.startswith("/")
        ):
            route = mounted[len(root) :] + route
        scope[ROUTE_KEY] = route
        sampled = current_request.get()
        if isinstance(sampled, _Parent):  # the app's scope may be a copy of ours
            sampled.route = route


log = logging.getLogger("sflow_app")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


_T = TypeVar("_T")
_REQUEST_HEADERS = {
    b"host": 0,
    b"referer": 1,
    b"user-agent": 2,
    b"x-forwarded-for": 3,
    b"content-length": 4,
    b"authorization": 5,
}


class SFlowMiddleware:
    """Pure ASGI middleware; per-request state lives in the call, never on ``self``.

    ``exclude``: path prefixes (or a predicate on ``scope["path"]``) neither counted nor
    sampled, e.g. health checks; a prefix matches the path as the app routes it too (under
    ``root_path``, which uvicorn's ``--root-path`` puts in the path). ``query``: what
    sampled URIs keep of the query string -- ``"sensitive"`` (default: values of
    credential-like parameters replaced), ``"keep"``, ``"redact"`` (every value replaced)
    or ``"drop"``; unset, the ``query`` setting (``SFLOW_APP_QUERY``, default
    ``"sensitive"``).
    """

    __slots__ = (
        "_excluded",
        "_method_incr",
        "_other_method",
        "_other_status",
        "_pool",
        "_sampler",
        "_source",
        "_status_incr",
        "app",
        "query",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        exclude: Iterable[str] | Callable[[str], bool] | None = None,
        query: QueryMode | None = None,
    ) -> None:
        self.app: ASGIApp = guarantee_single_callable(app)
        self.query = query
        if exclude is not None and not callable(exclude) and not isinstance(exclude, str):
            exclude = tuple(exclude)  # read twice (an iterator once)
        self._excluded = _scope_excluded(exclude, middleware_options(exclude, query))
        self._bind()

    def _bind(self) -> None:
        """Count into the agent's HTTP data source (again after ``testing.reset()``)."""
        self._source = source = AGENT.http_source()
        self._sampler = source.sampler
        self._pool = source.sampler.pool_cell
        cells = source.counters.cells
        # Counter cells (next() adds one, see _counters): the unsampled path is two dict
        # lookups and two next() calls.
        self._method_incr: dict[str, Iterator[object]] = {
            m: cells[slot] for m, (_, slot) in METHODS.items()
        }
        self._other_method: Iterator[object] = cells[OTHER_METHOD[1]]
        self._status_incr: dict[int, Iterator[object]] = {
            s: cells[status_slot(s)] for s in range(100, 600)
        }
        # 4xx/5xx statuses app_operations tells apart: their class and their own counter,
        # both advanced by one next() on the zip of the two.
        for code, slot in detail_slots().items():
            self._status_incr[code] = zip(self._status_incr[code], cells[slot], strict=True)
        self._other_status: Iterator[object] = cells[STATUS_OTHER]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                return await self._websocket(scope, receive, send)
            return await self.app(scope, receive, send)
        if self._excluded is not None and self._excluded(scope):
            return await self.app(scope, receive, send)
        n = next(self._pool)
        if n >= self._sampler.next_at and (rate := self._decide(n, scope)):
            if rate < 0:  # bound anew: counted there
                return await self(scope, receive, send)
            return await self._sampled(n, rate, scope, receive, send)

        status = 0

        # A plain function handing back the server's awaitable, not a coroutine of its
        # own: one coroutine and frame fewer per message (~0.06 us each).
        def send_status(message: Message) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        try:
            await self.app(scope, receive, send_status)
            if not status:  # returned without answering: the server's 500, or a client gone
                status = await unanswered_status(receive)
        except Exception:
            status = status or 500
            raise
        finally:
            try:  # (a subscript: cheaper than get() on every request; try costs nothing)
                next(self._method_incr.get(scope["method"], self._other_method))
            except (KeyError, TypeError):  # a lenient server's scope: counted as "other"
                next(self._other_method)
            try:
                next(self._status_incr.get(status or CLIENT_CLOSED, self._other_status))
            except TypeError:  # an unhashable status: the app's mistake, not ours to raise
                next(self._other_status)

    def _count_status(self, status: Any) -> None:
        """The unsampled path's status count, spelt out there (one call fewer)."""
        try:
            next(self._status_incr.get(status, self._other_status))
        except TypeError:  # an unhashable status: the app's mistake, not ours to raise
            next(self._other_status)

    def _decide(self, n: int, scope: Scope) -> int:
        """The slow path: identity capture on first use, then the sampler's decision
        (the N sampled at, or 0); -1 when the agent was reset since the last one: the
        middleware counts into the fresh agent's source from now on."""
        source = self._source
        try:
            if source.retired:
                self._bind()
                return -1
            if source.ds_index is None:
                host, port = scope.get("server") or ("asgi", None)
                if isinstance(port, int) and port:
                    AGENT.set_http_port(port, f"{host}:{port}")
                else:  # a unix socket (uvicorn gives (path, None)) or no address at all
                    AGENT.set_http_port(None, str(host))
            # source.sample(n), one call fewer: at 1-in-1 every request comes here
            AGENT.housekeeping(source)
            return self._sampler.decide(n)
        except Exception:
            log.debug("sflow_app: sampling decision failed", exc_info=True)
            return 0

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._excluded is not None and self._excluded(scope):
            return await self.app(scope, receive, send)
        n = next(self._pool)
        if n >= self._sampler.next_at and (rate := self._decide(n, scope)):
            if rate < 0:  # bound anew: counted there
                return await self(scope, receive, send)
            return await self._sampled(n, rate, scope, receive, send)

        status = 0

        def send_status(message: Message) -> Awaitable[None]:  # as in __call__
            nonlocal status
            if not status:
                status = websocket_status(message)
            return send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status = status or 500
            raise
        finally:
            next(self._method_incr["GET"])
            self._count_status(status or CLIENT_CLOSED)

    async def _sampled(self, n: int, rate: int, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = scope["type"] == "websocket"
        method = "GET" if websocket else scope.get("method", "")
        root_path = scope.get("root_path", "")
        exchange = _Exchange(receive, send, method == "HEAD")
        # The parent context of decorated calls: the route template once the router has
        # matched (recorded on the scope only then), else the path; worked out when asked.
        parent = _Parent(method, scope, root_path) if ParentContexts.wanted else None
        token = current_request.set(parent) if parent is not None else None
        scope[ROUTE_KEY] = None
        scope[_ROOT_KEY] = root_path
        # What the client sent, before an inner middleware rewrites it (a path normaliser,
        # a header added); who the client is (a proxy-headers middleware inside sets
        # it), the user and the route are read at the end.
        try:
            request: tuple[Any, ...] | None = _request_values(scope, root_path)
        except Exception:  # a lenient server's odd headers: read (and dropped) at the end
            request = None
        raised = deferred = False
        try:
            await self.app(scope, exchange.receive, exchange.send)
            if not websocket and not exchange.answered and not exchange.end_ns:
                exchange.status = await unanswered_status(exchange.receive)
        except Exception:
            raised = True
            if not exchange.status and not exchange.end_ns:  # raised, client still there
                exchange.status = 500
                # Starlette's error page goes out beside us: record it when it is sent.
                deferred = follow_error_page(
                    send,
                    exchange,
                    lambda: self._record(
                        n,
                        rate,
                        scope,
                        method,
                        exchange,
                        exchange.status or 500,
                        exchange.end_ns,
                        root_path,
                        request,
                    ),
                )
            raise
        finally:
            if token is not None and parent is not None:
                current_request.reset(token)
                parent.end()  # tasks the request started keep it in their context
            end_ns = exchange.end_ns or perf_counter_ns()
            status = exchange.status or CLIENT_CLOSED
            # Counted as the unsampled path counts (the app's answer), so sampling never
            # skews the counters; the record says what the client saw (499: it left first).
            counted = exchange.answered or exchange.status or (500 if raised else CLIENT_CLOSED)
            next(self._method_incr.get(method, self._other_method))
            self._count_status(counted)
            if not deferred:
                self._record(n, rate, scope, method, exchange, status, end_ns, root_path, request)

    def _record(
        self,
        n: int,
        rate: int,
        scope: Scope,
        method: str,
        exchange: _Exchange,
        status: int,
        end_ns: int,
        root_path: str,
        request: tuple[Any, ...] | None,
    ) -> None:
        """Queue the sample: what only the request can tell is taken now, the records
        are built by the exporter (``_Sample.build``)."""
        try:
            settings = AGENT.settings
            sample = _Sample()
            sample.scope_values = (
                *(request or _request_values(scope, root_path)),
                self.query or settings.query,
                # "": no user (an auth middleware sets one); None: authuser off
                (scope_user(scope) if "user" in scope else "") if settings.authuser else None,
                scope.get("server"),  # (host, port) tuples: made addresses on the exporter
                scope.get("client"),
                _route_template(scope, root_path),
            )
            sample.method = method
            # The exchange's figures as they are now (the app may go on using it).
            sample.exchange = (exchange.headers, exchange.received, exchange.sent)
            sample.status = status if type(status) is int else 0  # 0: not a number
            duration_us = (end_ns - exchange.start_ns) // 1000
            sample.duration_us = duration_us if duration_us < MAX_US else MAX_US
            # self._source.submit(n, sample, rate), one call fewer:
            AGENT.enqueue(self._source, n, rate, sample)
        except Exception:  # nothing here may reach the application
            log.debug("sflow_app: could not record an ASGI sample", exc_info=True)
            self._source.drop()


def _scope_excluded(
    exclude: Iterable[str] | Callable[[str], bool] | None,
    path_excluded: Callable[[str], bool] | None,
) -> Callable[[Scope], bool] | None:
    """``exclude`` as a predicate on the scope. Prefixes match the path or the path under
    ``root_path``: uvicorn puts root_path in path, hypercorn does not (and WSGI matches
    PATH_INFO, which leaves SCRIPT_NAME out)."""
    if path_excluded is None:
        return None
    if callable(exclude):
        return lambda scope: path_excluded(scope["path"])
    prefixes = tuple(exclude or ())

    def excluded(scope: Scope) -> bool:
        path: str = scope["path"]
        if path.startswith(prefixes):
            return True
        root = scope.get("root_path", "")
        return (
            type(root) is str
            and root != ""
            and path.startswith(root)
            and path.startswith(prefixes, len(root))
        )

    return excluded


class _Sample(Deferred):
    """One sampled request as it was seen; its records are built on the exporter."""

    __slots__ = ("duration_us", "exchange", "method", "scope_values", "status")

    scope_values: tuple[Any, ...]
    method: str
    exchange: tuple[Iterable[tuple[bytes, bytes]], int, int]
    status: int
    duration_us: int

    def build(self) -> tuple[Any, ...]:
        return self._describe(http_records)

    def encode(self) -> tuple[bytes, int]:
        """``_describe(encode_http)``'s bytes, with the http_request record up to its
        numbers remembered by what the request sent (target, host, user agent...), its
        method and the response's content type: one lookup, where ``_describe`` converts
        and redacts the target every time (~3 us a sample)."""
        headers, version, raw_path, path, query_string, mode, user, server, client, route = (
            self.scope_values
        )
        host, referer, user_agent, xff, length, authorization = _request_headers(headers)
        if authorization and user is not None:  # a user's own (authuser): not remembered
            return self._describe(encode_http)
        response_headers, received, sent = self.exchange
        mime = mime_type(response_headers)
        method = self.method
        # The path only says what raw_path does not (servers give either, or both).
        key = (
            method,
            version,
            raw_path or path,
            query_string,
            mode,
            user,
            host,
            referer,
            user_agent,
            xff,
            mime,
        )
        try:
            head = _HEADS.get(key)
        except TypeError:  # a server's odd scope value: no memo
            return self._describe(encode_http)
        if head is None:
            strings = (
                _target(raw_path, path, query_string, mode),
                host,
                referer,
                user_agent,
                xff,
                user or b"",
                mime,
            )
            head = http_request_head(
                METHODS.get(method, OTHER_METHOD)[0],
                PROTOCOLS.get(version) or protocol_number(version),
                strings,
            )
            # The key's own sizes: the query as sent (a token the target redacted) too.
            size = sum(map(len, strings)) + len(key[2]) + len(query_string or b"")
            head = remember(_HEADS, key, head, size)
        req_bytes = int(length) if length and (length := length.strip()).isdigit() else received
        duration_us, status = self.duration_us, self.status
        try:
            data = head + HTTP_TAIL.pack(req_bytes, sent, duration_us, status)
        except struct.error:  # a number out of range: the clamping path
            return self._describe(encode_http)
        local, remote = _address(server), _address(client)
        if not route:  # encode_http_rest's common case, one call fewer
            if local and remote:
                return data + encode_socket(6, local, remote), 2
            return data, 1
        return encode_http_rest(
            data, method, req_bytes, sent, duration_us, status, local, remote, route, self.service
        )

    @property
    def service(self) -> str:
        return AGENT.service_name  # read when a route needs it, as the WSGI surface does

    def _describe(self, make: Callable[..., _T]) -> _T:
        """``make`` (``http_records`` or ``encode_http``) of what the request saw."""
        headers, version, raw_path, path, query_string, mode, user, server, client, route = (
            self.scope_values
        )
        found = _request_headers(headers)
        length = found[4].strip()
        response_headers, received, sent = self.exchange
        return make(  # in the order of http_records' parameters
            self.method,
            PROTOCOLS.get(version) or protocol_number(version),
            _target(raw_path, path, query_string, mode),
            found[0],
            found[1],
            found[2],
            found[3],
            b"" if user is None else user or basic_user(found[5]),
            mime_type(response_headers),
            int(length) if length.isdigit() else received,
            sent,
            self.duration_us,
            self.status,
            _address(server),
            _address(client),
            route,
            self.service if route else None,
        )


# What samples sent (target, host, user agent...), their method and content type -> the
# http_request record up to its numbers (see _Sample.encode).
_HEADS: dict[tuple[Any, ...], bytes] = {}


def _request_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Host, Referer, User-Agent, X-Forwarded-For (repeats joined), Content-Length and
    Authorization of a request's headers (b"" when absent)."""
    found: list[bytes] = [b"", b"", b"", b"", b"", b""]
    get = _REQUEST_HEADERS.get
    for name, value in headers:
        i = get(name)  # servers give names lowercased (ASGI asks them to)
        if i is None and not name.islower():
            i = get(name.lower())
        if i is not None:
            found[i] = found[i] + b", " + value if i == 3 and found[i] else value
    return found


def _target(raw_path: bytes | None, path: str, query_string: bytes | None, mode: str) -> bytes:
    """The request-target as received (``raw_path``, else the path quoted), with the
    ``query`` option applied."""
    if not raw_path:
        raw_path = quote(path.encode("utf-8", "surrogateescape"), safe=PATH_SAFE).encode("ascii")
    target, _, query = raw_path.partition(b"?")  # some servers leave the query in
    return build_uri(target, query_string or query, mode)


def _request_values(scope: Scope, root_path: Any) -> tuple[Any, ...]:
    """What the client sent: headers, HTTP version, target, path and query."""
    return (
        tuple(scope.get("headers") or ()),  # a copy: the server's list, reusable
        scope.get("http_version", "1.1"),
        _received_path(scope, root_path),
        scope.get("path", ""),
        scope.get("query_string"),
    )


# uvicorn's HTTP protocols, loaded once it serves: they put --root-path in raw_path.
_ROOT_IN_RAW_PATH = ("uvicorn.protocols.http.h11_impl", "uvicorn.protocols.http.httptools_impl")


def _received_path(scope: Scope, root_path: Any) -> Any:
    """``raw_path`` as the server received it. uvicorn's ``--root-path /api`` puts the
    root path in ``raw_path`` (``/api/x`` for a request line's ``/x``), where the ASGI
    spec has the bytes received and hypercorn gives them: that prefix is taken off, once,
    so the URI is the request-target the server read, as WSGI's ``RAW_URI`` is. Under a
    Starlette Mount (the middleware inside a mounted app) root_path holds the mount too:
    the server's is ``app_root_path`` there."""
    raw = scope.get("raw_path")
    root_path = scope.get("app_root_path", root_path)
    if not root_path or type(root_path) is not str or type(raw) is not bytes:
        return raw
    if not any(name in sys.modules for name in _ROOT_IN_RAW_PATH):
        return raw  # not uvicorn (hypercorn leaves raw_path as received)
    prefix = root_path.encode("utf-8", "surrogateescape")
    rest = raw[len(prefix) :]
    if raw.startswith(prefix) and rest.startswith((b"/", b"*")):
        return rest
    return raw


def _address(addr: Any) -> tuple[str, int] | None:
    """(host, port) from scope["client"] / scope["server"]; None for unix sockets."""
    if type(addr) is tuple and len(addr) == 2 and type(addr[0]) is str and type(addr[1]) is int:
        return addr  # as servers give it (no copy)
    if addr and len(addr) == 2 and isinstance(addr[1], int):
        return str(addr[0]), addr[1]
    return None


class _Parent:
    """A sampled request as decorated calls see it (``_http.Request``): the route
    template once the router has matched (recorded on the scope only then), else the
    path, worked out when asked."""

    __slots__ = ("_root_path", "_scope", "ended", "method", "route")

    def __init__(self, method: str, scope: Scope, root_path: str) -> None:
        self.method = method
        self.route: str | None = None
        self.ended = False
        self._scope = scope
        self._root_path = root_path

    def end(self) -> None:
        """The request is over: no parent of later calls, its scope let go."""
        self.ended = True
        self._scope = {}

    @property
    def service(self) -> str:
        return AGENT.service_name

    def path(self) -> str:
        scope = self._scope
        return self.route or _route_template(scope, self._root_path) or scope.get("path", "")


def _route_template(scope: Scope, root_path: str) -> str | None:
    """The template of the route that served the request, with any Mount prefix.

    Routers record the route on the scope dict they were given, which is ours: FastAPI's
    effective route context (include_router prefixes included), else ``scope["route"]``
    (Starlette, FastAPI), else the route whose endpoint Starlette put in the scope (older
    Starlette). Mounts show as the growth of ``root_path`` (with concrete values for
    parameterised mount paths).
    """
    explicit = scope.get(ROUTE_KEY)
    if isinstance(explicit, str) and explicit:
        return explicit
    fastapi, route, endpoint = scope.get("fastapi"), scope.get("route"), scope.get("endpoint")
    if fastapi is None and route is None and endpoint is None:
        return None  # no router recorded a route (most plain ASGI apps)
    mounted = scope.get("root_path", "")
    context = fastapi.get("effective_route_context") if isinstance(fastapi, dict) else None
    template = getattr(context, "path_format", None) or getattr(route, "path_format", None)
    if not template and endpoint is not None:
        path = scope.get("path", "")
        router = scope.get("router") or scope.get("app")
        template = _find_route(
            getattr(router, "routes", ()),
            endpoint,
            path[len(mounted) :] if path.startswith(mounted) else path,
        )
    if not template or not isinstance(template, str):
        return None
    prefix = mounted[len(root_path) :] if mounted.startswith(root_path) else ""
    if context is None and getattr(route, "routes", None) is not None:
        # A Mount (StaticFiles, a plain ASGI app, no inner route matched): its own
        # path is already in root_path; only its catch-all ("/{path}") is left.
        return prefix + template[template.rfind("/") :]
    return prefix + template


def _find_route(routes: Iterable[Any], endpoint: Any, path: str, depth: int = 0) -> str | None:
    """The template of a route serving ``endpoint`` that matches ``path``, mounts searched."""
    for route in routes:
        if getattr(route, "endpoint", None) is endpoint:
            regex = getattr(route, "path_regex", None)
            if regex is None or regex.match(path):
                path_format = getattr(route, "path_format", None)
                if path_format:
                    return str(path_format)
        inner = getattr(route, "routes", None)
        if inner and depth < 8:
            found = _find_route(inner, endpoint, path, depth + 1)
            if found:
                return found
    return None

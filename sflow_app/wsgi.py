"""sFlow for WSGI servers: HTTP counters and 1-in-N ``http_request`` samples.

One line in ``wsgi.py``::

    from sflow_app.wsgi import SFlowMiddleware

    application = SFlowMiddleware(application)

Every request is counted in ``http_counters`` (method, status class). A sampled request
becomes one flow sample: ``http_request`` + ``extended_socket_ipv4/6`` and, when a
framework integration recorded the matched route (:func:`set_route`), an
``app_operation`` named by the route template.

**Timing and sizes.** A WSGI response is finished when the server calls ``close()`` on
the returned iterable, so a sampled request is timed from the call to that ``close()``
(a streamed body is timed to its end) and ``resp_bytes`` is the bytes the server took
from the iterable and from ``write()`` (0 for ``HEAD``). ``wsgi.file_wrapper`` responses
are returned to the server as the very object the server built (gunicorn checks its type,
uWSGI its identity), so the ``sendfile`` fast path survives; their size is the response's
``Content-Length``, else what is left of the file, and their ``close()`` is intercepted
on the object itself (an instance attribute: gunicorn's ``FileWrapper``, or under uWSGI
the app's own file object). An object that refuses a new attribute (``__slots__``) ends
its sample when the application returns. ``req_bytes`` is the request's ``Content-Length``,
else the body bytes the application read (chunked uploads).

**Status.** The status the application passed to ``start_response`` (the last one, on
sampled requests); 500 when it raised before starting a response; 499 (nginx's "client
closed request") when the server closed a response whose status was never set.

**Service identity** (data source ``3:<port>``, captured on the first request, never
from ``Host``), in this order: ``SFLOW_APP_DS_INDEX`` when configured; else the server's
listening socket:

- gunicorn: ``environ["gunicorn.socket"]`` is the accepted connection, whose
  ``getsockname()`` is the listener's address and port (a path for ``unix:`` binds);
- Werkzeug's server (``flask run``, ``run_simple``, ``make_server``):
  ``environ["werkzeug.socket"]``, the same way;
- uWSGI: the ``uwsgi`` module -- with the HTTP router (``--http``/``--https``) the
  router's port from ``uwsgi.opt``; otherwise the lowest TCP port among the sockets the
  instance bound (``uwsgi.sockets``: ``--http-socket``, ``--socket`` behind nginx). The
  exporter is a Python thread: uWSGI 2.0 on Python 3 runs threads by default, older
  builds need ``--enable-threads`` (or ``--threads``);
- wsgiref: ``SERVER_PORT``, which it takes from its own listening socket.

Any other server, or a unix socket, gets a locally assigned index (65536-99999, stable for
the service name and the listener) and one warning per service naming
``SFLOW_APP_DS_INDEX``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter_ns
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from ._agent import AGENT
from ._encode import HTTP_TAIL, http_request_head
from ._http import (
    CLIENT_CLOSED,
    MAX_US,
    METHODS,
    OTHER_METHOD,
    PATH_SAFE,
    PROTOCOLS,
    STATUS_OTHER,
    STATUS_SLOTS,
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
)
from ._listen import wsgi_addresses, wsgi_listener
from ._memo import remember
from ._source import Deferred, detail_slots

__all__ = ["TRANSACTION_KEY", "SFlowMiddleware", "set_route"]

log = logging.getLogger("sflow_app")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]
Environ = WSGIEnvironment
Headers = list[tuple[str, str]]
Write = Callable[[bytes], object]

# environ key holding the per-request transaction of a *sampled* request (absent
# otherwise): the mutable slot through which framework glue hands over the route.
TRANSACTION_KEY = "sflow_app.transaction"

_DONE: Environ = {}  # a finished transaction's environ: it keeps no request alive
_T = TypeVar("_T")


# How many SFlowMiddleware objects this process built (the Django glue checks it).
instances = 0


def set_route(environ: Environ, route: str) -> None:
    """Record the route template (``/users/<int:id>``) that served this request.

    Framework glue calls it; it does nothing unless the request is being sampled, so
    collectors can group samples by route without the URI's cardinality.
    """
    txn = environ.get(TRANSACTION_KEY)
    if txn is not None:
        txn.route = route  # the record's, and the parent context's (txn.path)


class SFlowMiddleware:
    """WSGI middleware; per-request state lives in the call, never on ``self``.

    ``exclude``: path prefixes of ``PATH_INFO`` (or a predicate on it) neither counted
    nor sampled, e.g. health checks -- like NGINX's ``sflow off``. ``query``: what sampled
    URIs keep of the query string -- ``"sensitive"`` (default: the values of
    credential-like parameters, ``_http.SENSITIVE``, replaced by ``REDACTED``), ``"keep"``,
    ``"redact"`` (every value replaced) or ``"drop"``; unset, the ``query`` setting
    (``SFLOW_APP_QUERY``, default ``"sensitive"``).
    """

    __slots__ = (
        "_detail_incr",
        "_excluded",
        "_method_incr",
        "_other_method",
        "_other_status",
        "_pool",
        "_sampler",
        "_source",
        "_status_count",
        "_status_incr",
        "app",
        "query",
    )

    def __init__(
        self,
        app: WSGIApplication,
        *,
        exclude: Iterable[str] | Callable[[str], bool] | None = None,
        query: QueryMode | None = None,
    ) -> None:
        global instances
        self.app = app
        self.query = query
        self._excluded = middleware_options(exclude, query)
        self._bind()
        instances += 1

    def _bind(self) -> None:
        """Count into the agent's HTTP data source (again after ``testing.reset()``)."""
        self._source = source = AGENT.http_source()
        self._sampler = source.sampler
        self._pool = source.sampler.pool_cell
        cells = source.counters.cells
        # Counter cells (next() adds one) keyed by what the request hands us: the method
        # string and the status string's first character ("2" of "200 OK" -- a
        # 1-character slice is a cached string in CPython, so no allocation and no int
        # parsing).
        self._method_incr: dict[Any, Iterator[object]] = {
            m: cells[slot] for m, (_, slot) in METHODS.items()
        }
        self._other_method: Iterator[object] = cells[OTHER_METHOD[1]]
        self._status_incr = {str(d): cells[STATUS_SLOTS[d]] for d in range(1, 6)}
        self._other_status: Iterator[object] = cells[STATUS_OTHER]
        # 4xx/5xx statuses app_operations tells apart ("404" -> its own counter).
        self._detail_incr = {str(code): cells[slot] for code, slot in detail_slots().items()}
        self._status_count: dict[str, Iterator[object]] = {}  # see _status_counter

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._excluded is not None and self._excluded(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        n = next(self._pool)
        if n >= self._sampler.next_at and (rate := self._decide(n, environ)):
            if rate < 0:  # bound anew: counted there
                return self(environ, start_response)
            return self._sampled(n, rate, environ, start_response)
        # The unsampled path: count the method, learn the status, count it.
        next(self._method_incr.get(environ.get("REQUEST_METHOD"), self._other_method))
        seen: str | None = None

        # The parameters are named as servers name them: an app may pass them by keyword.
        def counting_start_response(
            status: str, headers: Headers, exc_info: ExcInfo | None = None
        ) -> Write:
            nonlocal seen
            write = start_response(status, headers, exc_info)
            seen = status
            return write

        try:
            result = self.app(environ, counting_start_response)
        except BaseException:
            self._count_status(seen, True)
            raise
        if seen is None:  # start_response deferred to the first iteration (generators)
            late = _SizedLateStatus if hasattr(result, "__len__") else _LateStatus
            return late(result, self, lambda: seen)
        next(self._status_count.get(seen) or self._status_counter(seen))
        return result

    def _status_counter(self, status: str) -> Iterator[object]:
        """What counts a status line (next() on it): its class's counter ("2" of "200
        OK"), and for a status app_operations counts on its own ("404") that one too --
        ``zip`` of the two cells advances both in one C call. Remembered per line (a
        service answers with a few): one lookup a request, not a slice, two lookups and a
        compare (~0.1 us)."""
        if type(status) is not str:  # not a status line (PEP 3333: str): "other", no raise
            return self._other_status
        first = status[:1]
        count: Iterator[object] = self._status_incr.get(first, self._other_status)
        detail = self._detail_incr.get(status[:3]) if first > "3" else None
        if detail is not None:
            count = zip(count, detail, strict=True)
        return remember(self._status_count, status, count, len(status))

    # -- slow path --------------------------------------------------------------------
    def _decide(self, n: int, environ: Environ) -> int:
        """Identity capture on first use, then the sampler's decision (the N sampled
        at, or 0); -1 when the agent was reset since the last one: the middleware counts
        into the fresh agent's source from now on. Never raises."""
        source = self._source
        try:
            if source.retired:
                self._bind()
                return -1
            if source.ds_index is None:
                port, where = wsgi_listener(environ)
                AGENT.set_http_port(port, where)
            # source.sample(n), one call fewer: at 1-in-1 every request comes here
            AGENT.housekeeping(source)
            return self._sampler.decide(n)
        except Exception:
            log.debug("sflow_app: sampling decision failed", exc_info=True)
            return 0

    def _sampled(
        self, n: int, rate: int, environ: Environ, start_response: StartResponse
    ) -> Iterable[bytes]:
        txn = _Transaction(self, n, rate, environ, start_response)
        next(self._method_incr.get(txn.method, self._other_method))
        environ[TRANSACTION_KEY] = txn
        length = environ.get("CONTENT_LENGTH", "")
        if type(length) is str and length.isascii() and length.strip().isdigit():
            txn.req_bytes = int(length)  # ASCII digits only: "¹" (latin-1 0xb9) is a digit
        elif environ.get("HTTP_TRANSFER_ENCODING") and environ.get("wsgi.input") is not None:
            # A body without a length (chunked): what the app reads is counted. With
            # neither header a request has no body (RFC 9112, 6.3): nothing to wrap.
            environ["wsgi.input"] = _Input(environ["wsgi.input"], txn)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if file_wrapper is not None:
            environ["wsgi.file_wrapper"] = txn.wrap_file(file_wrapper)
        token = current_request.set(txn) if ParentContexts.wanted else None
        try:
            result = self.app(environ, txn.start_response)
        except BaseException:
            txn.finish(failed=True)
            raise
        finally:
            if token is not None:
                current_request.reset(token)
            if file_wrapper is not None:
                # Servers recognise their file_wrapper by type/identity after we return.
                environ["wsgi.file_wrapper"] = file_wrapper
        return txn.respond(result)

    def _count_status(self, status: str | None, failed: bool) -> None:
        if status is not None:
            next(self._status_count.get(status) or self._status_counter(status))
        elif failed:
            next(self._status_incr["5"])
        else:
            next(self._status_incr["4"])  # CLIENT_CLOSED


class _LateStatus:
    """Unsampled response whose status was not set when the app returned: counts it at
    ``close()``. Only apps that call ``start_response`` lazily (generators) get this."""

    __slots__ = ("_failed", "_iter", "_middleware", "_result", "_status")

    def __init__(
        self, result: Iterable[bytes], middleware: SFlowMiddleware, status: Callable[[], str | None]
    ) -> None:
        self._result = result
        self._middleware: SFlowMiddleware | None = middleware
        self._status = status
        self._failed = False
        try:
            self._iter = iter(result)
        except BaseException:
            self._failed = True
            self.close()
            raise

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._iter)
        except StopIteration:
            raise
        except BaseException:
            self._failed = True
            raise

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            middleware, self._middleware = self._middleware, None
            if middleware is not None:
                middleware._count_status(self._status(), self._failed)


class _SizedLateStatus(_LateStatus):
    """For results with a length: servers may use ``len()`` to set Content-Length."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._result)  # type: ignore[arg-type]


class _Transaction(Deferred):
    """Everything one sampled request saw; owned by that request alone."""

    __slots__ = (
        "_environ",
        "_middleware",
        "_start_response",
        "_write",
        "addresses",
        "authorization",
        "end_ns",
        "failed",
        "file_result",
        "headers",
        "method",
        "n",
        "rate",
        "req_bytes",
        "resp_bytes",
        "route",
        "seen",
        "start_ns",
        "status",
    )

    def __init__(
        self,
        middleware: SFlowMiddleware,
        n: int,
        rate: int,
        environ: Environ,
        start_response: StartResponse,
    ) -> None:
        self.start_ns = perf_counter_ns()
        self._middleware = middleware
        self.n = n
        self.rate = rate
        self._environ = environ
        self._start_response = start_response
        self.method: str = environ.get("REQUEST_METHOD", "")
        self.status: str | None = None
        self.headers: Headers = []
        self.req_bytes = 0
        self.resp_bytes = 0
        self.route: str | None = None
        self.file_result: object = None
        self.failed = False
        self.end_ns = 0  # 0 until finish() (it runs once)
        self.seen: tuple[Any, ...]  # set by finish, with addresses and authorization
        capture = AGENT.capture
        if capture is not None:
            capture.track(self)  # finished at the capture's end if never closed

    @property
    def service(self) -> str:
        return AGENT.service_name

    @property
    def ended(self) -> bool:
        """Over: no parent of calls made later (in a thread given the request's context)."""
        return self.end_ns != 0

    def path(self) -> str:
        """The route (``set_route``), else the path: the parent context of decorated calls."""
        if self.route:
            return self.route
        env = self._environ
        return _raw(env.get("SCRIPT_NAME", "") + env.get("PATH_INFO", "")).decode(
            "utf-8", "replace"
        )

    def start_response(
        self, status: str, headers: Headers, exc_info: ExcInfo | None = None
    ) -> Write:
        self._write = self._start_response(status, headers, exc_info)
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> object:
        """The ``write()`` the app gets: the server's, counting."""
        result = self._write(data)
        if self.method != "HEAD":
            self.resp_bytes += len(data)
        return result

    def wrap_file(self, file_wrapper: Callable[..., Any]) -> Callable[..., Any]:
        def recording_file_wrapper(*args: Any, **kwargs: Any) -> Any:
            result = file_wrapper(*args, **kwargs)
            self.file_result = result
            return result

        return recording_file_wrapper

    def respond(self, result: Iterable[bytes]) -> Iterable[bytes]:
        """What goes back to the server: the same file_wrapper object, or a wrapper."""
        if result is not None and result is self.file_result:
            try:
                if self.method != "HEAD":
                    self.resp_bytes = _file_size(result, self.headers)
                close = getattr(result, "close", None)

                def closing() -> None:
                    try:
                        if close is not None:
                            close()
                    finally:
                        self.finish()
                        with contextlib.suppress(Exception):
                            del result.close  # type: ignore[attr-defined]  # the cycle

                result.close = closing  # type: ignore[attr-defined]
            except Exception:  # an object that takes no new attribute (__slots__): end now
                self.finish()
            return result
        if type(result) is list or type(result) is tuple:  # most apps' answer: see _ListBody
            body = _ListBody.__new__(_ListBody)  # no __init__ frame: nothing there can fail
            body._result = result
            body._txn = self
            return body
        if hasattr(result, "__len__"):
            return _SizedBody(result, self)
        return _Body(result, self)

    def finish(self, *, failed: bool = False) -> None:
        """The response is over: count its status, take what ``build`` needs and only
        the request can tell, queue the sample. Never raises.

        Taken now: the environ's values (not the environ: it holds the connection), the
        connection's addresses (its socket is gone later) and the settings in force.
        Every sampled request comes here: what helpers would do is spelt out."""
        if self.end_ns:
            return
        self.end_ns = perf_counter_ns()
        self.failed = failed = failed or self.failed
        middleware = self._middleware
        try:
            status = self.status
            if status is None:
                middleware._count_status(None, failed)
            else:  # _count_status, its common case
                next(middleware._status_count.get(status) or middleware._status_counter(status))
            env = self._environ
            settings = AGENT.settings
            authuser = settings.authuser
            get = env.get
            # None for a missing key. seen is what _request_strings converts (and the
            # memos keep): never a credential. One get() each: half the cost of
            # map(env.get, keys) (~0.3 us per sampled request).
            self.seen = (
                get("RAW_URI"),
                get("REQUEST_URI"),
                get("SCRIPT_NAME"),
                get("PATH_INFO"),
                get("QUERY_STRING"),
                get("HTTP_HOST"),
                get("HTTP_REFERER"),
                get("HTTP_USER_AGENT"),
                get("HTTP_X_FORWARDED_FOR"),
                get("REMOTE_USER"),
                get("SERVER_PROTOCOL"),
                "werkzeug.socket" in env,
                authuser,
                middleware.query or settings.query,
            )
            self.addresses = wsgi_addresses(env)
            self.authorization = get("HTTP_AUTHORIZATION") if authuser else None
            self._environ = _DONE
            self.file_result = None  # an open file: the queue need not hold it
            # The records are built by the exporter, from what was taken (see build).
            # source.submit(n, self, rate), one call fewer:
            AGENT.enqueue(middleware._source, self.n, self.rate, self)
        except Exception:
            log.debug("sflow_app: could not record a WSGI sample", exc_info=True)
            middleware._source.drop()

    def build(self) -> tuple[Any, ...]:
        """The sample's records (on the exporter thread): as the request saw them."""
        return self._describe(http_records)

    def encode(self) -> tuple[bytes, int]:
        """``_describe(encode_http)``'s bytes, with the http_request record up to its
        numbers remembered by what the request kept (its URI, host, user agent...), its
        method and content type: one lookup, where ``_describe`` converts the strings
        and looks them up twice (~1 us less a sample)."""
        status = self.status
        if self.authorization or status is None:  # a user's own header; no status: 500/499
            return self._describe(encode_http)
        code = _CODES.get(status) or _status_code(status)
        content_type = _content_type(self.headers)
        kept = self.seen
        key = (kept, self.method, content_type)
        try:
            head = _HEADS.get(key)
        except TypeError:  # a server's odd environ value: no memo
            return self._describe(encode_http)
        if head is None:
            head = _http_request_head(kept, self.method, content_type)
            size = sum(len(value) for value in kept if type(value) is str)
            head = remember(_HEADS, key, head, size + len(content_type or ""))
        duration_us = (self.end_ns - self.start_ns) // 1000
        if duration_us > MAX_US:
            duration_us = MAX_US
        try:
            data = head + HTTP_TAIL.pack(self.req_bytes, self.resp_bytes, duration_us, code)
        except struct.error:  # a number out of range: the clamping path
            return self._describe(encode_http)
        route = self.route
        local, remote = self.addresses
        if not (route or (local and remote)):
            return data, 1  # no more records
        return encode_http_rest(
            data,
            self.method,
            self.req_bytes,
            self.resp_bytes,
            duration_us,
            code,
            local,
            remote,
            route,
            self.service if route else None,
        )

    def _describe(self, make: Callable[..., _T]) -> _T:
        """``make`` (``http_records`` or ``encode_http``) of what the request saw."""
        protocol, uri, host, referer, useragent, xff, authuser = _request_strings(self.seen)
        local, remote = self.addresses
        if self.authorization and not authuser:
            authuser = basic_user(self.authorization)
        if self.status is not None:
            code = _CODES.get(self.status) or _status_code(self.status)
        else:
            code = 500 if self.failed else CLIENT_CLOSED
        content_type = _content_type(self.headers)
        return make(  # in the order of http_records' parameters
            self.method,
            protocol,
            uri,
            host,
            referer,
            useragent,
            xff,
            authuser,
            b"" if content_type is None else _raw(content_type),
            self.req_bytes,
            self.resp_bytes,
            min((self.end_ns - self.start_ns) // 1000, MAX_US),
            code,
            local,
            remote,
            self.route,
            self.service if self.route else None,
        )


# (what a request kept, its method, its content type) -> its http_request record up to
# the numbers (_Transaction.encode).
_HEADS: dict[tuple[Any, ...], bytes] = {}


def _http_request_head(kept: tuple[Any, ...], method: str, content_type: str | None) -> bytes:
    protocol, *strings = _convert(kept)
    mime = b"" if content_type is None else _raw(content_type)
    return http_request_head(METHODS.get(method, OTHER_METHOD)[0], protocol, (*strings, mime))


def _content_type(headers: Headers) -> str | None:
    """The response's Content-Type header value, None without one."""
    for name, value in headers:
        if name == "Content-Type" or name.lower() == "content-type":  # most say it so
            return value
    return None


# What requests kept of their environ (and the settings) -> the protocol number and the
# strings made of it: a service sees the same requests over and over, and the conversions
# (the URI's redaction above all) cost microseconds.
_REQUESTS: dict[tuple[Any, ...], tuple[Any, ...]] = {}


def _request_strings(kept: tuple[Any, ...]) -> tuple[Any, ...]:
    """(protocol, uri, host, referer, useragent, xff, authuser) of ``kept``."""
    try:
        found = _REQUESTS.get(kept)
    except TypeError:  # a server's odd environ value: no memo
        return _convert(kept)
    if found is None:
        size = sum(len(value) for value in kept if type(value) is str)
        found = remember(_REQUESTS, kept, _convert(kept), size)
    return found


def _convert(kept: tuple[Any, ...]) -> tuple[Any, ...]:
    (
        raw_uri,
        request_uri,
        script,
        path_info,
        query,
        host,
        referer,
        useragent,
        xff,
        user,
        version,
        werkzeug,
        authuser,
        mode,
    ) = kept
    version = version or ""
    return (
        PROTOCOLS.get(version) or protocol_number(version),
        _uri(raw_uri or request_uri, werkzeug, script, path_info, query, mode),
        _raw(host) if host else b"",
        _raw(referer) if referer else b"",
        _raw(useragent) if useragent else b"",
        _raw(xff) if xff else b"",
        _raw(user) if authuser and user else b"",
    )


def _in_request(chunks: Iterator[bytes], txn: _Transaction) -> Iterator[bytes]:
    """``chunks``, each made with the request as the current one: a streamed body's
    decorated calls (a generator the server iterates after the app returned) name it as
    their parent context, as the app's own calls do."""
    counted = txn.method != "HEAD"
    while True:
        token = current_request.set(txn)
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        finally:
            current_request.reset(token)
        if counted:
            txn.resp_bytes += len(chunk)
        yield chunk


class _Body:
    """A sampled response's iterable (Werkzeug's ClosingIterator idea): counts the bytes
    the server takes and ends the transaction at ``close()``, which it always forwards.

    The server iterates a generator (``__iter__``), not a ``__next__`` of ours: a
    generator's end reaches the server's loop with no StopIteration raised through a
    Python frame, which cost ~1 us per sampled response (a third of the request thread's
    added cost)."""

    __slots__ = ("_iter", "_result", "_txn")

    def __init__(self, result: Iterable[bytes], txn: _Transaction) -> None:
        self._result = result
        self._txn = txn
        try:
            self._iter = iter(result)
        except BaseException:
            try:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            finally:
                txn.finish(failed=True)
            raise

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks(self._iter, self._txn)

    @staticmethod
    def _chunks(chunks: Iterator[bytes], txn: _Transaction) -> Iterator[bytes]:
        try:
            if ParentContexts.wanted:  # decorated calls made while the body is produced
                yield from _in_request(chunks, txn)
                return
            if txn.method == "HEAD":
                yield from chunks
                return
            for chunk in chunks:
                txn.resp_bytes += len(chunk)
                yield chunk
        except GeneratorExit:  # a server that stopped early let go of it: not a failure
            raise
        except BaseException:
            txn.failed = True
            raise

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._txn.finish()


class _SizedBody(_Body):
    """For results with a length: servers may use ``len()`` to set Content-Length."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._result)  # type: ignore[arg-type]


class _ListBody(_SizedBody):
    """A list or tuple result: the server iterates the result itself (no Python frame per
    chunk, no generator: ~0.5 us a sampled response), and its bytes are summed at
    ``close()`` -- a list holds them all (a server that stops early has taken fewer; as
    with any body, what it took is not what reached the client)."""

    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        txn = self._txn
        try:
            if txn.method != "HEAD":
                txn.resp_bytes += sum(map(len, self._result))
        except TypeError:  # not bytes (PEP 3333 asks for bytes): what len() cannot tell
            log.debug("sflow_app: a response chunk without a length", exc_info=True)
        finally:
            txn.finish()


class _Input:
    """``wsgi.input`` of a sampled request without Content-Length: counts what is read."""

    __slots__ = ("_lines", "_stream", "_txn")

    def __init__(self, stream: Any, txn: _Transaction) -> None:
        self._stream = stream
        self._txn = txn
        self._lines: Iterator[bytes] | None = None

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self._txn.req_bytes += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self._txn.req_bytes += len(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args)
        self._txn.req_bytes += sum(map(len, lines))
        return lines

    def __iter__(self) -> _Input:
        self._lines = iter(self._stream)  # what the stream itself refuses, refused alike
        return self

    def __next__(self) -> bytes:
        if self._lines is None:
            self._lines = iter(self._stream)
        line: bytes = next(self._lines)
        self._txn.req_bytes += len(line)
        return line

    # Special methods are looked up on the type, never through __getattr__: the stream's
    # own protocol, handed through (``with environ["wsgi.input"] as f``).
    def __enter__(self) -> _Input:
        self._stream.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._stream.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# -- sampled-path helpers (pure over the environ, except the socket look-ups) ----------


def _raw(value: Any) -> bytes:
    """PEP 3333 environ strings carry the wire bytes as latin-1 code points."""
    if type(value) is str:
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes):
        return value
    text = str(value)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


# Status lines seen -> their codes (remembered: a service answers with a few).
_CODES: dict[str, int] = {}


def _status_code(status: str) -> int:
    try:
        code = int(status.split(None, 1)[0])
    except (ValueError, IndexError, AttributeError):
        return 0
    if type(status) is str:
        remember(_CODES, status, code, len(status))
    return code


def _uri(
    raw: Any, werkzeug: bool, script: Any, path_info: Any, query_string: Any, mode: str
) -> bytes:
    """The request-target as received (RAW_URI or REQUEST_URI, else rebuilt from the
    environ's parts), with the ``query`` option applied."""
    if raw:
        target = _raw(raw)
        if werkzeug:
            target = _werkzeug_raw(target)
        path, _, query = target.partition(b"?")
    else:
        path = quote(_raw((script or "") + (path_info or "")), safe=PATH_SAFE).encode("ascii")
        query = _raw(query_string) if query_string else b""
    return build_uri(path, query, mode)


def _werkzeug_raw(target: bytes) -> bytes:
    # Werkzeug's server decodes the request line as latin-1, then encodes it as UTF-8
    # before the PEP 3333 latin-1 step: undo that extra UTF-8 layer.
    try:
        return target.decode("utf-8").encode("latin-1")
    except UnicodeError:
        return target


def _file_size(result: Any, headers: Headers) -> int:
    """Bytes a file_wrapper response sends: Content-Length, else what is left of the file."""
    for name, value in headers:
        if name.lower() == "content-length" and value.strip().isdigit():
            return int(value)
    filelike = getattr(result, "filelike", result)  # gunicorn/wsgiref keep the file there
    try:
        fd = filelike.fileno()
        return max(0, os.fstat(fd).st_size - os.lseek(fd, 0, os.SEEK_CUR))
    except Exception:
        pass
    try:
        here = filelike.tell()
        end = filelike.seek(0, os.SEEK_END)
        filelike.seek(here)
        return max(0, int(end) - int(here))
    except Exception:
        return 0

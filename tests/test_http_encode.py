"""The exporter encodes a sampled HTTP request straight from what the request kept
(``encode_http``, memoised parts); those bytes must be the records' own encoding, byte for
byte, whatever the values -- and on a second sight of the same values (the memos)."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from apps.asgi_harness import Peer, call, http_scope, respond
from apps.harness import flush, http_samples, record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from sflow_app import asgi, wsgi
from sflow_app._agent import AGENT
from sflow_app._encode import encode_records
from sflow_app._http import METHODS, encode_http, http_records
from sflow_app._memo import KEY_MAX, MEMO_MAX, remember
from sflow_app.records import HttpRequest

# Values a server or client may send: empty, short, past the field limits, not ASCII,
# not UTF-8 (bytes), lone surrogates (str).
TEXT = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    st.text(st.characters(codec="utf-8"), max_size=40).map(lambda s: s + "\udcff"),
)
ADDRESS = st.tuples(
    st.sampled_from(["127.0.0.1", "::1", "::ffff:127.0.0.1", "fe80::1%lo", "not an ip", ""]),
    st.integers(-1, 70_000),
)
NUMBER = st.integers(-1, 2**65)
FIELDS = st.fixed_dictionaries(
    {
        "method": st.sampled_from([*METHODS, "PATCH", ""]),
        "protocol": st.one_of(st.sampled_from([1000, 1001, 2000]), NUMBER),
        "uri": TEXT,
    },
    optional={
        "host": TEXT,
        "referer": TEXT,
        "useragent": TEXT,
        "xff": TEXT,
        "authuser": TEXT,
        "mime_type": TEXT,
        "req_bytes": NUMBER,
        "resp_bytes": NUMBER,
        "duration_us": NUMBER,
        "status": NUMBER,
        "local": st.none() | ADDRESS,
        "remote": st.none() | ADDRESS,
        "route": st.none() | st.text(max_size=80),
        "application": st.none() | st.text(max_size=20),
    },
)


def recorded(records: tuple) -> tuple[bytes, int]:
    return encode_records(records), len(records)


@settings(max_examples=400, deadline=None)
@given(FIELDS)
def test_encode_http_is_the_records_encoding(fields):
    expected = recorded(http_records(**fields))
    assert encode_http(**fields) == expected
    assert encode_http(**fields) == expected  # the memoised parts


def test_memo_is_bounded_by_entries_and_key_size():
    memo: dict[str, int] = {}
    for i in range(MEMO_MAX + 10):
        assert remember(memo, str(i), i, 1) == i
    assert len(memo) == 10  # emptied when full, then refilled
    assert remember(memo, "long", 1, KEY_MAX + 1) == 1 and "long" not in memo


def test_a_long_request_head_is_not_memoised():
    from sflow_app import _encode

    _encode._HTTP_HEADS.clear()
    encode_http(method="GET", protocol=1001, uri=b"/" + b"u" * KEY_MAX)
    assert not _encode._HTTP_HEADS
    encode_http(method="GET", protocol=1001, uri=b"/short")
    assert len(_encode._HTTP_HEADS) == 1


# Environ values as PEP 3333 gives them: latin-1 code points.
LATIN1 = st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=300)
HEADERS = st.dictionaries(
    st.sampled_from(["Host", "Referer", "User-Agent", "X-Forwarded-For", "Authorization"]),
    LATIN1,
)


def serve_one(mw, environ) -> None:
    result = mw(environ, lambda *args: None)
    b"".join(result)
    result.close()  # the request ends here


def respond_wsgi(status: str, content_type: str, route: str | None = None):
    def app(environ, start_response):
        if route is not None:
            wsgi.set_route(environ, route)
        start_response(status, [("Content-Type", content_type)])
        return [b"hello"]

    return app


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=LATIN1,
    query=LATIN1,
    headers=HEADERS,
    raw=st.booleans(),
    remote_user=st.none() | LATIN1,
    status=st.sampled_from(["200 OK", "404 Not Found", "999 Odd", "bad"]),
    content_type=LATIN1,
    query_mode=st.sampled_from(["sensitive", "keep", "redact", "drop"]),
    route=st.none() | LATIN1,
    wsgiref=st.booleans(),
)
def test_wsgi_sample_encodes_as_its_records(
    live, path, query, headers, raw, remote_user, status, content_type, query_mode, route, wsgiref
):
    live(sampling=1)
    AGENT.configure(ds_index=8000, authuser=True)
    environ = EnvironBuilder(path="/" + path.lstrip("/"), headers=headers).get_environ()
    environ["QUERY_STRING"] = query
    environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = "::1", "50123"
    if raw:
        environ["RAW_URI"] = environ["PATH_INFO"] + ("?" + query if query else "")
    if remote_user is not None:
        environ["REMOTE_USER"] = remote_user
    if wsgiref:  # the local address from SERVER_PORT: an extended_socket record too
        environ["SERVER_SOFTWARE"] = "WSGIServer/0.2"
    mw = wsgi.SFlowMiddleware(respond_wsgi(status, content_type, route), query=query_mode)
    serve_one(mw, environ)
    [(_source, _n, _rate, txn)] = AGENT.runner.drain()
    expected = recorded(txn.build())
    assert txn.encode() == expected
    assert txn.encode() == expected


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.text(max_size=200),
    raw_path=st.none() | st.binary(max_size=300),
    query=st.binary(max_size=300),
    headers=st.lists(
        st.tuples(
            st.sampled_from(
                [b"host", b"referer", b"user-agent", b"x-forwarded-for", b"authorization"]
            ),
            st.binary(max_size=200),
        ),
        max_size=6,
    ),
    status=st.sampled_from([200, 404, 99, 600]),
    content_type=st.binary(max_size=100),
    version=st.sampled_from(["1.0", "1.1", "2", "3", "9.9"]),
    method=st.sampled_from(["GET", "POST", "PATCH", ""]),
    length=st.none() | st.sampled_from([b"7", b" 12 ", b"x", b"99999999999999999999999"]),
    authuser=st.booleans(),
    user=st.none() | st.text(max_size=20),
    query_mode=st.sampled_from(["sensitive", "keep", "redact", "drop"]),
    route=st.none() | st.text(max_size=40),
)
def test_asgi_sample_encodes_as_its_records(
    live,
    path,
    raw_path,
    query,
    headers,
    status,
    content_type,
    version,
    method,
    length,
    authuser,
    user,
    query_mode,
    route,
):
    live(sampling=1)
    AGENT.configure(ds_index=8000, authuser=authuser)
    if length is not None:
        headers = [*headers, (b"content-length", length)]
    scope = http_scope(method, "/" + path, query, headers, raw_path=raw_path, http_version=version)
    if user is not None:
        scope["user"] = user
    app = respond(status, b"ok", content_type)
    if route is not None:
        scope["route"] = type("Route", (), {"path_format": route})()
    mw = asgi.SFlowMiddleware(app, query=query_mode)
    call(mw, scope, Peer())
    [(_source, _n, _rate, sample)] = AGENT.runner.drain()
    expected = recorded(sample.build())
    assert sample.encode() == expected
    assert sample.encode() == expected


def test_what_is_remembered_of_an_asgi_request_holds_no_credential(live, collector):
    live(sampling=1)
    AGENT.configure(ds_index=8000, authuser=True)
    basic = b"Basic " + base64.b64encode(b"alice:s3cret-password")
    mw = asgi.SFlowMiddleware(respond(200, b"ok"))
    for authorization in (basic, b"Bearer s3cret-token", None):
        headers = [(b"authorization", authorization)] if authorization else []
        call(mw, http_scope("GET", "/a", b"", headers), Peer())
    flush(collector)
    users = [record(s, HttpRequest).authuser for s in http_samples(collector)]
    assert users == ["alice", "", ""]
    assert asgi._HEADS and "s3cret" not in repr(asgi._HEADS)


def test_a_sample_too_long_for_the_datagram_is_fitted_not_dropped(live, collector):
    # The exporter's straight encoding gives way to fitting when a sample is too long.
    live(sampling=1)
    AGENT.configure(ds_index=8000, datagram=600)
    mw = wsgi.SFlowMiddleware(respond_wsgi("200 OK", "text/plain"))
    environ = EnvironBuilder(
        path="/" + "u" * 300, headers=[("User-Agent", "a" * 200), ("Referer", "r" * 300)]
    ).get_environ()
    serve_one(mw, environ)
    flush(collector)
    [sample] = http_samples(collector)
    [request] = [r for r in sample.records if isinstance(r, HttpRequest)]
    assert request.useragent == "a" * 128 and str(request.uri).startswith("/uuu")
    assert len(request.uri) < 255 and mw._source.drops == 0


def test_an_encoding_bug_costs_its_sample_and_the_next_one_carries_its_pool(
    live, collector, monkeypatch: pytest.MonkeyPatch
):
    live(sampling=1)
    AGENT.configure(ds_index=8000)
    mw = wsgi.SFlowMiddleware(respond_wsgi("200 OK", "text/plain"))

    def broken(*values):
        raise RuntimeError("an encoder bug")

    with monkeypatch.context() as patch:
        patch.setattr(wsgi, "encode_http", broken)
        patch.setattr(wsgi, "encode_http_rest", broken)
        patch.setattr(wsgi, "_content_type", broken)  # on every encoding path
        serve_one(mw, EnvironBuilder(path="/a").get_environ())
        flush(collector)
    serve_one(mw, EnvironBuilder(path="/b").get_environ())
    flush(collector)
    [sample] = http_samples(collector)
    assert mw._source.drops == 1
    assert (sample.sample_pool, sample.drops) == (2, 1)  # both candidates, one dropped


def test_what_is_remembered_of_a_request_holds_no_credential(live, collector):
    # The exporter remembers what it made of the environ values requests repeat; an
    # Authorization header (a password, a token) is never among them.
    live(sampling=1)
    AGENT.configure(ds_index=8000, authuser=True)
    mw = wsgi.SFlowMiddleware(respond_wsgi("200 OK", "text/plain"))
    basic = "Basic " + base64.b64encode(b"alice:s3cret-password").decode()
    for authorization in (basic, "Bearer s3cret-token"):
        serve_one(
            mw, EnvironBuilder(path="/a", headers=[("Authorization", authorization)]).get_environ()
        )
    flush(collector)
    users = [record(s, HttpRequest).authuser for s in http_samples(collector)]
    assert users == ["alice", ""]
    assert wsgi._REQUESTS and "s3cret" not in repr(wsgi._REQUESTS)
    serve_one(mw, EnvironBuilder(path="/a").get_environ())  # the memo of encode()'s heads
    flush(collector)
    assert wsgi._HEADS and "s3cret" not in repr(wsgi._HEADS)


def test_str_and_bytes_values_under_bytes_warnings():
    """The memo takes str and bytes keys as they come, except under -b/-bb, where a str
    key meeting an equal bytes key would warn (-bb: raise): there it takes bytes only."""
    script = (
        "from sflow_app._http import encode_http\n"
        "a = encode_http('GET', 1001, b'/x', host=b'h')\n"
        "b = encode_http('GET', 1001, '/x', host='h')\n"
        "assert a == b, (a, b)\n"
    )
    for flag in ([], ["-bb"]):
        subprocess.run([sys.executable, *flag, "-c", script], check=True, timeout=60)

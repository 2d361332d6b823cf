"""@transaction: counting, sampling, statuses, sync/async/methods/generators, metadata."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import gc
import inspect
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from apps.harness import flush, record, reset_agent

from sflow_app._agent import AGENT
from sflow_app._http import current_request
from sflow_app._identity import LOCAL_FIRST, LOCAL_LAST
from sflow_app._transaction import transaction
from sflow_app.records import AppOperation, AppOperations, AppParentContext, HttpRequest
from sflow_app.wsgi import SFlowMiddleware

SUCCESS, OTHER, TIMEOUT, INTERNAL_ERROR = 0, 1, 2, 3


def operations(collector) -> list[AppOperation]:
    return [record(s, AppOperation) for s in collector.flow_samples()]


def app_counters(collector, application: str) -> AppOperations:
    found = [r for r in collector.records(AppOperations) if r.application == application]
    assert found, f"no app_operations for {application!r}"
    return found[-1]


def test_sync_function_counted_and_sampled(live, collector):
    live(sampling=1)

    @transaction
    def add(a, b=1):
        time.sleep(0.02)
        return a + b

    assert add(1, b=2) == 3
    assert add(5) == 6
    flush(collector)
    ops = operations(collector)
    assert len(ops) == 2
    op = ops[0]
    assert op.application == "tests"
    assert op.operation == "test_sync_function_counted_and_sampled.<locals>.add"[:32]
    assert (op.status, op.status_descr, op.req_bytes, op.resp_bytes) == (SUCCESS, "", 0, 0)
    assert 20_000 <= op.uS < 2_000_000
    sample = collector.flow_samples()[0]
    assert (sample.input_value, sample.output_value) == (0, 0x3FFFFFFF)  # server side
    assert sample.ds_class == 3 and LOCAL_FIRST <= sample.ds_index <= LOCAL_LAST
    assert record(sample, AppParentContext) is None  # not inside an HTTP request
    counters = app_counters(collector, "tests")
    assert (counters.success, counters.internal_error) == (2, 0)
    cs = [s for s in collector.counter_samples() if record(s, AppOperations)][-1]
    assert cs.ds_index == sample.ds_index


def test_named_operation_and_application_sampling(live, collector):
    """sampling.app.<application> decides; other applications follow ``sampling``."""
    live(sampling=0, extra="sampling.app.shop=1\n")

    @transaction("checkout", application="shop")
    def checkout():
        return "ok"

    @transaction()
    def browse():
        return "ok"

    for _ in range(3):
        checkout()
        browse()
    flush(collector)
    ops = operations(collector)
    assert [(o.application, o.operation) for o in ops] == [("shop", "checkout")] * 3
    assert all(s.sampling_rate == 1 for s in collector.flow_samples())
    assert app_counters(collector, "shop").success == 3
    assert app_counters(collector, "tests").success == 3  # counted, never sampled
    status = AGENT.status()["data_sources"]
    assert status["app:tests"]["sampling_rate"] == 0


@pytest.mark.parametrize("sampling", [0, 1])
def test_exceptions_propagate_unchanged_and_map_to_statuses(live, collector, sampling):
    live(sampling=sampling)
    errors = [ValueError("bad"), TimeoutError("slow"), KeyboardInterrupt(), KeyError("k")]

    @transaction("risky")
    def risky(i):
        raise errors[i]

    for i, error in enumerate(errors):
        with pytest.raises(BaseException) as caught:
            risky(i)
        assert caught.value is error
    flush(collector)
    counters = app_counters(collector, "tests")
    assert (counters.success, counters.internal_error, counters.timeout, counters.other) == (
        0,
        2,
        1,
        1,
    )
    if sampling:
        assert [(o.status, o.status_descr) for o in operations(collector)] == [
            (INTERNAL_ERROR, "ValueError"),
            (TIMEOUT, "TimeoutError"),
            (OTHER, "KeyboardInterrupt"),
            (INTERNAL_ERROR, "KeyError"),
        ]
    else:
        assert operations(collector) == []


def test_exception_groups_take_the_status_their_exceptions_share(live, collector):
    """asyncio.TaskGroup raises a group: one whose tasks timed out is a timeout, a mix
    is an internal error (as any Exception), a group of KeyboardInterrupt and SystemExit
    is other."""
    live(sampling=1)

    @transaction("gather")
    async def gather(*children):
        async with asyncio.TaskGroup() as group:
            for child in children:
                group.create_task(child())

    async def late():
        async with asyncio.timeout(0):
            await asyncio.sleep(1)

    async def broken():
        raise ValueError("bad")

    async def main():
        for children in ((late,), (late, late), (late, broken)):
            with pytest.raises(ExceptionGroup):
                await gather(*children)

    asyncio.run(main())

    @transaction("gather")
    def stopped():
        raise BaseExceptionGroup("stopped", [KeyboardInterrupt(), SystemExit()])

    with pytest.raises(BaseExceptionGroup):
        stopped()
    flush(collector)
    assert [(o.status, o.status_descr) for o in operations(collector)] == [
        (TIMEOUT, "ExceptionGroup"),
        (TIMEOUT, "ExceptionGroup"),
        (INTERNAL_ERROR, "ExceptionGroup"),
        (OTHER, "BaseExceptionGroup"),
    ]


@pytest.mark.parametrize("sampling", [0, 1])
def test_async_functions(live, collector, sampling):
    live(sampling=sampling)

    @transaction("fetch")
    async def fetch(delay, fail=None):
        await asyncio.sleep(delay)
        if fail is not None:
            raise fail
        return delay

    assert inspect.iscoroutinefunction(fetch)

    async def main():
        assert await fetch(0.03) == 0.03
        with pytest.raises(asyncio.TimeoutError):
            await fetch(0, TimeoutError())
        with pytest.raises(RuntimeError):
            await fetch(0, RuntimeError())
        task = asyncio.ensure_future(fetch(10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    flush(collector)
    counters = app_counters(collector, "tests")
    assert (counters.success, counters.timeout, counters.internal_error, counters.other) == (
        1,
        1,
        1,
        1,
    )
    if sampling:
        ops = operations(collector)
        assert [(o.status, o.status_descr) for o in ops] == [
            (SUCCESS, ""),
            (TIMEOUT, "TimeoutError"),
            (INTERNAL_ERROR, "RuntimeError"),
            (OTHER, "CancelledError"),
        ]
        assert ops[0].uS >= 30_000  # timed to the coroutine's end
        assert ops[3].uS >= 10_000


def test_coroutines_carry_the_functions_names(live, collector):
    """A decorated coroutine function makes coroutines named as the function's are: task
    reprs and "never awaited" warnings named our wrapper (_Operation.call_async)."""
    live(sampling=1)

    class Shop:
        @transaction("pay")
        async def pay(self, amount):
            return amount

    coro: Any = Shop().pay(3)
    assert (coro.__name__, coro.__qualname__) == ("pay", Shop.pay.__qualname__)

    async def main():
        task = asyncio.ensure_future(Shop().pay(4))
        assert f"coro=<{Shop.pay.__qualname__}()" in repr(task)
        return await task

    assert asyncio.run(main()) == 4
    with pytest.warns(RuntimeWarning, match=f"coroutine '{Shop.pay.__qualname__}' was never"):
        del coro
        gc.collect()


def test_methods_classmethods_staticmethods(live, collector):
    live(sampling=1)

    class Cart:
        def __init__(self):
            self.items = []

        @transaction
        def add(self, item, qty=1):
            """Add an item."""
            self.items.append((item, qty))
            return len(self.items)

        @transaction
        @classmethod
        def empty(cls):
            return cls()

        @transaction("tax")
        @staticmethod
        def tax(amount):
            return amount * 0.2

        @transaction
        async def pay(self):
            return "paid"

    cart = Cart.empty()
    assert isinstance(cart, Cart)
    assert cart.add("apple", qty=3) == 1
    assert Cart.add(cart, "pear") == 2  # unbound call through the class
    assert Cart.tax(10) == 2.0 and cart.tax(5) == 1.0
    assert asyncio.run(cart.pay()) == "paid"
    assert cart.items == [("apple", 3), ("pear", 1)]
    # Introspection survives.
    assert Cart.add.__name__ == "add" and Cart.add.__doc__ == "Add an item."
    assert str(inspect.signature(Cart.add)) == "(self, item, qty=1)"
    assert str(inspect.signature(cart.add)) == "(item, qty=1)"
    assert inspect.iscoroutinefunction(Cart.pay)
    flush(collector)
    names = [o.operation for o in operations(collector)]
    prefix = "test_methods_classmethods_staticmethods.<locals>."
    assert names == [
        (prefix + "Cart.empty")[:32],
        (prefix + "Cart.add")[:32],
        (prefix + "Cart.add")[:32],
        "tax",
        "tax",
        (prefix + "Cart.pay")[:32],
    ]
    assert app_counters(collector, "tests").success == 6


def test_generator_functions_timed_until_they_return(live, collector):
    live(sampling=1)

    @transaction("gen")
    def numbers(n):
        for i in range(n):
            time.sleep(0.04)
            yield i

    @transaction("agen")
    async def anumbers(n):
        for i in range(n):
            await asyncio.sleep(0.05)
            yield i

    assert inspect.isgeneratorfunction(numbers)
    assert inspect.isasyncgenfunction(anumbers)
    calls = []  # each call's wall time: the operation is timed within it
    start = time.perf_counter_ns()
    gen = numbers(5)
    calls.append(time.perf_counter_ns() - start)
    assert inspect.isgenerator(gen)
    assert list(gen) == [0, 1, 2, 3, 4]

    async def consume():
        start = time.perf_counter_ns()
        agen = anumbers(3)
        calls.append(time.perf_counter_ns() - start)
        return [i async for i in agen]

    assert asyncio.run(consume()) == [0, 1, 2]
    flush(collector)
    ops = operations(collector)
    assert [(o.operation, o.status) for o in ops] == [("gen", SUCCESS), ("agen", SUCCESS)]
    # Timed from the call to its return, by construction within the call's own wall time
    # (1 us of rounding); timing the iteration too would add 5 x 40 ms and 3 x 50 ms.
    assert [o.uS <= ns // 1000 + 1 for o, ns in zip(ops, calls, strict=True)] == [True, True], (
        [o.uS for o in ops],
        calls,
    )


@pytest.mark.parametrize("sampling", [0, 1])
def test_recursion_limit_never_replaces_the_apps_exception(live, collector, sampling):
    """A recursion that reaches the limit gets its own RecursionError, not one of ours
    raised while handling it (which a traceback shows as "During handling of the above
    exception..."), nor one after the function returned; every call is counted."""
    live(sampling=sampling)
    AGENT.configure(max_samples=0)  # 1-in-1 means every call, however fast
    reached = [False]

    @transaction("depth")
    def depth(n):
        if n == 0:
            reached[0] = True  # no call: the innermost frame may sit at the limit
            return 0
        return depth(n - 1) + 1

    def nest(k, n):  # k frames more: the limit falls at each point of the wrapper
        return depth(n) if k == 0 else nest(k - 1, n)

    def fails(k, n):
        try:
            nest(k, n)
        except RecursionError:
            return True
        return False

    low = 0
    while not fails(0, low + 20):
        low += 20
    for n in range(low, low + 30):
        for k in range(6):
            reached[0] = False
            try:
                assert nest(k, n) == n
            except RecursionError as exc:
                assert not reached[0], (n, k, "raised after the function returned")
                assert exc.__context__ is None, (n, k, "raised while handling the app's")
    source = AGENT.status()["data_sources"]["app:tests"]
    assert sum(source["counters"].values()) == source["sample_pool"]
    assert source["counters"]["internal_error"] > 0


def test_parent_context_of_a_sampled_http_request(live, collector):
    live(sampling=1)

    @transaction("child")
    def child():
        return 1

    class Request:  # what the WSGI and ASGI middlewares set (_http.Request)
        service, method = "shop", "POST"

        def path(self):
            return "/orders/<id>"

    token = current_request.set(Request())
    try:
        child()
    finally:
        current_request.reset(token)
    child()
    flush(collector)
    first, second = collector.flow_samples()
    assert record(first, AppParentContext) == AppParentContext(
        application="shop", operation="/orders/<id>", attributes="method=POST"
    )
    assert record(second, AppParentContext) is None


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_parent_context_of_calls_made_while_a_body_streams(live, collector, method):
    """A streamed WSGI body is produced after the app returned, while the server iterates
    it: its decorated calls name the request as their parent context too, and the
    response's bytes are counted as before (none for HEAD)."""
    live(sampling=1)

    @transaction("row")
    def row(i):
        return f"{i}\n".encode()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/csv")])
        row(0)  # in the app's own call

        def rows():
            for i in range(1, 3):
                yield row(i)  # after the app returned

        return rows()

    wrapped = SFlowMiddleware(app)
    environ = {"REQUEST_METHOD": method, "PATH_INFO": "/export", "SERVER_PORT": "8080"}

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    result: Any = wrapped(environ, start_response)
    assert b"".join(result) == b"1\n2\n"
    result.close()
    flush(collector)
    parents = [record(s, AppParentContext) for s in collector.flow_samples()]
    parents = [p for p in parents if p is not None]
    assert parents == 3 * [
        AppParentContext(application="tests", operation="/export", attributes=f"method={method}")
    ]
    [http] = [r for s in collector.flow_samples() for r in s.records if isinstance(r, HttpRequest)]
    assert http.resp_bytes == (4 if method == "GET" else 0)


def test_no_parent_context_once_the_wsgi_request_ended(live, collector):
    """A thread given the request's context (copy_context) that calls on after the
    request ended names no parent: the request is over (as for ASGI's tasks)."""
    live(sampling=1)

    @transaction("later")
    def later():
        return 1

    kept = []

    def app(environ, start_response):
        start_response("200 OK", [])
        kept.append(contextvars.copy_context())
        return [b"x"]

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    result: Any = SFlowMiddleware(app)({"REQUEST_METHOD": "GET", "PATH_INFO": "/a"}, start_response)
    list(result)
    result.close()
    kept[0].run(later)
    flush(collector)
    [sample] = [s for s in collector.flow_samples() if record(s, AppOperation) is not None]
    assert record(sample, AppParentContext) is None


def test_default_application_resolved_at_first_call(auto_file, monkeypatch, collector):
    """The configuration (SFLOW_APP_NAME) is read before the name is chosen, even when
    the exporter thread has not run yet."""
    monkeypatch.setenv("SFLOW_APP_NAME", "early-bird")
    reset_agent(autostart=False)
    auto_file(sampling=1)

    try:

        @transaction
        def first():
            return 1

        first()
        flush(collector)
        assert operations(collector)[0].application == "early-bird"
    finally:
        reset_agent()


def test_default_application_follows_a_later_configure_service_name(live, collector):
    """configure(service_name=...) after the first call names the calls from then on;
    a function given its application keeps it."""
    live(sampling=1)

    @transaction
    def default():
        return 1

    @transaction(application="payments")
    def named():
        return 2

    default(), named()
    AGENT.configure(service_name="renamed")
    default(), named()
    flush(collector)
    assert [o.application for o in operations(collector)] == [
        "tests",
        "payments",
        "renamed",
        "payments",
    ]
    assert app_counters(collector, "renamed").success == 1


def test_decorator_arguments_checked():
    with pytest.raises(TypeError):
        transaction(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="put @property above it"):
        transaction(property(lambda self: 1))  # type: ignore[call-overload]


def test_application_of_a_function_decorated_by_a_call(live, collector):
    """``transaction(func, application=...)`` is checked (a number was taken, and sent
    as an empty name) and typed; an empty application is the default one, as an empty
    operation is (it was sent as an empty name)."""
    live(sampling=1)

    def charge(amount: int) -> int:
        return amount

    with pytest.raises(TypeError, match="application must be a string"):
        transaction(charge, application=7)  # type: ignore[call-overload]
    by_call = transaction(charge, application="payments")
    assert by_call(3) == 3
    transaction("refund", application="")(charge)(1)
    flush(collector)
    assert [(o.application, o.operation) for o in operations(collector)] == [
        ("payments", charge.__qualname__[:32]),
        ("tests", "refund"),
    ]
    assert set(AGENT.status()["data_sources"]) == {"app:payments", "app:tests"}
    with pytest.raises(TypeError):
        transaction("x", application=7)  # type: ignore[call-overload]


def test_wraps_and_wrapped_preserved():
    def original(x: int) -> int:
        """Doc."""
        return x

    decorated = transaction(original)
    assert decorated.__wrapped__ is original  # type: ignore[attr-defined]
    assert functools.WRAPPER_ASSIGNMENTS
    assert (decorated.__name__, decorated.__qualname__, decorated.__doc__) == (
        "original",
        original.__qualname__,
        "Doc.",
    )
    assert inspect.signature(decorated) == inspect.signature(original)
    assert decorated.__annotations__ == original.__annotations__


def test_recording_failure_never_reaches_the_caller(live, collector, monkeypatch):
    live(sampling=1)

    @transaction("x")
    def fn():
        return "fine"

    source = AGENT.app_source("tests")

    def broken(*args, **kwargs):
        raise RuntimeError("queue bug")

    monkeypatch.setattr(source, "submit", broken)
    before = source.drops
    assert fn() == "fine"
    assert source.drops == before + 1


def test_requests_name_themselves_once_a_function_is_decorated(tmp_path):
    """A process with no @transaction function sets no context variable on a sampled
    request (nothing would read it); once one is decorated, every sampled request does."""
    script = """
from sflow_app import transaction
from sflow_app._agent import AGENT
from sflow_app._http import current_request
from sflow_app.testing import capture
from sflow_app.wsgi import SFlowMiddleware
from werkzeug.test import EnvironBuilder

seen = []

def app(environ, start_response):
    request = current_request.get()
    seen.append(None if request is None else (request.method, request.path()))
    start_response("200 OK", [])
    return [b"ok"]

def call():
    environ = EnvironBuilder(path="/orders/7", method="POST").get_environ()
    result = SFlowMiddleware(app)(environ, lambda status, headers, exc_info=None: None)
    list(result)
    result.close()

with capture():
    call()
    transaction(lambda: None)
    call()
assert seen == [None, ("POST", "/orders/7")], seen
"""
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "SFLOW_APP_DS_INDEX": "8000", "SFLOW_APP_STATE_DIR": str(tmp_path)},
    )


@transaction
def doubled(x: int) -> int:
    return 2 * x


class Adder:
    @transaction
    def plus(self, x: int) -> int:
        return x + 1

    @transaction
    @staticmethod
    def times(x: int, y: int) -> int:
        return x * y


def test_methods_taken_from_their_class_pickle() -> None:
    """A method or staticmethod taken from its class pickles as a plain function does
    (``pool.map(Cls.method, ...)``); ours raised AttributeError (no ``__self__``)."""
    import pickle
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    assert pickle.loads(pickle.dumps(Adder.plus))(Adder(), 1) == 2
    assert pickle.loads(pickle.dumps(Adder.times))(2, 3) == 6
    assert pickle.loads(pickle.dumps(Adder().times))(4, 5) == 20
    with ProcessPoolExecutor(1, mp_context=get_context("fork")) as pool:
        assert list(pool.map(Adder.times, [1, 2], [3, 3])) == [3, 6]

    class Local:
        @transaction
        def method(self) -> None: ...

    with pytest.raises(pickle.PicklingError):  # its class cannot be found again
        pickle.dumps(Local.method)


def test_bound_methods_copy_as_bound_methods_do() -> None:
    """copy and deepcopy of a decorated method, bound or taken from its class, work as
    for a plain one (wrapt's proxy raised NotImplementedError): deepcopy binds it to a
    deep copy of its instance."""
    import copy

    class Holder:
        def __init__(self) -> None:
            self.adder = Adder()
            self.callback = self.adder.plus

    holder = Holder()
    assert copy.copy(holder.callback)(1) == 2
    assert copy.copy(Adder.times)(2, 3) == 6 and copy.deepcopy(Adder.times)(2, 4) == 8
    twin = copy.deepcopy(holder)
    callback: Any = twin.callback
    assert callback(2) == 3
    assert callback.__self__ is twin.adder is not holder.adder


class Price:
    def __call__(self, amount: int) -> int:
        return amount


class Charge:
    async def __call__(self, amount: int) -> int:
        await asyncio.sleep(0)
        if amount < 0:
            raise ValueError(amount)
        return amount


def total(a: int, b: int) -> int:
    return a + b


def test_callable_objects_and_partials(live, collector) -> None:
    """Named after the code they run (the repr of an instance, with its address, named
    it: another operation in every process); an instance's ``async def __call__`` is
    timed and counted to the end of its coroutine (it was counted a success when the
    coroutine was made, its exceptions never)."""
    from asgiref.sync import sync_to_async

    live(sampling=1)
    price = transaction(Price())
    charge = transaction(Charge())
    part = transaction(functools.partial(total, 1))
    in_thread = transaction(sync_to_async(total))  # named as total, by update_wrapper
    assert price(2) == 2 and part(2) == 3
    assert asyncio.run(charge(5)) == 5
    with pytest.raises(ValueError):
        asyncio.run(charge(-1))
    with pytest.raises(TypeError):
        asyncio.run(in_thread(1, "x"))  # type: ignore[arg-type]
    flush(collector)
    assert [(o.operation, o.status, o.status_descr) for o in operations(collector)] == [
        ("Price.__call__", SUCCESS, ""),
        ("total", SUCCESS, ""),
        ("Charge.__call__", SUCCESS, ""),
        ("Charge.__call__", INTERNAL_ERROR, "ValueError"),
        ("total", INTERNAL_ERROR, "TypeError"),
    ]
    counters = app_counters(collector, "tests")
    assert (counters.success, counters.internal_error) == (3, 2)


def test_decorated_functions_pickle_and_copy_as_functions_do() -> None:
    """By reference, as a plain function: multiprocessing and concurrent.futures hand
    decorated functions (and bound methods) to workers; copy treats them as atoms."""
    import copy
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    assert pickle.loads(pickle.dumps(doubled)) is doubled
    assert pickle.loads(pickle.dumps(Adder().plus))(1) == 2
    assert copy.copy(doubled) is doubled and copy.deepcopy({"f": doubled})["f"] is doubled
    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=fork) as pool:
        assert list(pool.map(doubled, [1, 2, 3])) == [2, 4, 6]

"""``@transaction``: count and sample calls of any function as sFlow ``app_operation``.

::

    from sflow_app import transaction

    @transaction                                   # operation = "Cart.checkout"
    def checkout(self, ...): ...

    @transaction("charge", application="payments")
    async def charge(...): ...

Every call is counted in the ``app_operations`` counters of its application (data source
``3:<locally assigned index>``), by outcome:

- returned: SUCCESS;
- raised ``TimeoutError`` (``asyncio.TimeoutError`` and ``socket.timeout`` are the same
  class): TIMEOUT;
- raised any other ``Exception``: INTERNAL_ERROR;
- raised ``asyncio.CancelledError`` (or another ``BaseException``: ``KeyboardInterrupt``,
  ``SystemExit``): OTHER -- the call was abandoned from outside (a client that went away,
  shutdown, a caller's own timeout), so it neither succeeded nor failed by itself;
- raised an exception group (``asyncio.TaskGroup``'s): the status its exceptions share,
  else as any other exception (INTERNAL_ERROR, or OTHER for a ``BaseExceptionGroup``).

Exceptions always propagate unchanged. Calls are sampled 1-in-N by
``sampling.app.<application>`` (else ``sampling``) into server-side flow samples with one
``app_operation`` (duration, status, ``status_descr`` = the exception's class name) and,
when the call runs inside a sampled HTTP request, an ``app_parent_context`` naming that
request: the service name, the route template (or path) as operation, ``method=<M>`` as
attributes.

Defaults: operation = the function's ``__qualname__`` (of a partial: its function's; of
a callable object: its ``__call__``'s); application = the service name
(``SFLOW_APP_NAME``, default derived from the command line, see
``_identity.default_service_name``), resolved at the first call and again after
``configure(service_name=...)`` changed it. Names longer than the
spec's 32 bytes are cut by the encoder (``status_descr`` to 31, what sflowtool shows).

``async def`` functions are timed until their coroutine finishes. Called with wrong
arguments, one raises its TypeError when its coroutine is awaited (our coroutine calls
it), not at the call. A function that *returns* a generator (or an async generator) is
timed until it returns it, not until the generator is exhausted: the work done while
iterating is the caller's.

The decorator is ``wrapt``-based, so signatures, ``inspect``, ``functools.wraps``
metadata and the descriptor protocol (methods, ``classmethod``, ``staticmethod``) are
those of the decorated function.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable
from time import perf_counter_ns
from types import FunctionType, MethodType
from typing import Any, TypeVar, cast, overload

from ._agent import AGENT, ON_RENAME, ON_RESET
from ._http import ParentContexts, parent_context
from ._source import AppSource
from .records import AppOperation, AppParentContext, AppStatus

__all__ = ["transaction"]

log = logging.getLogger("sflow_app")

F = TypeVar("F", bound=Callable[..., Any])
MAX_US = 0xFFFFFFFF
MAX_GROUP = 64  # exceptions of a group looked at for its status

SUCCESS = int(AppStatus.SUCCESS)
OTHER = int(AppStatus.OTHER)
TIMEOUT = int(AppStatus.TIMEOUT)
INTERNAL_ERROR = int(AppStatus.INTERNAL_ERROR)


def status_of(exc: BaseException) -> int:
    """The app_operation status an exception maps to (see the module docstring)."""
    if isinstance(exc, BaseExceptionGroup):
        # asyncio.TaskGroup's: a group whose every task timed out is a timeout.
        found = {status_of(inner) for inner in exc.exceptions[:MAX_GROUP]}
        if len(found) == 1:
            return found.pop()
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, Exception):
        return INTERNAL_ERROR
    return OTHER  # asyncio.CancelledError, KeyboardInterrupt, SystemExit, ...


@overload
def transaction(func: F, /, *, application: str | None = None) -> F: ...
@overload
def transaction(
    operation: str | None = None, /, *, application: str | None = None
) -> Callable[[F], F]: ...


def transaction(target: Any = None, /, *, application: str | None = None) -> Any:
    """Count every call of the decorated function; sample 1-in-N of them.

    ``@transaction``, ``@transaction()``, ``@transaction("checkout")`` or
    ``@transaction("checkout", application="shop")``; ``transaction(func,
    application="shop")`` too. An empty name is the default one.
    """
    if application is not None and not isinstance(application, str):
        raise TypeError(f"application must be a string, not {type(application).__name__}")
    application = application or None
    if callable(target) or isinstance(target, classmethod | staticmethod):
        return _decorate(target, None, application)
    if isinstance(target, property):
        raise TypeError("@transaction decorates functions: put @property above it")
    if target is not None and not isinstance(target, str):
        raise TypeError(f"operation must be a string, not {type(target).__name__}")

    def decorator(func: F) -> F:
        return cast(F, _decorate(func, target, application))

    return decorator


def _decorate(func: Any, operation: str | None, application: str | None) -> Any:
    # Imported here, at decoration: wrapt pulls in asyncio, importlib.metadata, email and
    # zipfile (tens of ms), which ``import sflow_app`` should not cost a process that
    # never decorates anything.
    import inspect

    inner = getattr(func, "__func__", func)  # classmethod / staticmethod objects
    while isinstance(inner, functools.partial):
        inner = inner.func
    call = type(inner).__call__  # an object's may be async def
    # Named as the function, else as the object's __call__: never by a repr, whose
    # address differs in every process.
    named = inner if isinstance(getattr(inner, "__qualname__", None), str) else call
    name = operation or getattr(named, "__qualname__", None) or type(inner).__qualname__
    op = _Operation(name, application)
    wrapper = _wrapper_class()
    if inspect.iscoroutinefunction(inner) or inspect.iscoroutinefunction(call):
        return wrapper(func, MethodType(_named_like(_Operation.call_async, named), op))
    return wrapper(func, op.call)


def _named_like(function: Any, target: Any) -> Any:
    """``function`` under ``target``'s names: a coroutine takes the names of the function
    that made it, and shows them in a task's repr and in "coroutine ... was never
    awaited"; those of the app's function, as without us."""
    copy = FunctionType(function.__code__, function.__globals__, function.__name__)
    copy.__name__ = getattr(target, "__name__", function.__name__)
    copy.__qualname__ = getattr(target, "__qualname__", function.__qualname__)
    return copy


_WRAPPER: Any = None


def _wrapper_class() -> Any:
    """wrapt's FunctionWrapper, pickled and copied as a function is: by reference.

    A function pickles as its module and qualified name, looked up again where it is
    loaded (multiprocessing, concurrent.futures), and copies as itself; wrapt's proxies
    refuse both. Made at the first decoration (wrapt is imported then)."""
    global _WRAPPER
    if _WRAPPER is None:
        import wrapt

        class Bound(wrapt.BoundFunctionWrapper[Any, Any]):
            def __reduce_ex__(self, protocol: Any) -> Any:
                owner = getattr(self.__wrapped__, "__self__", None)  # instance or class
                if owner is None:  # a function or staticmethod taken from its class
                    owner = _defining_class(self)
                return getattr, (owner, self.__name__)

            def __copy__(self) -> Any:
                return getattr(*self.__reduce_ex__(4)[1])

            def __deepcopy__(self, memo: Any) -> Any:
                import copy

                # As a bound method's: bound to a deep copy of its instance.
                return getattr(*copy.deepcopy(self.__reduce_ex__(4)[1], memo))

        class Decorated(wrapt.FunctionWrapper[Any, Any]):
            __bound_function_wrapper__ = Bound

            def __reduce_ex__(self, protocol: Any) -> Any:
                return self.__qualname__  # a global: found again in its module

            def __copy__(self) -> Any:
                return self

            def __deepcopy__(self, memo: Any) -> Any:
                return self

        _WRAPPER = Decorated
    return _WRAPPER


def _defining_class(method: Any) -> Any:
    """The class a method was defined in, found by its qualified name as pickle finds a
    plain function (a class defined inside a function cannot be found)."""
    import pickle
    import sys

    *path, _ = method.__qualname__.split(".")
    owner: Any = sys.modules.get(method.__module__)
    try:
        for part in path:
            owner = getattr(owner, part)
    except AttributeError:
        owner = None
    if not isinstance(owner, type):
        raise pickle.PicklingError(
            f"Can't pickle {method.__qualname__}: its class is not found as "
            f"{method.__module__}.{'.'.join(path)}"
        )
    return owner


class _Operation:
    """One decorated function: its names and, from the first call on, its data source.

    Holds nothing about any one call.
    """

    __slots__ = ("__weakref__", "application", "name", "source")

    def __init__(self, name: str, application: str | None) -> None:
        ParentContexts.wanted = True  # sampled requests name themselves from now on
        self.name = name
        self.application = application
        self.source: AppSource | None = None
        _OPERATIONS.add(self)
        if application is None:
            # The default application name comes from the configuration: read it at
            # decoration (start-up), never on the first call's request thread.
            AGENT.ensure_loaded()

    def _resolve(self) -> AppSource:
        application = self.application
        if application is None:
            AGENT.ensure_loaded()  # read at decoration, unless reset() came since
            application = AGENT.service_name
        self.source = source = AGENT.app_source(application)
        return source

    def _decide(self, source: AppSource, n: int) -> int:
        """The sampler's decision: the N sampled at, or 0."""
        try:
            return source.sample(n)
        except Exception:
            log.debug("sflow_app: sampling decision failed", exc_info=True)
            return 0

    def call(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        source = self.source or self._resolve()
        n = next(source.sampler.pool_cell)
        if n >= source.sampler.next_at:
            try:
                rate = self._decide(source, n)
            except RecursionError:  # at the limit: the app's call below raises it, counted
                rate = 0
            if rate:
                start = perf_counter_ns()
                try:
                    result = wrapped(*args, **kwargs)
                except BaseException as exc:
                    try:
                        self._record(source, n, rate, start, exc)
                    except RecursionError:  # as below (_record had not counted it)
                        for _ in source.counters.cells[INTERNAL_ERROR]:
                            break
                    raise
                try:
                    self._record(source, n, rate, start, None)
                except RecursionError:  # the app's result goes back all the same
                    for _ in source.counters.cells[SUCCESS]:
                        break
                return result
        cells = source.counters.cells
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            # At the recursion limit any call raises: ours must not replace the app's
            # exception, so a RecursionError here is counted with no call.
            try:
                next(cells[status_of(exc)])
            except RecursionError:
                for _ in cells[INTERNAL_ERROR]:  # next() without a call
                    break
            raise
        next(cells[SUCCESS])
        return result

    async def call_async(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        # As call, awaiting the coroutine.
        source = self.source or self._resolve()
        n = next(source.sampler.pool_cell)
        if n >= source.sampler.next_at:
            try:
                rate = self._decide(source, n)
            except RecursionError:
                rate = 0
            if rate:
                start = perf_counter_ns()
                try:
                    result = await wrapped(*args, **kwargs)
                except BaseException as exc:
                    try:
                        self._record(source, n, rate, start, exc)
                    except RecursionError:
                        for _ in source.counters.cells[INTERNAL_ERROR]:
                            break
                    raise
                try:
                    self._record(source, n, rate, start, None)
                except RecursionError:
                    for _ in source.counters.cells[SUCCESS]:
                        break
                return result
        cells = source.counters.cells
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            try:
                next(cells[status_of(exc)])
            except RecursionError:
                for _ in cells[INTERNAL_ERROR]:
                    break
            raise
        next(cells[SUCCESS])
        return result

    def _record(
        self, source: AppSource, n: int, rate: int, start: int, exc: BaseException | None
    ) -> None:
        """Queue the sample of candidate ``n`` (sampled at 1-in-``rate``), then count the
        call. Raises only RecursionError (at the recursion limit, where no call can be
        made), before counting: the caller counts it then."""
        end = perf_counter_ns()
        status, descr = (SUCCESS, "") if exc is None else (status_of(exc), type(exc).__name__)
        try:
            records: list[Any] = [
                AppOperation(
                    application=source.name,
                    operation=self.name,
                    attributes="",
                    status_descr=descr,
                    req_bytes=0,
                    resp_bytes=0,
                    uS=min((end - start) // 1000, MAX_US),
                    status=status,
                )
            ]
            parent = parent_context()
            if parent is not None:
                service, method, where = parent
                records.append(
                    AppParentContext(
                        application=service, operation=where, attributes=f"method={method}"
                    )
                )
            source.submit(n, tuple(records), rate)
        except Exception:
            source.drop()
            log.debug("sflow_app: could not record an app_operation sample", exc_info=True)
        source.counters.incr[status]()


_OPERATIONS: weakref.WeakSet[_Operation] = weakref.WeakSet()


def _forget_sources() -> None:
    for operation in list(_OPERATIONS):
        operation.source = None


def _forget_default_sources() -> None:
    # Off the call path: the next call of each resolves the new name (_resolve).
    for operation in list(_OPERATIONS):
        if operation.application is None:
            operation.source = None


ON_RESET.append(_forget_sources)
ON_RENAME.append(_forget_default_sources)

"""Script sandboxes: JavaScript (QuickJS) and Lua 5.4 running in a guest.

    async with aionub.JsSandbox.create() as js:
        await js.exec("function add(a, b) { return a + b }")
        assert await js.call("add", 2, 3) == 5

The runtimes are guests of ours (``native/guest/scripts/``), built at
install time into ``aionub/_guests/js.elf`` and ``lua.elf``. Each exports
``eval``, ``exec`` and ``call`` returning an envelope, ``[True, value]`` or
``[False, message, stack]``; the second becomes :class:`ScriptError`, which
does not poison the sandbox. A JavaScript promise result is awaited in the
guest. Host functions are served through one host function, ``script.host``
(:func:`script_host_functions`), which turns a Python exception, or a result
that cannot be sent, into a script exception. ``docs/scripts.md`` has the
conversion rules.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from ._exceptions import GuestProtocolError, SandboxError
from ._hostcalls import HostFunction, check_host_functions
from ._paths import JS_GUEST, LUA_GUEST
from ._pool import SandboxPool
from ._sandbox import Creation, Sandbox
from ._snapshot import Snapshot
from ._wire import Encoded, encode_value

__all__ = ("ScriptError", "JsSandbox", "LuaSandbox", "script_host_functions", "SCRIPT_DEFAULTS", "SCRIPT_MAX_DEPTH")

#: Sandbox options a script sandbox gets unless given: room for the
#: interpreter's heap and for results and arguments up to 1 MiB encoded.
SCRIPT_DEFAULTS: Mapping[str, int] = {
    "memory_size": 64 * 1024 * 1024,
    "input_size": 1024 * 1024,
    "output_size": 1024 * 1024,
}

#: The one host function the runtimes call; it dispatches to the user's.
SCRIPT_HOST = "script.host"

#: How deep lists and dicts may nest in values going either way
#: (SCRIPT_MAX_DEPTH in native/guest/scripts/common.h): the result envelope
#: adds a level and the wire allows ``_abi.MAX_DEPTH``.
SCRIPT_MAX_DEPTH = 60

#: A host-call reply is the status byte and the envelope ``[True, value]``
#: around the encoded value.
_REPLY_OVERHEAD = 1 + len(encode_value([True, None], "")) - len(encode_value(None, ""))

S = TypeVar("S", bound="_ScriptSandbox")


class ScriptError(SandboxError):
    """The script raised (or its result could not be converted). The
    runtime is intact: the sandbox is not poisoned. ``message`` is the
    error's text (``Error: boom`` in JavaScript, ``eval:1: boom`` in Lua),
    ``stack`` its stack trace (may be empty)."""

    def __init__(self, message: str, stack: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.stack = stack

    def __str__(self) -> str:
        return self.message


def script_host_functions(
    host_functions: Mapping[str, HostFunction] | None, *, output_size: int = SCRIPT_DEFAULTS["output_size"]
) -> dict[str, HostFunction]:
    """The ``host_functions`` of a script sandbox's Sandbox (or SandboxPool):
    one dispatcher, ``script.host``, through which scripts reach
    ``host_functions`` (sync or ``async def``). ``output_size`` is the
    sandbox's option of that name.

    Whatever goes wrong in a host function is raised in the script as an
    error ``"<Type>: <message>"``, which the script may catch, and the call
    goes on: the function raised, or its result cannot be sent (a type the
    wire does not carry, an int beyond 64 bits, nesting deeper than
    :data:`SCRIPT_MAX_DEPTH`, more than fits in the output buffer)."""
    functions = check_host_functions(host_functions)
    if not isinstance(output_size, int) or isinstance(output_size, bool):
        raise TypeError(f"output_size must be an int, not {type(output_size).__name__}")
    if output_size <= 0:
        raise ValueError(f"output_size must be positive, not {output_size}")
    room = output_size - _REPLY_OVERHEAD

    def reply(name: str, result: Any) -> list[Any]:
        # Encoded here rather than by the host-call layer: a result that
        # cannot be sent is then an error in the script, not a
        # HostFunctionError that fails the whole call.
        what = f"the result of host.{name}()"
        try:
            encoded = encode_value(result, what, max_depth=SCRIPT_MAX_DEPTH)
        except (TypeError, ValueError, OverflowError) as exc:
            return _failure(exc)
        if len(encoded) > room:
            return [
                False,
                f"ValueError: {what} takes {len(encoded)} bytes encoded, more than the "
                f"{output_size}-byte output buffer holds (option output_size)",
            ]
        return [True, Encoded(encoded)]

    async def finish(name: str, pending: Awaitable[Any]) -> list[Any]:
        try:
            result = await pending
        except Exception as exc:
            return _failure(exc)
        return reply(name, result)

    def dispatch(*request: Any) -> list[Any] | Coroutine[Any, Any, list[Any]]:
        # The runtimes (common.h, script_host_call) send (name, args).
        if len(request) != 2 or not isinstance(request[0], str) or not isinstance(request[1], list):
            return [False, f"{SCRIPT_HOST} takes (name: str, args: list), not {len(request)} arguments"]
        name, args = request
        fn = functions.get(name)
        if fn is None:
            return [False, f"no host function named {name!r}"]
        try:
            result = fn(*args)
        except Exception as exc:
            return _failure(exc)
        if inspect.isawaitable(result):
            return finish(name, result)
        return reply(name, result)

    return {SCRIPT_HOST: dispatch}


def _failure(exc: Exception) -> list[Any]:
    return [False, f"{type(exc).__name__}: {exc}"]


def _unwrap(envelope: Any) -> Any:
    if isinstance(envelope, list):
        if len(envelope) == 2 and envelope[0] is True:
            return envelope[1]
        if len(envelope) == 3 and envelope[0] is False:
            raise ScriptError(envelope[1], envelope[2])
    raise GuestProtocolError(f"the script runtime returned {type(envelope).__name__}, not a result envelope")


def _check_code(code: object) -> str:
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, not {type(code).__name__}")
    return code


class _ScriptSandbox:
    """A script runtime in a Sandbox. Create with :meth:`create`, or wrap a
    sandbox of the runtime's guest (from a pool) with ``cls(sandbox)``."""

    GUEST: ClassVar[Path]
    LANGUAGE: ClassVar[str]

    __slots__ = ("sandbox",)

    def __init__(self, sandbox: Sandbox) -> None:
        if not isinstance(sandbox, Sandbox):
            raise TypeError(f"{type(self).__name__} wraps a Sandbox, not {type(sandbox).__name__}")
        if not {"eval", "exec", "call"} <= set(sandbox.functions):
            raise TypeError(f"{sandbox!r} does not run the {self.LANGUAGE} runtime ({type(self).__name__}.GUEST)")
        self.sandbox = sandbox

    @classmethod
    def create(
        cls: type[S],
        *,
        host_functions: Mapping[str, HostFunction] | None = None,
        name: str | None = None,
        **config: Any,
    ) -> Creation[S]:
        """Start a sandbox running the runtime. ``host_functions`` are what
        scripts reach as ``host.name(...)``; ``config`` takes the options of
        ``Sandbox.create`` (defaults: :data:`SCRIPT_DEFAULTS`). Await it or
        use it with ``async with``."""
        options = {**SCRIPT_DEFAULTS, **config}
        creation = Sandbox.create(
            cls.GUEST,
            host_functions=script_host_functions(host_functions, output_size=options["output_size"]),
            name=name or cls.LANGUAGE,
            **options,
        )

        async def factory() -> S:
            return cls(await creation)

        return Creation(factory)

    @classmethod
    def pool(
        cls,
        *,
        setup: str | None = None,
        host_functions: Mapping[str, HostFunction] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> SandboxPool:
        """A SandboxPool of this runtime. ``setup`` is code run once, before
        the pool's snapshot that every other sandbox is spawned from, so
        every checkout starts with it loaded; wrap a checked-out sandbox with ``cls(sandbox)``. ``options``
        are SandboxPool's (``size``, ``max_size``, ``acquire_timeout``) and
        the sandbox options (defaults: :data:`SCRIPT_DEFAULTS`)."""
        code = None if setup is None else _check_code(setup)

        async def prepare(sandbox: Sandbox) -> None:
            if code is not None:
                await cls(sandbox).exec(code)

        options = {**SCRIPT_DEFAULTS, **options}
        return SandboxPool(
            cls.GUEST,
            host_functions=script_host_functions(host_functions, output_size=options["output_size"]),
            name=name or cls.LANGUAGE,
            setup=prepare,
            **options,
        )

    async def eval(self, code: str, *, timeout: float | None = None, cpu_timeout: float | None = None) -> Any:
        """Evaluate ``code`` and return its value converted to Python (JS: the
        completion value, a Promise's once it settles; Lua: the first result,
        ``code`` being tried as an expression first). Raises
        :class:`ScriptError` if it raises (or its promise rejects)."""
        return _unwrap(
            await self.sandbox.call("eval", _check_code(code), timeout=timeout, cpu_timeout=cpu_timeout)
        )

    async def exec(self, code: str, *, timeout: float | None = None, cpu_timeout: float | None = None) -> None:
        """Run ``code`` for its effects (definitions stay for later calls). In
        JavaScript, if the script's completion value is a Promise, it is
        awaited (its rejection raises :class:`ScriptError`)."""
        _unwrap(await self.sandbox.call("exec", _check_code(code), timeout=timeout, cpu_timeout=cpu_timeout))

    async def call(
        self, function: str, /, *args: Any, timeout: float | None = None, cpu_timeout: float | None = None
    ) -> Any:
        """Call the global function ``function`` with ``args`` converted to
        the script's values; return its result converted back (in JavaScript,
        what a returned Promise settles to: an ``async function`` works).
        ``timeout`` and ``cpu_timeout`` are those of :meth:`Sandbox.call`."""
        if not isinstance(function, str):
            raise TypeError(f"function must be a str, not {type(function).__name__}")
        return _unwrap(
            await self.sandbox.call("call", function, list(args), timeout=timeout, cpu_timeout=cpu_timeout)
        )

    @property
    def poisoned(self) -> bool:
        return self.sandbox.poisoned

    async def snapshot(self) -> Snapshot:
        return await self.sandbox.snapshot()

    async def restore(self, snapshot: Snapshot) -> None:
        await self.sandbox.restore(snapshot)

    async def aclose(self) -> None:
        await self.sandbox.aclose()

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.sandbox!r}>"


class JsSandbox(_ScriptSandbox):
    """JavaScript (QuickJS 2021-03-27, ES2020) in a sandbox."""

    GUEST = JS_GUEST
    LANGUAGE = "js"
    __slots__ = ()


class LuaSandbox(_ScriptSandbox):
    """Lua 5.4 in a sandbox."""

    GUEST = LUA_GUEST
    LANGUAGE = "lua"
    __slots__ = ()



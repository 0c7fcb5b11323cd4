"""A web backend that runs guest functions per request: a Starlette (ASGI) app
on a pool of aionub sandboxes.

    POST /call/{function}   {"args": [2, 3], "timeout": 0.5}  ->  {"result": 5}
    GET  /functions         the guest's functions and their signatures
    GET  /health            "ok" once the pool is up

Every response names the worker process that served it in an
`x-aionub-worker` header (its pid).

Arguments and results are JSON values; bytes travel as {"base64": "..."}.
Every request has a deadline (the server's, or a shorter "timeout" in the
body) that covers waiting for a free sandbox and the call itself.

    status  when
    200     {"result": ...}
    400     bad input: malformed body, unknown function, arguments that do
            not fit the signature (GuestFunctionNotFound, TypeError, ValueError)
    500     the guest faulted or aborted; the sandbox goes back to the pool
            and is restored to its snapshot before anyone else gets it
    503     every sandbox stayed busy until the deadline (PoolTimeout)
    504     the call ran past the deadline; the guest was stopped

Run it (from the repository root; `pip install starlette uvicorn`):

    uvicorn web_app:app --app-dir examples --host 127.0.0.1 --port 8000
    curl -s -X POST localhost:8000/call/add -d '{"args": [2, 3]}'

Environment: AIONUB_GUEST (path of the guest ELF; default: the demo guest),
AIONUB_POOL_SIZE (4), AIONUB_POOL_MAX_SIZE (8), AIONUB_DEADLINE (seconds, 1.0).

More than one worker process: each worker imports this module and builds
its own pool at startup (nothing is shared between them), so

    uvicorn web_app:app --app-dir examples --workers 4 --host 127.0.0.1 --port 8000
    gunicorn -k uvicorn.workers.UvicornWorker -w 4 --chdir examples web_app:app

run four pools of AIONUB_POOL_SIZE sandboxes each. docs/deployment.md sizes
workers, sandboxes and memory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import aionub

log = logging.getLogger("web_app")


class BadRequest(Exception):
    """The request body is not what the API takes."""


def from_json(value: Any) -> Any:
    """A JSON argument as a guest value: {"base64": "..."} is bytes."""
    if isinstance(value, dict):
        if set(value) != {"base64"} or not isinstance(value["base64"], str):
            raise BadRequest('an object argument must be {"base64": "..."}')
        try:
            return base64.b64decode(value["base64"], validate=True)
        except binascii.Error as exc:
            raise BadRequest(f"invalid base64: {exc}") from None
    if isinstance(value, list):
        raise BadRequest("arrays cannot be passed to a guest function")
    return value


def to_json(value: Any) -> Any:
    """A guest result as JSON: bytes become {"base64": "..."}."""
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf or nan: "inf", "-inf", "nan"
    return value


def error(status: int, exc: BaseException, message: str | None = None) -> JSONResponse:
    """{"error": message, "type": exception class} with ``status``."""
    return JSONResponse({"error": message or str(exc), "type": type(exc).__name__}, status_code=status)


async def parse_body(request: Request, deadline: float) -> tuple[list[Any], float]:
    """The arguments and the deadline (seconds) of a call request."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict) or not set(body) <= {"args", "timeout"}:
        raise BadRequest('the body must be a JSON object with "args" and optionally "timeout"')
    args = body.get("args", [])
    if not isinstance(args, list):
        raise BadRequest('"args" must be a JSON array')
    timeout = body.get("timeout", deadline)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0:
        raise BadRequest('"timeout" must be a positive number of seconds')
    return [from_json(a) for a in args], min(float(timeout), deadline)


def create_app(
    guest: str | os.PathLike[str] | bytes | None = None,
    *,
    size: int = 4,
    max_size: int = 8,
    deadline: float = 1.0,
) -> Starlette:
    """The app: one pool of ``size`` to ``max_size`` sandboxes of ``guest``,
    created at startup and closed at shutdown; at most ``deadline`` seconds
    per request."""
    guest = aionub.DEMO_GUEST if guest is None else guest
    pool: aionub.SandboxPool | None = None
    functions: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal pool
        async with aionub.SandboxPool(guest, size=size, max_size=max_size, acquire_timeout=deadline) as started:
            pool = started
            async with pool.acquire() as sb:
                functions.update({name: str(fn) for name, fn in sb.functions.items()})
            log.info("pool of %d sandboxes of %s ready", size, guest)
            yield
        pool = None

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def list_functions(request: Request) -> JSONResponse:
        return JSONResponse(functions)

    async def call(request: Request) -> JSONResponse:
        assert pool is not None
        name = request.path_params["function"]
        try:
            args, timeout = await parse_body(request, deadline)
        except BadRequest as exc:
            return error(400, exc)
        expires = time.monotonic() + timeout
        try:
            # Waits at most `deadline` for a free sandbox (PoolTimeout), and
            # gives it back (restored to the pool's snapshot) on the way out.
            async with pool.acquire() as sb:
                try:
                    result = await sb.call(name, *args, timeout=max(0.0, expires - time.monotonic()))
                except aionub.SandboxError as exc:
                    if sb.poisoned:
                        log.warning("%s() poisoned sandbox %d (%s); restoring it", name, sb.id, type(exc).__name__)
                    raise
        except aionub.PoolTimeout as exc:
            return error(503, exc)
        except aionub.CallTimeout as exc:
            return error(504, exc, f"{name}() ran past the request's deadline of {timeout:g} s; the guest was stopped")
        except (aionub.GuestFunctionNotFound, TypeError, ValueError, OverflowError) as exc:
            return error(400, exc)
        except aionub.SandboxError as exc:
            # The guest faulted or aborted: 500, and the pool has already
            # restored the sandbox to its snapshot.
            return error(500, exc)
        return JSONResponse({"result": to_json(result)})

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/functions", list_functions),
            Route("/call/{function}", call, methods=["POST"]),
        ],
        middleware=[Middleware(WorkerHeader)],
        lifespan=lifespan,
    )


class WorkerHeader:
    """ASGI middleware: an `x-aionub-worker: <pid>` header on every response,
    so that a client (or a test) can see which worker process answered."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.header = (b"x-aionub-worker", str(os.getpid()).encode())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


def _env_app() -> Starlette:
    return create_app(
        os.environ.get("AIONUB_GUEST") or None,
        size=int(os.environ.get("AIONUB_POOL_SIZE", "4")),
        max_size=int(os.environ.get("AIONUB_POOL_MAX_SIZE", "8")),
        deadline=float(os.environ.get("AIONUB_DEADLINE", "1.0")),
    )


app = _env_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))

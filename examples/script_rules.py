"""A web backend that runs tenants' own JavaScript pricing rules per request:
a Starlette (ASGI) app on one pool of aionub JavaScript sandboxes per tenant.

    PUT  /tenants/{tenant}/rule    the rule: JavaScript source defining
                                   `function price(order) { ... }`
    POST /tenants/{tenant}/price   {"items": [...]}  ->  {"result": <price(order)>}
    GET  /tenants/{tenant}/rule    the tenant's current rule source
    GET  /health                   "ok"

A rule is uploaded once and runs on every pricing request. Uploading builds
a new pool for the tenant with `JsSandbox.pool(setup=source)`: every sandbox
of it runs the rule's top level once, before the pool's snapshot is taken,
so a request only checks out a sandbox (already holding the compiled rule),
calls `price(order)` and gives it back; the pool restores it to the snapshot
(copying back only the pages the request dirtied) before the next request.
Whatever a request does to the rule's globals is gone for the next one, and
tenants never share a sandbox. A new upload replaces the tenant's pool: the
old one serves the requests already inside it and is closed after the last.
Every pool is closed at shutdown.

Rules can call into the host: `host.lookup(sku)` returns the catalog entry
of a SKU (`{"name": ..., "price": ...}`) or null; `print(...)` and
`console.log(...)` go to the `aionub.guest` logger. For example:

    function price(order) {
        let total = 0
        for (const {sku, qty} of order.items) {
            const item = host.lookup(sku)
            if (!item) throw new RangeError(`unknown sku ${sku}`)
            total += item.price * qty
        }
        return {total: Math.round(total * 100) / 100}
    }

Every pricing request has a deadline (AIONUB_DEADLINE) that covers waiting
for a sandbox and the call, and a CPU-time budget (AIONUB_CPU_BUDGET) for
the rule itself; an upload has its own deadline (AIONUB_SETUP_DEADLINE) for
running the rule's top level.

    status  when
    200     {"result": ...}
    400     bad input: the body is not a JSON object, the tenant name is not
            [A-Za-z0-9_-]{1,64}, a value the sandbox cannot take (an int
            beyond 64 bits)
    404     the tenant has no rule
    413     a rule larger than 64 KiB
    422     the rule threw (ScriptError): {"error": "RangeError: unknown
            sku x", "stack": ...}; or, on upload, the rule failed to
            compile, threw, ran past the upload deadline, or defines no
            price function (the tenant's previous rule stays in force)
    503     every sandbox of the tenant stayed busy until the deadline
    504     price() ran past the deadline; the guest was stopped and its
            sandbox is restored before it serves again
    429     price() used up its CPU-time budget (the rule is too costly,
            whatever the load): {"type": "CpuTimeout", "cpu_time": ...}

The deadline is wall-clock time, so a request waiting for a busy host (or
a host function) spends it too. The CPU budget counts only the CPU time the
rule itself uses (`cpu_timeout=`: host.lookup and waiting for a busy CPU
are not counted), so a rule is judged by its own cost, not by the server's
load; whichever runs out first stops it.

Run it (from the repository root; `pip install starlette uvicorn`):

    uvicorn script_rules:app --app-dir examples --host 127.0.0.1 --port 8000
    curl -s -X PUT localhost:8000/tenants/acme/rule \\
        --data-binary 'function price(o) { return o.items.length * 2 }'
    curl -s -X POST localhost:8000/tenants/acme/price -d '{"items": [1, 2]}'

Environment: AIONUB_POOL_SIZE (sandboxes per tenant, 1),
AIONUB_POOL_MAX_SIZE (2), AIONUB_DEADLINE (seconds per request, 1.0),
AIONUB_CPU_BUDGET (seconds of CPU time per request, 0.1),
AIONUB_SETUP_DEADLINE (seconds per upload, 5.0). Each worker process keeps
its own tenants (uploads are not shared between workers): run one worker,
or put the rules in shared storage and load them at startup.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import aionub

log = logging.getLogger("script_rules")

TENANT = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_RULE = 64 * 1024  # bytes of source

#: What host.lookup(sku) finds: a stand-in for a product database.
CATALOG: dict[str, dict[str, Any]] = {
    "apple": {"name": "Apple", "price": 0.5},
    "pear": {"name": "Pear", "price": 0.75},
    "melon": {"name": "Melon", "price": 2.25},
}

#: Run after the rule's own top level, in the same setup: an upload without
#: a price function is refused.
CHECK_RULE = "if (typeof price !== 'function') throw new TypeError('the rule must define function price(order)')"


def to_json(value: Any) -> Any:
    """A script result as JSON: bytes become {"base64": ...}, and the floats
    JSON has no spelling for become strings ("inf", "-inf", "nan")."""
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def error(status: int, message: str, kind: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "type": kind, **extra}, status_code=status)


@dataclass(eq=False)
class Rule:
    """One uploaded rule and the pool that runs it. ``users`` counts the
    requests inside the pool; a replaced rule is closed after the last."""

    source: str
    pool: aionub.SandboxPool
    users: int = 0
    retired: bool = False


def create_app(
    *,
    size: int = 1,
    max_size: int = 2,
    deadline: float = 1.0,
    cpu_budget: float = 0.1,
    setup_deadline: float = 5.0,
    catalog: Mapping[str, Any] | None = None,
) -> Starlette:
    """The app: per tenant, a pool of ``size`` to ``max_size`` JavaScript
    sandboxes holding its rule; ``deadline`` seconds per pricing request,
    of which the rule may use ``cpu_budget`` seconds of CPU time;
    ``setup_deadline`` per upload; ``catalog`` is what ``host.lookup``
    reads (default: :data:`CATALOG`)."""
    products = CATALOG if catalog is None else catalog
    rules: dict[str, Rule] = {}
    uploads: dict[str, asyncio.Lock] = {}

    def lookup(sku: Any) -> Any:
        if not isinstance(sku, str):
            raise TypeError(f"a sku is a string, not {type(sku).__name__}")
        return products.get(sku)

    async def close(rule: Rule) -> None:
        with contextlib.suppress(Exception):
            await rule.pool.aclose()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            closing = list(rules.values())
            rules.clear()
            for rule in closing:
                rule.retired = True
                await close(rule)
            log.info("closed the pools of %d tenants", len(closing))

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    def tenant_of(request: Request) -> str | None:
        tenant: str = request.path_params["tenant"]
        return tenant if TENANT.fullmatch(tenant) else None

    async def get_rule(request: Request) -> Any:
        tenant = tenant_of(request)
        if tenant is None:
            return error(400, "a tenant name is 1 to 64 of A-Z a-z 0-9 _ -", "BadRequest")
        rule = rules.get(tenant)
        if rule is None:
            return error(404, f"tenant {tenant!r} has no rule", "NoRule")
        return PlainTextResponse(rule.source, media_type="application/javascript")

    async def put_rule(request: Request) -> JSONResponse:
        tenant = tenant_of(request)
        if tenant is None:
            return error(400, "a tenant name is 1 to 64 of A-Z a-z 0-9 _ -", "BadRequest")
        raw = await request.body()
        if len(raw) > MAX_RULE:
            return error(413, f"a rule is at most {MAX_RULE} bytes", "RuleTooLarge")
        try:
            source = raw.decode("utf-8")
        except UnicodeDecodeError:
            return error(400, "the rule must be UTF-8 text", "BadRequest")
        pool = aionub.JsSandbox.pool(
            setup=f"{source}\n;{CHECK_RULE}",
            host_functions={"lookup": lookup},
            name=f"rule-{tenant}",
            size=size,
            max_size=max_size,
            acquire_timeout=deadline,
        )
        async with uploads.setdefault(tenant, asyncio.Lock()):
            started = time.monotonic()
            try:
                # start() runs the rule's top level in every new sandbox; a
                # rule that never finishes is stopped here (cancelling a
                # call stops the guest) and the pool closes what it made.
                async with asyncio.timeout(setup_deadline):
                    await pool.start()
            except TimeoutError:
                return error(422, f"the rule's top level ran past {setup_deadline:g} s", "SetupTimeout")
            except aionub.ScriptError as failed:
                return error(422, f"the rule failed to load: {failed.message}", "ScriptError", stack=failed.stack)
            old, rules[tenant] = rules.get(tenant), Rule(source, pool)
            log.info("tenant %s: rule of %d bytes loaded in %.0f ms", tenant, len(raw),
                     (time.monotonic() - started) * 1000)
        if old is not None:
            old.retired = True
            if old.users == 0:
                await close(old)
        return JSONResponse({"tenant": tenant, "bytes": len(raw), "replaced": old is not None})

    async def price(request: Request) -> JSONResponse:
        tenant = tenant_of(request)
        if tenant is None:
            return error(400, "a tenant name is 1 to 64 of A-Z a-z 0-9 _ -", "BadRequest")
        try:
            order = json.loads(await request.body())
        except ValueError:
            order = None
        if not isinstance(order, dict):
            return error(400, "the body must be a JSON object (the order)", "BadRequest")
        rule = rules.get(tenant)
        if rule is None:
            return error(404, f"tenant {tenant!r} has no rule", "NoRule")
        expires = time.monotonic() + deadline
        rule.users += 1
        try:
            async with contextlib.AsyncExitStack() as stack:
                # Growing the pool runs the rule's top level again: the
                # deadline covers that as well as waiting for a free sandbox.
                # Leaving the stack gives the sandbox back, restored to the
                # pool's snapshot before anyone else gets it.
                async with asyncio.timeout(deadline):
                    sandbox = await stack.enter_async_context(rule.pool.acquire())
                js = aionub.JsSandbox(sandbox)
                result = await js.call(
                    "price", order, timeout=max(0.0, expires - time.monotonic()), cpu_timeout=cpu_budget
                )
        except aionub.ScriptError as exc:
            return error(422, exc.message, "ScriptError", stack=exc.stack)
        except aionub.CpuTimeout as exc:
            log.warning("tenant %s: price() used up its CPU budget; its sandbox is restored", tenant)
            return error(429, f"price() used more than its CPU-time budget of {cpu_budget:g} s; it was stopped",
                         "CpuTimeout", cpu_time=exc.cpu_time)
        except aionub.CallTimeout:
            log.warning("tenant %s: price() ran past the deadline; its sandbox is restored", tenant)
            return error(504, f"price() ran past the request's deadline of {deadline:g} s; it was stopped",
                         "CallTimeout")
        except (aionub.PoolTimeout, TimeoutError):
            return error(503, f"no sandbox of tenant {tenant!r} became free within {deadline:g} s", "PoolTimeout")
        except aionub.SandboxClosed:
            return error(503, "the tenant's rule was replaced or the server is stopping; retry", "SandboxClosed")
        except (TypeError, ValueError, OverflowError) as exc:
            return error(400, str(exc), type(exc).__name__)
        finally:
            rule.users -= 1
            if rule.retired and rule.users == 0:
                await close(rule)
        return JSONResponse({"result": to_json(result)})

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/tenants/{tenant}/rule", put_rule, methods=["PUT"]),
            Route("/tenants/{tenant}/rule", get_rule, methods=["GET"]),
            Route("/tenants/{tenant}/price", price, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def _env_app() -> Starlette:
    return create_app(
        size=int(os.environ.get("AIONUB_POOL_SIZE", "1")),
        max_size=int(os.environ.get("AIONUB_POOL_MAX_SIZE", "2")),
        deadline=float(os.environ.get("AIONUB_DEADLINE", "1.0")),
        cpu_budget=float(os.environ.get("AIONUB_CPU_BUDGET", "0.1")),
        setup_deadline=float(os.environ.get("AIONUB_SETUP_DEADLINE", "5.0")),
    )


app = _env_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))

"""``Sandbox.create(..., debug="ADDRESS")``: a gdb server that lives as
long as the sandbox, as a task on the running asyncio loop. Under trio
there is no loop-wide place for such a task: use ``aionub.serve_gdb`` in
a nursery instead."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from ._binding import running_loop

if TYPE_CHECKING:
    from ._sandbox import Sandbox

__all__ = ("start_debug_server", "stop_debug_server")


async def start_debug_server(sandbox: Sandbox, listen: str) -> tuple[Any, asyncio.Task[None]]:
    from ._gdb import GdbServer

    loop = running_loop()
    if loop is None:
        raise RuntimeError(
            'debug="ADDRESS" serves gdb from an asyncio task; under trio create the sandbox with '
            "debug=True and use `async with aionub.serve_gdb(sandbox, ADDRESS)`"
        )
    server = GdbServer(sandbox, listen)
    await server.start()
    return server, loop.create_task(server.serve(), name=f"aionub gdb server {server.address}")


async def stop_debug_server(gdb: tuple[Any, asyncio.Task[None]]) -> None:
    server, task = gdb
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await server.aclose()

"""The gdb server against the real gdb (batch mode): breakpoints, locals
and globals, steps, backtraces, memory writes that change a call's result,
Ctrl-C of a spinning guest, a fault with its source line, crash dumps, the
``aionub debug`` command, and the protocol's robustness on a raw socket."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import aionub
from tests.debugging import debuggee

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # gdb starts in ~0.5 s; one backend is enough (test_trio-style coverage below)


def gdb_command(elf: Path, address: str, *commands: str) -> list[str]:
    cmd = ["gdb", "-batch", "-nx", "-ex", "set confirm off", "-ex", f"target remote {address}"]
    for c in commands:
        cmd += ["-ex", c]
    return [*cmd, str(elf)]


async def gdb_resumed(server: aionub.GdbServer) -> None:
    """Wait until gdb has set its breakpoints and resumed the guest: only
    then may the call start (or it would run before gdb is ready)."""
    await server.connected.wait()
    with anyio.fail_after(60):
        while server.target.resumes == 0 or server.target.stop is not None:
            await anyio.sleep(0.02)


async def run_gdb(elf: Path, address: str, *commands: str) -> str:
    result = await anyio.run_process(gdb_command(elf, address, *commands), check=False, stdin=subprocess.DEVNULL)
    return (result.stdout + result.stderr).decode(errors="replace")


async def test_break_locals_globals_step_bt_and_a_memory_write_changes_the_result() -> None:
    elf = debuggee()
    async with aionub.Sandbox.create(elf, debug=True) as sb, aionub.serve_gdb(sb) as server:
        output: list[str] = []

        async def gdb() -> None:
            output.append(await run_gdb(
                elf, server.address,
                "break scale", "continue", "print x", "print total", "next", "print factor",
                "bt", "set var factor = 10", "set $rax = 0x1234", "print/x $rax", "detach",
            ))

        async with anyio.create_task_group() as tg:
            tg.start_soon(gdb)
            await gdb_resumed(server)
            result = await sb.call("compute", 4)
        text = output[0]
        assert "Breakpoint 1, scale (x=4)" in text, text
        assert "$1 = 4" in text and "$2 = 0" in text, text
        assert "$3 = 3" in text, text
        assert "$4 = 0x1234" in text, text  # a register write (P packet)
        assert "#1" in text and "compute (x=4)" in text, text
        assert result == 4 * 10 + 1  # factor was written through gdb
        assert not sb.poisoned
        assert await sb.call("compute", 1) == 4  # breakpoints gone after detach
        assert server.target.breakpoints == {}


async def test_stepi_moves_one_instruction() -> None:
    elf = debuggee()
    async with aionub.Sandbox.create(elf, debug=True) as sb, aionub.serve_gdb(sb) as server:
        output: list[str] = []

        async def gdb() -> None:
            output.append(await run_gdb(
                elf, server.address, "break step_me", "continue", "print/x $pc", "stepi", "print/x $pc",
                "step", "step", "print a", "print b", "detach",
            ))

        async with anyio.create_task_group() as tg:
            tg.start_soon(gdb)
            await gdb_resumed(server)
            assert await sb.call("step_me", 5) == 12
        text = output[0]
        pcs = [int(line.split("=")[1], 16) for line in text.splitlines() if line.startswith(("$1 =", "$2 ="))]
        assert len(pcs) == 2 and pcs[1] > pcs[0], text
        assert "$3 = 6" in text and "$4 = 12" in text, text


async def test_ctrl_c_stops_a_spinning_guest_and_kill_ends_the_call() -> None:
    elf = debuggee()
    async with aionub.Sandbox.create(elf, debug=True) as sb, aionub.serve_gdb(sb) as server:
        cmd = gdb_command(elf, server.address, "continue", "bt", "kill")
        proc = await anyio.open_process(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        outcome: list[BaseException] = []

        async def call() -> None:
            try:
                await sb.call("spin", timeout=60)
            except aionub.SandboxError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            await gdb_resumed(server)
            tg.start_soon(call)
            with anyio.fail_after(30):
                while not aionub._native.lib.ab_interrupt_running(sb._ih):  # the call spins
                    await anyio.sleep(0.02)
            proc.send_signal(signal.SIGINT)  # gdb sends 0x03
            with anyio.fail_after(60):
                await proc.wait()
        assert proc.stdout is not None
        text = b""
        async for chunk in proc.stdout:
            text += chunk
        assert b"SIGINT" in text and b"spin_forever" in text, text
        assert outcome and isinstance(outcome[0], aionub.ExecutionCancelled), outcome
        assert sb.poisoned


async def test_a_fault_shows_its_source_line_then_the_call_raises() -> None:
    elf = debuggee()
    async with aionub.Sandbox.create(elf, debug=True) as sb, aionub.serve_gdb(sb) as server:
        output: list[str] = []

        async def gdb() -> None:
            output.append(await run_gdb(elf, server.address, "continue", "bt", "continue"))

        errors: list[aionub.GuestFault] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(gdb)
            await gdb_resumed(server)
            try:
                await sb.call("crash", 0x10)
            except aionub.GuestFault as exc:
                errors.append(exc)
        text = output[0]
        assert "SIGSEGV" in text, text
        assert "CRASH LINE" in text, text
        assert "crash (address=16)" in text, text
        assert "terminated with signal SIGSEGV" in text, text
        assert errors and errors[0].address == 0x10
        assert sb.poisoned


async def test_crash_dump_opens_in_gdb_with_a_backtrace(tmp_path: Path) -> None:
    elf = debuggee()
    async with aionub.Sandbox.create(elf, core_dir=str(tmp_path)) as sb:
        with pytest.raises(aionub.GuestFault) as info:
            await sb.call("crash", 0x20)
    core = info.value.core_file  # type: ignore[attr-defined]
    assert Path(core).parent == tmp_path and Path(core).is_file()
    assert any(core in note for note in info.value.__notes__)
    result = await anyio.run_process(
        ["gdb", "-batch", "-nx", "-ex", "bt", "-ex", "print total", "-ex", "info registers rip", str(elf), core],
        check=False,
    )
    text = (result.stdout + result.stderr).decode(errors="replace")
    assert "crash (address=32)" in text and "CRASH LINE" in text, text
    assert "compute" not in text
    assert "$1 = 0" in text, text
    assert "signal SIGSEGV" in text, text


async def test_crash_dump_of_a_timeout_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIONUB_CORE_DIR", str(tmp_path))
    elf = debuggee()
    async with aionub.Sandbox.create(elf) as sb:
        with pytest.raises(aionub.CallTimeout) as info:
            await sb.call("spin", timeout=0.05)
    core = info.value.core_file  # type: ignore[attr-defined]
    result = await anyio.run_process(["gdb", "-batch", "-nx", "-ex", "bt", str(elf), core], check=False)
    text = (result.stdout + result.stderr).decode(errors="replace")
    assert "spin_forever" in text, text
    assert "SIGKILL" in text, text


async def test_no_crash_dump_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIONUB_CORE_DIR", raising=False)
    async with aionub.Sandbox.create(debuggee()) as sb:
        with pytest.raises(aionub.GuestFault) as info:
            await sb.call("crash", 0x20)
    assert not hasattr(info.value, "core_file")


def test_aionub_debug_command_with_the_demo_guest() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aionub", "debug", "demo", "fib", "10", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline() + proc.stderr.readline()
        address = line.split("target remote ")[1].split("'")[0]
        gdb = subprocess.run(
            gdb_command(Path(aionub.DEMO_GUEST), address, "bt", "break fib", "continue", "bt", "delete", "continue"),
            capture_output=True, text=True, timeout=120,
        )
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = gdb.stdout + gdb.stderr
    assert "fib (n=10)" in text and "demo.c" in text, text
    assert "fib (n=n@entry=9)" in text or "fib (n=9)" in text, text
    assert "exited normally" in text, text
    assert out.strip() == "55"
    assert proc.returncode == 0, err


# ---- the protocol on a raw socket --------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return b"$" + payload + b"#%02x" % (sum(payload) & 0xFF)


class Client:
    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def packet(self, payload: bytes, *, raw: bytes | None = None) -> bytes:
        await self.stream.send(raw if raw is not None else frame(payload))
        return await self.reply()

    async def reply(self) -> bytes:
        with anyio.fail_after(10):
            while True:
                start = self.buffer.find(b"$")
                end = self.buffer.find(b"#", start)
                if start >= 0 and end >= 0 and len(self.buffer) >= end + 3:
                    body = self.buffer[start + 1 : end]
                    self.buffer = self.buffer[end + 3 :]
                    return body
                if self.buffer.startswith(b"-"):
                    self.buffer = self.buffer[1:]
                    return b"-"
                if self.buffer.startswith(b"+"):
                    self.buffer = self.buffer[1:]
                    continue
                self.buffer += await self.stream.receive()


async def test_protocol_errors_get_error_replies_and_the_server_keeps_working() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, debug=True) as sb, aionub.serve_gdb(sb) as server:
        host, port = server.address.rsplit(":", 1)
        async with await anyio.connect_tcp(host, int(port)) as stream:
            c = Client(stream)
            assert (await c.packet(b"?")).startswith(b"T02")  # idle: stopped at once
            assert await c.packet(b"", raw=b"$g#00") == b"-"  # bad checksum
            assert await c.packet(b"mzz,4") == b"E01"  # malformed address
            assert await c.packet(b"m100000") == b"E01"  # no length
            assert await c.packet(b"m0,4") == b"E01"  # page 0 is never mapped
            assert await c.packet(b"mffffffffffff0000,10") == b"E01"  # outside guest memory
            assert await c.packet(b"m1fffffffffffffff0,1") == b"E01"  # over 64 bits
            big = await c.packet(b"m100000,ffffffffff")  # huge length: clipped to a packet
            assert 0 < len(big) <= 0x4000
            assert await c.packet(b"M100000,4:zz") == b"E01"  # bad hex
            assert await c.packet(b"M100000,8:00") == b"E01"  # length mismatch
            assert await c.packet(b"Z1,100000,1") == b""  # no hardware breakpoints here
            assert await c.packet(b"P10=00") == b"E01"  # registers only at a debug stop... and short
            assert await c.packet(b"qNonsense") == b""
            assert await c.packet(b"p9999") == b"E45"
            heap = int(sb._native.layout.heap_addr)  # type: ignore[union-attr]
            assert await c.packet(b"M%x,4:deadbeef" % heap) == b"OK"
            assert await c.packet(b"m%x,4" % heap) == b"deadbeef"
            assert await c.packet(b"X%x,2:}\x03}\x04" % heap) == b"OK"  # binary, escaped '#' and '$'
            assert await c.packet(b"m%x,4" % heap) == b"2324beef"
            assert await c.packet(b"x%x,2" % heap) == b"b}\x03}\x04"
            regs = await c.packet(b"g")
            assert len(regs) == 536 * 2
            xml = await c.packet(b"qXfer:features:read:target.xml:0,ffff")
            assert xml.startswith(b"l<?xml") and b"org.gnu.gdb.i386.core" in xml
            await stream.send(b"$" + b"A" * 70000)  # a packet that never ends: dropped with a '-'
            reply = await c.packet(b"?")
            while reply == b"-":
                reply = await c.reply()
            assert reply.startswith(b"T")  # still serving
            await c.packet(b"D")
        # A new client after the first left; the sandbox is unharmed.
        async with await anyio.connect_tcp(host, int(port)) as stream:
            assert (await Client(stream).packet(b"?")).startswith(b"T")
        assert await sb.call("add", 2, 3) == 5
        assert server.clients == 2


async def test_one_client_at_a_time() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, debug=True) as sb, aionub.serve_gdb(sb) as server:
        host, port = server.address.rsplit(":", 1)
        async with await anyio.connect_tcp(host, int(port)) as first:
            assert (await Client(first).packet(b"?")).startswith(b"T")
            async with await anyio.connect_tcp(host, int(port)) as second:
                with anyio.fail_after(10), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await second.receive()


async def test_listens_on_loopback_by_default_and_on_a_unix_socket(tmp_path: Path) -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, debug=True) as sb:
        async with aionub.serve_gdb(sb) as server:
            assert server.address.startswith("127.0.0.1:")
        path = tmp_path / "gdb.sock"
        async with aionub.serve_gdb(sb, f"unix:{path}") as server:
            assert os.stat(path).st_mode & 0o077 == 0
            async with await anyio.connect_unix(path) as stream:
                assert (await Client(stream).packet(b"?")).startswith(b"T")
        assert not path.exists()


async def test_debug_option_serves_gdb_for_the_sandboxs_life() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, debug="127.0.0.1:0") as sb:
        address = sb.debug_address
        assert address is not None and address.startswith("127.0.0.1:")
        host, port = address.rsplit(":", 1)
        async with await anyio.connect_tcp(host, int(port)) as stream:
            assert (await Client(stream).packet(b"?")).startswith(b"T")
    with pytest.raises(OSError):
        await anyio.connect_tcp(host, int(port))


async def test_serving_needs_a_debug_sandbox() -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        with pytest.raises(aionub.SandboxError, match="debug"):
            async with aionub.serve_gdb(sb):
                pass


def test_bad_listen_addresses_are_named() -> None:
    for bad, words in (("nonsense", "neither"), ("127.0.0.1:99999", "0 to 65535"), ("unix:", "socket path"),
                       ("h:port", "not a number")):
        with pytest.raises(ValueError, match=words):
            aionub.Sandbox.create(aionub.DEMO_GUEST, debug=bad)
    with pytest.raises(TypeError, match="debug"):
        aionub.Sandbox.create(aionub.DEMO_GUEST, debug=3)


async def test_register_writes_at_a_breakpoint_keep_privileged_flags() -> None:
    elf = debuggee()
    image = elf.read_bytes()
    async with aionub.Sandbox.create(elf, debug=True) as sb, aionub.serve_gdb(sb) as server:
        target = server.target
        target.attach()
        target.insert_breakpoint(target.function_address(image, "step_me"), internal=True)
        host, port = server.address.rsplit(":", 1)
        results: list[int] = []

        async def call() -> None:
            results.append(await sb.call("step_me", 5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await target.wait_stop()  # held at step_me's entry before the client asks
            async with await anyio.connect_tcp(host, int(port)) as stream:
                c = Client(stream)
                assert (await c.packet(b"?")).startswith(b"T05")
                flags = int.from_bytes(bytes.fromhex((await c.packet(b"p11")).decode()), "little")
                wanted = flags | 0x3000 | 0x1  # IOPL 3 and CF
                assert await c.packet(b"P11=" + wanted.to_bytes(8, "little").hex().encode()) == b"E01"  # 4 bytes
                assert await c.packet(b"P11=" + wanted.to_bytes(4, "little").hex().encode()) == b"OK"
                now = int.from_bytes(bytes.fromhex((await c.packet(b"p11")).decode()), "little")
                assert now & 0x1 and not now & 0x3000, hex(now)
                assert await c.packet(b"P11=" + flags.to_bytes(4, "little").hex().encode()) == b"OK"
                rax = (await c.packet(b"p0"))
                assert await c.packet(b"P0=" + rax) == b"OK"
                await c.packet(b"D")
        assert results == [12]


@pytest.mark.parametrize("backend", [
    pytest.param(("trio", {}), id="trio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
])
def test_trio_and_uvloop_serve_gdb_too(backend: tuple[str, dict[str, object]]) -> None:
    async def main() -> None:
        async with aionub.Sandbox.create(aionub.DEMO_GUEST, debug=True) as sb, aionub.serve_gdb(sb) as server:
            host, port = server.address.rsplit(":", 1)
            async with await anyio.connect_tcp(host, int(port)) as stream:
                c = Client(stream)
                assert (await c.packet(b"?")).startswith(b"T02")
                assert len(await c.packet(b"g")) == 536 * 2
                await c.packet(b"D")
            assert await sb.call("add", 2, 3) == 5

    name, options = backend
    if name == "asyncio":
        pytest.importorskip("uvloop", reason="uvloop is not installed")
    anyio.run(main, backend=name, backend_options=options)


def test_aionub_debug_names_an_unknown_function() -> None:
    proc = subprocess.run([sys.executable, "-m", "aionub", "debug", "demo", "nosuch", "--listen", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nosuch" in proc.stderr


async def held_at_entry(sb: aionub.Sandbox, function: str) -> aionub.GdbServer:
    """A server whose target holds the next call of ``function`` at its entry."""
    server = aionub.GdbServer(sb)
    target = server.target
    target.attach()
    target.insert_breakpoint(target.function_address(Path(sb._label).read_bytes(), function), internal=True)
    return server


async def test_the_timeout_clock_stops_while_the_debugger_holds_the_call() -> None:
    async with aionub.Sandbox.create(debuggee(), debug=True) as sb:
        server = await held_at_entry(sb, "step_me")
        target = server.target
        results: list[int] = []

        async def call() -> None:
            results.append(await sb.call("step_me", 5, timeout=0.5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            stop = await target.wait_stop()
            assert stop.swbreak and stop.in_call
            await anyio.sleep(1.5)  # three times the timeout, held
            target.resume(aionub._debug.Action.CONTINUE)
        assert results == [12]
        target.detach()


async def test_closing_releases_a_call_held_by_the_debugger() -> None:
    async with aionub.Sandbox.create(debuggee(), debug=True) as sb:
        server = await held_at_entry(sb, "step_me")
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await sb.call("step_me", 5)
            except aionub.SandboxError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await server.target.wait_stop()
            with anyio.fail_after(30):
                await sb.aclose()
        assert errors and isinstance(errors[0], aionub.SandboxClosed), errors


async def test_a_cancelled_task_stops_a_held_call() -> None:
    async with aionub.Sandbox.create(debuggee(), debug=True) as sb:
        server = await held_at_entry(sb, "step_me")
        with anyio.move_on_after(60) as outer:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sb.call, "step_me", 5)
                await server.target.wait_stop()
                tg.cancel_scope.cancel()
        assert not outer.cancelled_caught
        assert sb.poisoned
        server.target.detach()


async def test_crash_dump_of_an_abort_names_sigabrt(tmp_path: Path) -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, core_dir=str(tmp_path)) as sb:
        with pytest.raises(aionub.GuestAborted) as info:
            await sb.call("abort", 3, "no")
    core = info.value.core_file  # type: ignore[attr-defined]
    assert os.stat(core).st_mode & 0o777 == 0o600
    result = await anyio.run_process(["gdb", "-batch", "-nx", "-ex", "bt", aionub.DEMO_GUEST, core], check=False)
    text = (result.stdout + result.stderr).decode(errors="replace")
    assert "SIGABRT" in text and "ab_abort" in text, text


async def test_restore_undoes_what_the_debugger_wrote() -> None:
    # Host writes bypass KVM's dirty log: the debugger's must be recorded
    # for restore's fast path like the host's own (native/debug.c).
    async with aionub.Sandbox.create(debuggee(), debug=True) as sb:
        snap = await sb.snapshot()
        native = sb._native
        assert native is not None
        heap = int(native.layout.heap_addr) + 3 * 4096
        server = aionub.GdbServer(sb)
        target = server.target
        target.attach()
        await target.interrupt()  # an idle stop: memory may be written
        before = target.read_memory(heap, 8)
        target.write_memory(heap, b"\xaa" * 8)
        target_address = target.function_address(Path(sb._label).read_bytes(), "step_me")
        code = target.read_memory(target_address, 1)[0]
        target.write_memory(target_address, b"\xcc")  # as a breakpoint gdb never removed
        target.resume(aionub._debug.Action.CONTINUE)
        target.detach()
        assert bytes(native.memory[heap : heap + 8]) == b"\xaa" * 8
        await sb.restore(snap)
        assert bytes(native.memory[heap : heap + 8]) == before
        assert native.memory[target_address : target_address + 1][0] == code
        assert await sb.call("step_me", 5) == 12


def test_aionub_debug_reports_a_fault_as_aionub_call_does() -> None:
    elf = debuggee()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aionub", "debug", str(elf), "crash", "16", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline() + proc.stderr.readline()
        address = line.split("target remote ")[1].split("'")[0]
        gdb = subprocess.run(gdb_command(elf, address, "continue", "continue"), capture_output=True, text=True,
                             timeout=120, stdin=subprocess.DEVNULL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = gdb.stdout + gdb.stderr
    assert "SIGSEGV" in text and "CRASH LINE" in text, text
    assert proc.returncode == 1
    assert out == ""
    assert "aionub debug: GuestFault: guest fault: #PF page fault, read (unmapped page) at 0x10" in err, err


async def test_crash_dump_of_a_kill(tmp_path: Path) -> None:
    import threading
    import time

    async with aionub.Sandbox.create(debuggee(), core_dir=str(tmp_path)) as sb:
        handle = sb.interrupt_handle()

        def kill() -> None:
            while not aionub._native.lib.ab_interrupt_running(sb._ih):
                time.sleep(0.001)
            handle.kill()

        thread = threading.Thread(target=kill)
        thread.start()
        with pytest.raises(aionub.ExecutionCancelled) as info:
            await sb.call("spin")
        thread.join()
    core = info.value.core_file  # type: ignore[attr-defined]
    result = await anyio.run_process(["gdb", "-batch", "-nx", "-ex", "bt", str(debuggee()), core], check=False)
    text = (result.stdout + result.stderr).decode(errors="replace")
    assert "SIGKILL" in text and "spin_forever" in text, text


async def test_a_client_leaving_while_a_call_runs_takes_its_breakpoints_along() -> None:
    image = Path(aionub.DEMO_GUEST).read_bytes()
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, debug=True) as sb, aionub.serve_gdb(sb) as server:
        add = server.target.function_address(image, "add")
        host, port = server.address.rsplit(":", 1)
        results: list[int] = []
        async with anyio.create_task_group() as tg:
            async with await anyio.connect_tcp(host, int(port)) as stream:
                c = Client(stream)
                assert (await c.packet(b"?")).startswith(b"T02")
                assert await c.packet(b"Z0,%x,1" % add) == b"OK"
                await stream.send(frame(b"c"))

                async def fib() -> None:
                    results.append(await sb.call("fib", 36))

                tg.start_soon(fib)
                with anyio.fail_after(30):
                    while not aionub._native.lib.ab_interrupt_running(sb._ih):
                        await anyio.sleep(0.001)
            # The client is gone while fib runs: its breakpoint must go too.
        assert results == [14930352]
        assert await sb.call("add", 2, 3) == 5  # no stray int3 left behind
        assert not sb.poisoned

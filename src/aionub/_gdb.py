"""A gdb remote serial protocol (RSP) server for one sandbox, served from
the event loop with anyio streams (asyncio and trio alike).

One client at a time; the listener binds only where it is told (loopback
by default, or a Unix socket). All-stop mode, one thread. Packets:
``?``, ``g``/``G``, ``p``/``P``, ``m``/``M``, ``x``/``X``, ``Z0``/``z0``,
``c``, ``s``, ``vCont``, Ctrl-C (0x03), ``qSupported``,
``qXfer:features:read:target.xml``, ``QStartNoAckMode``, ``k``, ``D`` and
the thread queries gdb makes. Anything else gets the empty reply
("unsupported"); a malformed packet gets ``E01`` and a bad checksum a
``-``; neither ends the connection. ``docs/debugging.md`` has a debugging
run to replay.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ._debug import Action, DebugError, DebugTarget, Stop
from ._exceptions import SandboxError
from ._gdbaddr import ListenAddress, parse_listen
from ._gdbregs import REGISTERS, TARGET_XML, decode_gpr_block, encode_register, encode_registers, gpr_name

if TYPE_CHECKING:
    from ._sandbox import Sandbox

__all__ = ("GdbServer", "serve_gdb")

log = logging.getLogger("aionub.gdb")

#: The largest packet we accept or announce (PacketSize, hex digits).
PACKET_SIZE = 0x4000
_HEX = re.compile(rb"[0-9a-fA-F]+")


#: What packets() yields for a packet with a bad checksum (answered '-').
_NAK = b"\0bad checksum"


class ProtocolError(Exception):
    """A packet we cannot parse: answered with E01."""


def _checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def _frame(payload: bytes) -> bytes:
    # RSP escaping: '}' then the byte xor 0x20, for '#', '$', '}' and '*'.
    escaped = re.sub(rb"[#$}*]", lambda m: b"}" + bytes([m.group()[0] ^ 0x20]), payload)
    return b"$" + escaped + b"#" + b"%02x" % _checksum(escaped)


def _unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for byte in it:
        if byte == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                raise ProtocolError("escape at the end of a packet")
            out.append(nxt ^ 0x20)
        else:
            out.append(byte)
    return bytes(out)


def _hex_int(text: bytes, what: str) -> int:
    if not _HEX.fullmatch(text) or len(text) > 16:
        raise ProtocolError(f"bad {what}: {text[:32]!r}")
    return int(text, 16)


def _addr_len(text: bytes) -> tuple[int, int]:
    addr, sep, length = text.partition(b",")
    if not sep:
        raise ProtocolError("expected ADDR,LENGTH")
    return _hex_int(addr, "address"), _hex_int(length, "length")


class _Connection:
    """One gdb client: packet framing, acks, and the command table."""

    def __init__(self, server: GdbServer, stream: anyio.abc.ByteStream) -> None:
        self.server = server
        self.target = server.target
        self.stream = stream
        self.buffer = bytearray()
        self.ack = True
        self.swbreak = False
        self.send_lock = anyio.Lock()
        self.waiting = False  # a c/s/vCont awaits its stop reply
        self.closed = False
        self.exit_reply: bytes | None = None  # W/X: the guest cannot go on

    # ---- framing ---------------------------------------------------------------

    async def send(self, payload: bytes) -> None:
        async with self.send_lock:
            await self.stream.send(_frame(payload))

    async def packets(self) -> AsyncIterator[bytes | None]:
        """Packets from the client; None for a Ctrl-C byte."""
        while True:
            while True:
                item = self._take()
                if item is False:
                    break
                yield item  # type: ignore[misc]  # bytes or None, never False here
            try:
                data = await self.stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            self.buffer += data
            if len(self.buffer) > 2 * PACKET_SIZE + 16 and b"#" not in self.buffer:
                log.warning("gdb client sent a packet over %d bytes: dropped", 2 * PACKET_SIZE)
                self.buffer.clear()
                await self.stream.send(b"-")

    def _take(self) -> bytes | bool | None:
        """The next complete packet, None for Ctrl-C, False if none yet."""
        buf = self.buffer
        while buf:
            first = buf[0]
            if first == 0x03:
                del buf[0]
                return None
            if first != ord("$"):
                del buf[0]  # acks ('+', '-') and noise between packets
                continue
            end = buf.find(b"#")
            if end < 0 or len(buf) < end + 3:
                return False
            body = bytes(buf[1:end])
            check = bytes(buf[end + 1 : end + 3])
            del buf[: end + 3]
            try:
                good = int(check, 16) == _checksum(body)
            except ValueError:
                good = False
            if not good:
                self.server.nak_count += 1
                if self.ack:
                    return _NAK  # gdb sends it again
                continue
            return body
        return False

    # ---- the connection ----------------------------------------------------------

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self.tg = tg
            async for packet in self.packets():
                if packet is None:
                    await self.on_ctrl_c()
                    continue
                if packet is _NAK:
                    await self.stream.send(b"-")
                    continue
                if self.ack:
                    await self.stream.send(b"+")
                try:
                    body = _unescape(packet)
                    reply = await self.dispatch(body)
                except (ProtocolError, DebugError, ValueError) as exc:
                    log.debug("gdb packet %r: %s", packet[:40], exc)
                    reply = b"E01"
                if reply is not None:
                    await self.send(reply)
                if self.closed:
                    break
            tg.cancel_scope.cancel()

    async def on_ctrl_c(self) -> None:
        if self.waiting:
            await self.target.interrupt()  # the waiter sends the stop reply

    def stop_reply(self, stop: Stop) -> bytes:
        reply = b"T%02xthread:1;" % stop.signal
        if stop.swbreak and self.swbreak:
            reply += b"swbreak:;"
        return reply

    async def _await_stop(self) -> None:
        try:
            stop = await self.target.wait_stop()
        finally:
            self.waiting = False
        await self.send(self.stop_reply(stop))

    def _resume(self, action: Action) -> None:
        stop = self.target.stop
        if stop is not None and stop.final:
            # The call cannot go on past a fault or abort: the guest "exits"
            # with that signal and the call raises its error.
            self.target.resume(Action.CONTINUE)
            self.exit_reply = b"X%02x" % stop.signal
            return
        self.target.resume(action)
        self.waiting = True
        self.tg.start_soon(self._await_stop)

    async def dispatch(self, body: bytes) -> bytes | None:
        if not body:
            return b""
        cmd = body[:1]
        target = self.target
        if body == b"?":
            stop = target.stop or await target.interrupt()
            return self.stop_reply(stop)
        if cmd == b"q" or cmd == b"Q":
            return self.query(body)
        if cmd == b"g":
            return encode_registers(target.registers())
        if cmd == b"G":
            target.set_registers(decode_gpr_block(bytes.fromhex(body[1:].decode("ascii", "replace"))))
            return b"OK"
        if cmd == b"p":
            return encode_register(target.registers(), _hex_int(body[1:], "register number"))
        if cmd == b"P":
            number_text, sep, value = body[1:].partition(b"=")
            number = _hex_int(number_text, "register number")
            name = gpr_name(number)
            if not sep or name is None:
                raise ProtocolError("only the general registers, rip and eflags are writable")
            if len(value) != 2 * REGISTERS[number][1]:
                raise ProtocolError(f"register {number} takes {REGISTERS[number][1]} bytes")
            number_value = int.from_bytes(bytes.fromhex(value.decode("ascii", "replace")), "little")
            target.set_registers({name: number_value})
            return b"OK"
        if cmd == b"m":
            addr, length = _addr_len(body[1:])
            return target.read_memory(addr, min(length, PACKET_SIZE // 2)).hex().encode()
        if cmd == b"x":
            addr, length = _addr_len(body[1:])
            return b"b" + target.read_memory(addr, min(length, PACKET_SIZE // 2))
        if cmd == b"M":
            spec, sep, data = body[1:].partition(b":")
            addr, length = _addr_len(spec)
            try:
                raw = bytes.fromhex(data.decode("ascii"))
            except ValueError:
                raise ProtocolError("bad hex data") from None
            if not sep or len(raw) != length:
                raise ProtocolError("M: the data does not match the length")
            target.write_memory(addr, raw)
            return b"OK"
        if cmd == b"X":
            spec, sep, data = body[1:].partition(b":")
            addr, length = _addr_len(spec)
            if not sep or len(data) != length:
                raise ProtocolError("X: the data does not match the length")
            target.write_memory(addr, data)
            return b"OK"
        if cmd in (b"Z", b"z"):
            kind, _, rest = body[1:].partition(b",")
            addr_text, _, _ = rest.partition(b",")
            if kind != b"0":
                return b""  # only software breakpoints: no hardware ones on this KVM
            addr = _hex_int(addr_text, "address")
            if cmd == b"Z":
                target.insert_breakpoint(addr)
            else:
                target.remove_breakpoint(addr)
            return b"OK"
        if cmd in (b"c", b"s"):
            if len(body) > 1:
                target.set_registers({"rip": _hex_int(body[1:], "address")})
            return self._continue(Action.STEP if cmd == b"s" else Action.CONTINUE)
        if body.startswith(b"vCont"):
            return self.vcont(body)
        if body.startswith(b"vMustReplyEmpty"):
            return b""
        if cmd == b"H":
            return b"OK"
        if cmd == b"T":
            return b"OK"
        if cmd == b"k":
            if target.stop is not None and target.stop.in_call:
                target.resume(Action.KILL)
            self.closed = True
            return None
        if cmd == b"D":
            self.closed = True
            await self.send(b"OK")
            return None
        return b""

    def _continue(self, action: Action) -> bytes | None:
        self.exit_reply = None
        self._resume(action)
        if self.exit_reply is not None:
            self.closed = True
            return self.exit_reply
        return None

    def vcont(self, body: bytes) -> bytes | None:
        if body == b"vCont?":
            return b"vCont;c;C;s;S"
        actions = body[6:].split(b";")
        if not actions or not actions[0]:
            raise ProtocolError("vCont without an action")
        first = actions[0].split(b":")[0]
        if first[:1] in (b"s", b"S"):
            return self._continue(Action.STEP)
        if first[:1] in (b"c", b"C"):
            return self._continue(Action.CONTINUE)
        if first[:1] == b"t":
            return b"OK"
        raise ProtocolError(f"vCont action {first!r}")

    def query(self, body: bytes) -> bytes:
        if body.startswith(b"qSupported"):
            features = body.partition(b":")[2].split(b";")
            self.swbreak = b"swbreak+" in features
            return (b"PacketSize=%x;qXfer:features:read+;swbreak+;QStartNoAckMode+;vContSupported+"
                    % PACKET_SIZE)
        if body == b"QStartNoAckMode":
            self.ack = False
            return b"OK"
        if body.startswith(b"qXfer:features:read:"):
            annex, _, span = body[len(b"qXfer:features:read:"):].partition(b":")
            if annex != b"target.xml":
                return b"E00"
            offset, length = _addr_len(span)
            chunk = TARGET_XML[offset : offset + min(length, PACKET_SIZE - 1)]
            return (b"l" if offset + len(chunk) >= len(TARGET_XML) else b"m") + chunk
        if body == b"qC":
            return b"QC1"
        if body == b"qfThreadInfo":
            return b"m1"
        if body == b"qsThreadInfo":
            return b"l"
        if body == b"qAttached":
            return b"1"
        if body.startswith(b"qSymbol"):
            return b"OK"
        if body.startswith(b"qThreadExtraInfo"):
            return b"76435055"  # "vCPU"
        return b""


class GdbServer:
    """Serves gdb's remote protocol for one sandbox: bind with
    :meth:`start`, then run :meth:`serve` in a task; one client at a time
    (another one connecting meanwhile is turned away). While a client is
    attached it is the sandbox's debugger: breakpoints and Ctrl-C pause the
    sandbox's calls for it."""

    def __init__(self, sandbox: Sandbox, listen: str = "127.0.0.1:0") -> None:
        self.sandbox = sandbox
        self.target = DebugTarget(sandbox._engine)
        self.listen: ListenAddress = parse_listen(listen)
        self.listener: anyio.abc.SocketListener | None = None
        self.address: str = ""
        self.clients = 0  # clients served (for tests and the CLI)
        self.nak_count = 0
        self.connected = anyio.Event()
        self._connection: _Connection | None = None

    async def start(self) -> str:
        """Bind the listener; returns the address (``HOST:PORT`` or ``unix:PATH``)."""
        if not self.sandbox._engine.config.debug:
            raise DebugError("this sandbox was created without debug=...; breakpoints could not stop it")
        listen = self.listen
        if listen.path is not None:
            self.listener = await anyio.create_unix_listener(listen.path)
            os.chmod(listen.path, 0o600)  # only our user may connect (and _serve_client checks)
            self.address = f"unix:{listen.path}"
        else:
            assert listen.host is not None
            first = await _numeric_listener(listen.host, listen.port)
            if first is None:
                multi = await anyio.create_tcp_listener(local_host=listen.host, local_port=listen.port)
                # One socket: a name that resolves to several addresses (v4
                # and v6) gets the first, so the port is one known address.
                for extra in multi.listeners[1:]:
                    await extra.aclose()
                resolved = multi.listeners[0]
                assert isinstance(resolved, anyio.abc.SocketListener)
                first = resolved
            self.listener = first
            sockname = first.extra(anyio.abc.SocketAttribute.local_address)
            assert isinstance(sockname, tuple)
            self.address = str(ListenAddress(str(sockname[0]), int(sockname[1]), None))
        return self.address

    async def serve(self) -> None:
        """Accept clients, one at a time, until cancelled."""
        assert self.listener is not None, "start() first"
        async with self.listener:
            while True:
                stream = await self.listener.accept()
                if self._connection is not None or not _same_user(stream):
                    await _turn_away(stream)
                    continue
                await self._serve_client(stream)

    async def _serve_client(self, stream: anyio.abc.ByteStream) -> None:
        # The next client is turned away while this one is served: accept
        # them in a side task so they get an answer, not a hang.
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._turn_away_others)
            try:
                self.target.attach()
            except SandboxError as exc:
                log.warning("gdb client refused: %s", exc)
                await stream.aclose()
                tg.cancel_scope.cancel()
                return
            self.clients += 1
            connection = self._connection = _Connection(self, stream)
            self.connected.set()
            try:
                await connection.run()
            finally:
                self._connection = None
                with anyio.CancelScope(shield=True):
                    await self.target.release()  # breakpoints out, held calls run on
                    await stream.aclose()
                tg.cancel_scope.cancel()

    async def _turn_away_others(self) -> None:
        assert self.listener is not None
        while True:
            stream = await self.listener.accept()
            await _turn_away(stream)

    async def call_ended(self, status: int = 0) -> None:
        """For a one-call debugging run (``aionub debug``): the call is over, so
        the guest "exits" (``W`` status) and the client is let go."""
        connection = self._connection
        if connection is not None and not connection.closed:
            try:
                await connection.send(b"W%02x" % (status & 0xFF))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            connection.closed = True
            await connection.stream.aclose()

    async def aclose(self) -> None:
        if self.listener is not None:
            await self.listener.aclose()
        if self.listen.path is not None:
            try:
                os.unlink(self.listen.path)
            except FileNotFoundError:
                pass


async def _numeric_listener(host: str, port: int) -> anyio.abc.SocketListener | None:
    """A listener on a numeric address, bound here without a resolver
    thread (the usual case: 127.0.0.1); None for a host name."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(4)
        sock.setblocking(False)
        return await anyio.abc.SocketListener.from_socket(sock)
    except BaseException:
        sock.close()
        raise


def _same_user(stream: anyio.abc.SocketStream) -> bool:
    """On a Unix socket, only a client of our own user is served (checked
    with SO_PEERCRED, besides the socket file's 0600 mode). TCP clients are
    limited by the address the server binds (loopback by default)."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    if sock.family != socket.AF_UNIX:
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


async def _turn_away(stream: anyio.abc.ByteStream) -> None:
    """One client at a time: a second one is disconnected at once (gdb
    reports "Remote connection closed")."""
    log.warning("gdb client turned away: another one is attached")
    await stream.aclose()


@asynccontextmanager
async def serve_gdb(sandbox: Sandbox, listen: str = "127.0.0.1:0") -> AsyncIterator[GdbServer]:
    """Serve gdb for ``sandbox`` (created with ``debug=True``) while the
    block runs; ``server.address`` is where to point ``target remote``.
    Works under asyncio and trio (anyio)."""
    server = GdbServer(sandbox, listen)
    await server.start()
    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            try:
                yield server
            except BaseException as exc:
                error = exc  # raised as itself below, not in an exception group
            finally:
                tg.cancel_scope.cancel()
    finally:
        await server.aclose()
    if error is not None:
        raise error

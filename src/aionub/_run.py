"""``Sandbox.run()``'s pieces that need no sandbox: checking the caller's
argv, env and stdin, encoding the run request (docs/abi.md, "Runs"), and
decoding the guest's EXIT result, which the (hostile) guest wrote."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import _abi
from ._wire import Reader, encode_string

__all__ = ("RunResult", "check_argv", "check_env", "check_stdin", "decode_exit", "encode_run")

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


@dataclass(frozen=True, slots=True)
class RunResult:
    """What :meth:`Sandbox.run` returns, modelled on
    ``subprocess.CompletedProcess``: ``args`` is the argv the guest saw,
    ``returncode`` its exit status (0..255) or ``-N`` if signal N ended it
    (``abort()``: -6), ``stdout``/``stderr`` what it wrote, at most
    ``max_output_bytes`` each (``*_truncated`` say whether more was
    dropped)."""

    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    def check_returncode(self) -> None:
        """Raise ``subprocess.CalledProcessError`` if ``returncode`` is not 0
        (as ``CompletedProcess.check_returncode`` does)."""
        if self.returncode:
            raise subprocess.CalledProcessError(self.returncode, list(self.args), self.stdout, self.stderr)


def check_argv(argv: object, default_name: str) -> tuple[str, ...]:
    if isinstance(argv, str | bytes) or not isinstance(argv, Sequence):
        raise TypeError(f"argv must be a sequence of str (like ['prog', 'arg']), not {type(argv).__name__}")
    args = tuple(argv) or (default_name,)
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            raise TypeError(f"argv[{i}] must be a str, not {type(arg).__name__}")
        if "\x00" in arg:
            raise ValueError(f"argv[{i}] contains a NUL character: {arg[:40]!r}")
    return args


def check_env(env: object) -> tuple[str, ...]:
    """``env`` as ``K=V`` strings."""
    if env is None:
        return ()
    if not isinstance(env, Mapping):
        raise TypeError(f"env must be a mapping of str to str, not {type(env).__name__}")
    entries = []
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"env keys and values must be str, got {key!r}: {type(value).__name__}")
        if not key or "=" in key or "\x00" in key:
            raise ValueError(f"env key {key[:40]!r} must be non-empty, without '=' or NUL")
        if "\x00" in value:
            raise ValueError(f"env[{key!r}] contains a NUL character")
        entries.append(f"{key}={value}")
    return tuple(entries)


def check_stdin(stdin: object) -> bytes:
    if isinstance(stdin, str):
        try:
            return stdin.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"stdin is not valid Unicode ({exc.reason})") from None
    if isinstance(stdin, bytes | bytearray | memoryview):
        return bytes(stdin)
    raise TypeError(f"stdin must be bytes or str, not {type(stdin).__name__}")


def _encode_strings(strings: Sequence[str], what: str) -> list[bytes]:
    parts = [_U32.pack(len(strings))]
    for i, text in enumerate(strings):
        try:
            parts.append(encode_string(text.encode("utf-8")))
        except UnicodeEncodeError as exc:
            raise ValueError(f"{what}[{i}] is not valid Unicode ({exc.reason})") from None
    return parts


def encode_run(args: Sequence[str], env: Sequence[str]) -> bytes:
    """The run request: kind, argc, argv strings, envc, env strings."""
    return b"".join([bytes((_abi.REQ_RUN,)), *_encode_strings(args, "argv"), *_encode_strings(env, "env")])


def decode_exit(out: memoryview, length: int, program: str) -> int:
    """The exit code of a run's result record: 0..255, or -signal.

    Raises GuestProtocolError for anything that is not a well-formed EXIT
    record with a code in range, and ValueError when the guest rejected
    the run request (BAD_ARGS: a clean refusal, like a call's TypeError)."""
    r = Reader(out, length, f"result of the run of {program}")
    status = r.u8()
    if status == _abi.STATUS_EXIT:
        code: int = _I32.unpack(r.chunk(4))[0]
        r.done()
        if not (0 <= code <= 255 or -64 <= code <= -1):
            raise r.fail(f"exit code {code} is neither a status 0..255 nor a signal -1..-64")
        return code
    if status == _abi.STATUS_BAD_ARGS:
        message = r.text()
        r.done()
        raise ValueError(f"guest rejected the run request for {program}: {message}")
    raise r.fail(f"status {status} is not an exit status")

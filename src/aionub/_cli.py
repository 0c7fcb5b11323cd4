"""``python -m aionub`` / ``aionub``: the demo, the guest compiler, and
commands that inspect, call and run a guest from the shell."""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._limits import MAX_CPU_TIMEOUT

__all__ = ("main", "parse_value", "to_json")

# Exit codes of `inspect` and `call`: 0 success, 1 the guest or the sandbox
# failed (timeout, fault, abort, bad guest file, no KVM), 2 bad usage
# (unknown function, arguments that do not fit the signature).
_FAILED = 1
_USAGE = 2

_VALUES_HELP = """\
Each ARG is a JSON value: 42 is an int, 1.5 a float, true/false a bool,
null None, "text" a str, [...] a list, {...} a dict, and {"base64": "aGk="}
bytes (at any depth). An ARG that is not
valid JSON is passed as a str, so `upper hello` works without quotes (quote
it, '"42"', to pass a number as text). Put `--` before arguments that start
with a dash but are not numbers. The result is printed as JSON, bytes as
{"base64": "..."}. Exit status: 0 on success, 1 when the call or the
sandbox fails (timeout, fault, abort, bad guest file), 2 for bad usage
(unknown function, arguments that do not fit the signature); the error is
one line on stderr."""


_RUN_HELP = """\
Put `--` before guest arguments that start with a dash: `aionub run
guest.elf -- -v file`. Exit status: the guest's exit status, 128+N when
signal N ended it; 1 when the sandbox failed (timeout, fault, bad guest
file) and 2 for bad usage (a guest without main()), with the error as one
line on stderr."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


#: `aionub call` and `aionub run` stop the guest after this long unless told
#: otherwise: a command line should not run a runaway guest for hours.
DEFAULT_TIMEOUT = 60.0
#: The exit status after Ctrl-C, as a shell reports a process ended by SIGINT.
_INTERRUPTED = 130


def _timeout(text: str) -> float | None:
    """--timeout: seconds, 0 for no limit."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or a positive number of seconds, got {text!r}")
    return value or None


def _cpu_timeout(text: str) -> float | None:
    """--cpu-timeout: seconds of CPU time, 0 for no limit."""
    value = _timeout(text)
    if value is not None and value > MAX_CPU_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_CPU_TIMEOUT:g} seconds, got {text!r}")
    return value


def _add_limits(parser: argparse.ArgumentParser, what: str) -> None:
    """--timeout and --cpu-timeout, the limits of Sandbox.call."""
    parser.add_argument(
        "--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="S",
        help=f"stop the {what} after S seconds (default {DEFAULT_TIMEOUT:g}; 0: no limit)",
    )
    parser.add_argument(
        "--cpu-timeout", type=_cpu_timeout, default=None, metavar="S",
        help=f"stop the {what} once it has used S seconds of CPU time (default: no limit)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def parse_value(text: str) -> Any:
    """One command-line argument as a guest value (see ``call --help``)."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return _from_json(value, text)


def _from_json(value: Any, text: str) -> Any:
    """JSON arrays become lists, objects dicts, and {"base64": "..."} bytes."""
    if isinstance(value, list):
        return [_from_json(item, text) for item in value]
    if isinstance(value, dict):
        if set(value) == {"base64"} and isinstance(value["base64"], str):
            try:
                return base64.b64decode(value["base64"], validate=True)
            except binascii.Error as exc:
                raise ValueError(f"invalid base64 in {text}: {exc}") from None
        return {k: _from_json(v, text) for k, v in value.items()}
    return value


def to_json(value: Any) -> str:
    """A guest value as JSON (bytes as ``{"base64": ...}``, at any depth)."""
    return json.dumps(_to_json(value), ensure_ascii=False)


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _guest_path(text: str) -> str | Path:
    """A path, or ``demo`` for the bundled demo guest."""
    if text == "demo" and not os.path.exists(text):
        from ._paths import DEMO_GUEST

        return DEMO_GUEST
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aionub", description="KVM micro-VM sandboxes for asyncio.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run concurrent calls on the bundled demo guest and print a summary",
        description="Run concurrent calls (some CPU-bound, some killed by a timeout) on several sandboxes of "
        "the bundled demo guest, then print calls, latency, kills and errors. On a terminal a progress "
        "line updates in place while it runs.",
    )
    demo.add_argument("--sandboxes", type=_positive_int, default=4, help="number of sandboxes (default 4)")
    demo.add_argument("--duration", type=_positive_float, default=3.0, help="seconds of load (default 3)")
    demo.add_argument("--seed", type=int, default=1, help="random seed of the call mix")
    demo.add_argument("--uvloop", action="store_true", help="run on uvloop (pip install 'aionub[uvloop]')")
    demo.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show the live progress line (default: when stdout is a terminal)",
    )

    build = sub.add_parser(
        "build",
        help="compile C sources into a guest with the aionub guest SDK",
        description="Compile C sources into a guest ELF with the guest SDK and print the path written.",
    )
    build.add_argument("sources", nargs="+", help="C source files")
    build.add_argument("-o", "--output", required=True, help="path of the guest ELF to write")
    build.add_argument("--cflag", action="append", default=[], dest="cflags", help="extra compiler flag (repeatable)")

    inspect = sub.add_parser(
        "inspect",
        help="list the functions a guest exports, with their signatures",
        description="Start GUEST in a sandbox and list the functions it exports, one signature per line.",
    )
    inspect.add_argument("guest", metavar="GUEST", help="path of a guest ELF, or 'demo' for the bundled demo guest")
    inspect.add_argument("--json", action="store_true", help="print a JSON list of {name, params, returns}")

    call = sub.add_parser(
        "call",
        help="call one guest function and print its result as JSON",
        description="Start GUEST in a sandbox, call FUNCTION with ARGs and print the result as JSON.",
        epilog=_VALUES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("guest", metavar="GUEST", help="path of a guest ELF, or 'demo' for the bundled demo guest")
    call.add_argument("function", metavar="FUNCTION", help="name of the guest function")
    # default=[]: without it argparse lists ARG as missing when FUNCTION is.
    call.add_argument("args", metavar="ARG", nargs="*", default=[], help="argument as a JSON value (see below)")
    _add_limits(call, "guest")

    debug = sub.add_parser(
        "debug",
        help="call one guest function under gdb",
        description="Start GUEST in a sandbox with debugging on, stop it at FUNCTION's entry and wait for gdb "
        "(`gdb GUEST -ex 'target remote ADDRESS'`); when the call ends, print its result or error as "
        "`aionub call` does.",
        epilog=_VALUES_HELP + "\n\nThe timeout counts only while the guest runs, not while gdb holds it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    debug.add_argument("guest", metavar="GUEST", help="path of a guest ELF, or 'demo' for the bundled demo guest")
    debug.add_argument("function", metavar="FUNCTION", help="name of the guest function")
    debug.add_argument("args", metavar="ARG", nargs="*", default=[], help="argument as a JSON value (see below)")
    debug.add_argument(
        "--listen", default="127.0.0.1:1234", metavar="ADDRESS",
        help="HOST:PORT or unix:PATH to wait for gdb on (default 127.0.0.1:1234; port 0 picks one)",
    )
    debug.add_argument(
        "--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="S",
        help=f"stop the guest after S seconds of running (default {DEFAULT_TIMEOUT:g}; 0: no limit)",
    )

    run = sub.add_parser(
        "run",
        help="run a guest's main() like a program",
        description="Start GUEST in a sandbox and run its main() with ARGs (argv[0] is GUEST's file name), "
        "stdin from ours (read to its end first; empty when stdin is a terminal), its stdout and stderr "
        "written to ours.",
        epilog=_RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("guest", metavar="GUEST", help="path of a guest ELF with a main()")
    run.add_argument("args", metavar="ARG", nargs="*", default=[], help="argument for the guest's argv")
    _add_limits(run, "guest")
    for lang, title in (("js", "JavaScript (QuickJS)"), ("lua", "Lua 5.4")):
        script = sub.add_parser(
            lang,
            help=f"evaluate {title} in a sandbox and print the result as JSON",
            description=f"Evaluate {title} code (-e CODE, or FILE; '-' reads stdin) in a fresh script sandbox "
            "and print its value as JSON (bytes as {\"base64\": ...}). print() goes to stderr as log records.",
            epilog="Exit status: 0 on success, 1 when the script raises or the sandbox fails (timeout, "
            "memory), 2 for bad usage; the error is one line on stderr.",
        )
        source = script.add_mutually_exclusive_group(required=True)
        source.add_argument("-e", "--eval", dest="code", metavar="CODE", help="the code to evaluate")
        source.add_argument("file", nargs="?", metavar="FILE", help="a file of code ('-': stdin)")
        _add_limits(script, "script")
    return parser


def _script(args: argparse.Namespace) -> int:
    from ._exceptions import SandboxError
    from ._scripts import JsSandbox, LuaSandbox

    command = args.command
    if args.code is not None:
        code = args.code
    elif args.file == "-":
        code = sys.stdin.read()
    else:
        try:
            code = Path(args.file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            _error(command, exc)
            return _USAGE
    cls = JsSandbox if command == "js" else LuaSandbox

    async def evaluate() -> Any:
        async with cls.create() as sb:
            return await sb.eval(code, timeout=args.timeout, cpu_timeout=args.cpu_timeout)

    try:
        with _guest_log_on_stderr():
            result = asyncio.run(evaluate())
    except (SandboxError, OSError) as exc:
        _error(command, exc)
        return _FAILED
    print(to_json(result))
    return 0


def _error(command: str, exc: BaseException) -> None:
    message = " ".join(str(exc).split()) or "(no message)"
    print(f"aionub {command}: {type(exc).__name__}: {message}", file=sys.stderr)


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    progress = sys.stdout.isatty() if args.progress is None else args.progress
    coro = run_demo(args.sandboxes, args.duration, args.seed, out=sys.stdout, progress=progress)
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            coro.close()
            print("aionub: --uvloop needs uvloop: pip install 'aionub[uvloop]'", file=sys.stderr)
            return 2
        report = uvloop.run(coro)
    else:
        report = asyncio.run(coro)
    return 1 if report.errors else 0


def _build(args: argparse.Namespace) -> int:
    from ._build import BuildError, build_guest

    try:
        path = build_guest(args.sources, args.output, cflags=args.cflags)
    except (BuildError, FileNotFoundError, ValueError) as exc:
        print(f"aionub build: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from ._exceptions import SandboxError
    from ._sandbox import Sandbox
    from ._wire import GuestFunction

    async def functions() -> list[GuestFunction]:
        async with Sandbox.create(_guest_path(args.guest)) as sb:
            return list(sb.functions.values())

    try:
        found = asyncio.run(functions())
    except (SandboxError, OSError) as exc:
        _error("inspect", exc)
        return _FAILED
    if args.json:
        from ._abi import TYPE_NAMES

        listing = [
            {"name": fn.name, "params": [TYPE_NAMES[p] for p in fn.params], "returns": TYPE_NAMES[fn.returns]}
            for fn in found
        ]
        print(json.dumps(listing, indent=2))
    else:
        for fn in found:
            print(fn)
    return 0


@contextlib.contextmanager
def _guest_log_on_stderr() -> Iterator[None]:
    """Show the guest's log records (logger "aionub.guest") on stderr."""
    guest_log = logging.getLogger("aionub.guest")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = guest_log.level
    guest_log.addHandler(handler)
    guest_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        guest_log.removeHandler(handler)
        guest_log.setLevel(level)


def _call(args: argparse.Namespace) -> int:
    from ._exceptions import GuestFunctionNotFound, SandboxError
    from ._sandbox import Sandbox

    try:
        values = [parse_value(text) for text in args.args]
    except ValueError as exc:
        _error("call", exc)
        return _USAGE

    async def call() -> Any:
        async with Sandbox.create(_guest_path(args.guest)) as sb:
            return await sb.call(args.function, *values, timeout=args.timeout, cpu_timeout=args.cpu_timeout)

    try:
        with _guest_log_on_stderr():
            result = asyncio.run(call())
    except (GuestFunctionNotFound, TypeError, ValueError, OverflowError) as exc:
        _error("call", exc)
        return _USAGE
    except (SandboxError, OSError) as exc:
        _error("call", exc)
        return _FAILED
    print(to_json(result))
    return 0


def _debug(args: argparse.Namespace) -> int:
    from ._exceptions import GuestFunctionNotFound, SandboxError
    from ._gdb import serve_gdb
    from ._sandbox import Sandbox, read_guest

    try:
        values = [parse_value(text) for text in args.args]
        image, _ = read_guest(_guest_path(args.guest))
    except (ValueError, OSError) as exc:
        _error("debug", exc)
        return _USAGE

    async def debug() -> Any:
        async with Sandbox.create(image, name=str(args.guest), debug=True) as sb:
            if args.function not in sb.functions:
                raise GuestFunctionNotFound(f"guest {args.guest} exports no function named {args.function!r}")
            async with serve_gdb(sb, args.listen) as server:
                target = server.target
                target.attach()  # before the client: the entry stop waits for it
                target.insert_breakpoint(target.function_address(image, args.function), internal=True)
                guest = args.guest if args.guest != "demo" else str(_guest_path("demo"))
                print(f"aionub debug: {args.function}() is stopped at its entry; waiting for gdb on "
                      f"{server.address}:\n    gdb {guest} -ex 'target remote {server.address}'",
                      file=sys.stderr, flush=True)
                status = 1
                try:
                    result = await sb.call(args.function, *values, timeout=args.timeout)
                    status = 0
                    return result
                finally:
                    await server.call_ended(status)

    try:
        with _guest_log_on_stderr():
            result = asyncio.run(debug())
    except (GuestFunctionNotFound, TypeError, ValueError, OverflowError) as exc:
        _error("debug", exc)
        return _USAGE
    except (SandboxError, OSError) as exc:
        _error("debug", exc)
        return _FAILED
    print(to_json(result))
    return 0


def _stdin_bytes() -> bytes:
    """Our stdin for the guest: all of it, or nothing from a terminal (the
    guest cannot ask for more while it runs)."""
    stream = sys.stdin
    if stream is None or stream.isatty():
        return b""
    return stream.buffer.read()


def _run(args: argparse.Namespace) -> int:
    from ._exceptions import GuestFunctionNotFound, SandboxError
    from ._run import RunResult
    from ._sandbox import Sandbox

    async def run() -> RunResult:
        async with Sandbox.create(_guest_path(args.guest)) as sb:
            argv = [os.path.basename(args.guest), *args.args]
            return await sb.run(argv, stdin=_stdin_bytes(), timeout=args.timeout, cpu_timeout=args.cpu_timeout)

    try:
        with _guest_log_on_stderr():
            result = asyncio.run(run())
    except (GuestFunctionNotFound, TypeError, ValueError) as exc:
        _error("run", exc)
        return _USAGE
    except (SandboxError, OSError) as exc:
        _error("run", exc)
        return _FAILED
    for data, stream in ((result.stdout, sys.stdout), (result.stderr, sys.stderr)):
        stream.flush()
        stream.buffer.write(data)
        stream.buffer.flush()
    for name, truncated in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated)):
        if truncated:
            print(f"aionub run: the guest's {name} was cut off after {len(getattr(result, name))} bytes "
                  "(option max_output_bytes)", file=sys.stderr)
    code = result.returncode
    return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ._exceptions import KvmUnavailable

    commands = {"demo": _demo, "build": _build, "inspect": _inspect, "call": _call, "debug": _debug, "run": _run,
                "js": _script, "lua": _script}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        # asyncio.run cancelled the task on SIGINT; a cancelled call or run
        # stops its guest before the cancellation finishes.
        print(f"aionub {args.command}: interrupted", file=sys.stderr)
        return _INTERRUPTED
    except KvmUnavailable as exc:
        print(f"aionub: KVM is not available: {exc}", file=sys.stderr)
        return 1

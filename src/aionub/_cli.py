"""``python -m aionub`` / ``aionub``: the demo and the guest compiler."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

__all__ = ("main",)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aionub", description="KVM micro-VM sandboxes for asyncio.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run concurrent calls on the bundled demo guest and print a summary")
    demo.add_argument("--sandboxes", type=_positive_int, default=4, help="number of sandboxes (default 4)")
    demo.add_argument("--duration", type=_positive_float, default=3.0, help="seconds of load (default 3)")
    demo.add_argument("--seed", type=int, default=1, help="random seed of the call mix")
    demo.add_argument("--uvloop", action="store_true", help="run on uvloop (pip install 'aionub[uvloop]')")
    build = sub.add_parser("build", help="compile C sources into a guest with the aionub guest SDK")
    build.add_argument("sources", nargs="+", help="C source files")
    build.add_argument("-o", "--output", required=True, help="path of the guest ELF to write")
    build.add_argument("--cflag", action="append", default=[], dest="cflags", help="extra compiler flag (repeatable)")
    return parser


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    coro = run_demo(args.sandboxes, args.duration, args.seed, out=sys.stdout)
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ._exceptions import KvmUnavailable

    try:
        if args.command == "demo":
            return _demo(args)
        return _build(args)
    except KvmUnavailable as exc:
        print(f"aionub: KVM is not available: {exc}", file=sys.stderr)
        return 1

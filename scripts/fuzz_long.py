#!/usr/bin/env python3
"""Long fuzzing runs of everything the host decodes from a guest, and of the
ELF loader: by default 2,000,000 inputs (tests/test_fuzz.py runs a few
thousand with hypothesis in the suite).

    python scripts/fuzz_long.py                      # 2e6 inputs, all targets, 2 workers
    python scripts/fuzz_long.py --inputs 200000 --targets elf,value --seed 7

Targets (all of them pure host code: no /dev/kvm needed):

    value     Reader.value() on a value record (lists and dicts included)
    table     decode_ready()
    hostcall  a host-call request: name, decode_args()
    result    decode_result(): a call's result record against a random
              declared return type
    log       GuestServices.emit_log(): a log record
    event     _errors.event_error(): every event kind with random fields
    elf       ab_elf_validate() (C) on mutated guest ELFs, ELFs built from
              random header fields, random configs; a fraction of the
              accepted images is booted in a real sandbox (--run-accepted)

Inputs come from a seed corpus of valid records (built with the real
encoders) and valid ELFs, mutated (bit flips, interesting 8/16/32/64-bit
values, insertions, deletions, truncation, splices) or replaced by random
bytes. A decoder must return a value of the right shape or raise
GuestProtocolError (or the clean errors a guest may report), and must not
depend on bytes past the declared length; the ELF loader must return 0 or
-EINVAL with an "elf:"/"config:" message. Anything else is printed with the
input in hex. A crash of the C code kills a worker; the chunk is then re-run
in a fresh process that writes each input to a file first, so the input that
crashed it is saved. Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import os
import random
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aionub
from aionub import _abi, _native
from aionub._errors import event_error
from aionub._exceptions import POISONING, GuestFunctionNotFound, GuestProtocolError
from aionub._hostcalls import GuestServices
from aionub._results import decode_result
from aionub._wire import Reader, decode_args, decode_ready, encode_string, encode_value

TARGETS = ("value", "table", "hostcall", "result", "log", "event", "elf")
CHUNK = 20_000
MAX_REPORTED = 20

# ---- mutation ------------------------------------------------------------------------

INTERESTING = (
    [0, 1, 0x7F, 0x80, 0xFF]
    + [0x100, 0x7FFF, 0x8000, 0xFFFF]
    + [0x1000, 0x10000, 0x100000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
    + [2**63 - 1, 2**63, 2**64 - 1, 2**32, 0xFFFFFFFFFFFFF000]
)


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    if rng.random() < 0.08:
        return rng.randbytes(rng.randrange(0, 96))
    buf = bytearray(data)
    for _ in range(min(6, 1 + int(rng.expovariate(1.0)))):  # mostly one or two
        op = rng.randrange(9)
        n = len(buf)
        if op == 0 and n:  # flip a bit
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # random byte
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op in (2, 3) and n:  # interesting value of 1, 2, 4 or 8 bytes
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
            i = rng.randrange(n)
            buf[i : i + width] = value.to_bytes(width, "little")
        elif op == 4:  # insert random bytes
            i = rng.randrange(n + 1)
            buf[i:i] = rng.randbytes(rng.randrange(1, 9))
        elif op == 5 and n:  # delete a range
            i = rng.randrange(n)
            del buf[i : i + rng.randrange(1, 9)]
        elif op == 6 and n:  # truncate
            del buf[rng.randrange(n + 1) :]
        elif op == 7 and n:  # duplicate a chunk
            i = rng.randrange(n)
            j = min(n, i + rng.randrange(1, 17))
            buf[i:i] = buf[i:j]
        elif op == 8 and corpus:  # splice with another seed
            other = rng.choice(corpus)
            i = rng.randrange(n + 1)
            k = rng.randrange(len(other) + 1)
            buf = buf[:i] + other[k:]
    return bytes(buf)


# ---- seed corpus ------------------------------------------------------------------------

SAMPLE_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 1.5, float("nan"), float("inf"),
    "", "hello", "é✓𝄞", b"", b"\x00\xff", b"x" * 40,
    [], {}, [1, "a", None], {"k": [1.5, b"b", {"é": True}]}, [[[[]]]], {"a": {"b": {"c": [None]}}},
]


def nested(depth: int) -> bytes:
    """``depth`` lists, each holding the next (the innermost empty)."""
    return struct.pack("<BI", _abi.TAG_LIST, 1) * (depth - 1) + struct.pack("<BI", _abi.TAG_LIST, 0)


def check_shape(value: Any, depth: int = 0) -> None:
    """A decoded value: scalars, lists and str-keyed dicts, at most MAX_DEPTH deep."""
    if isinstance(value, list | dict):
        if depth >= _abi.MAX_DEPTH:
            raise Failure(f"decoded containers nested deeper than {_abi.MAX_DEPTH}")
        if isinstance(value, dict) and not all(type(k) is str for k in value):
            raise Failure("decoded a dict key that is not a str")
        for item in value.values() if isinstance(value, dict) else value:
            check_shape(item, depth + 1)
    elif not (value is None or type(value) in (bool, int, float, str, bytes)):
        raise Failure(f"decoded a {type(value).__name__}")


def record_corpus() -> dict[str, list[bytes]]:
    values = [encode_value(v, "v") for v in SAMPLE_VALUES] + [nested(_abi.MAX_DEPTH), nested(_abi.MAX_DEPTH + 1)]
    names = [encode_string(n.encode()) for n in ("f", "ping", "a" * 255, "é")]
    hostcalls = [
        names[i % len(names)] + bytes([k]) + b"".join(values[(i + j) % len(values)] for j in range(k))
        for i in range(8)
        for k in (0, 1, 3, 16)
    ]
    tables = [struct.pack("<I", 0)]
    for count in (1, 2, 5):
        entries = b"".join(
            encode_string(f"fn{i}".encode())
            + bytes([(0, 1, 2, 3, 4, 5, 8)[i % 7], i % 4, *[(1, 2, 3, 4, 5, 8)[(i + j) % 6] for j in range(i % 4)]])
            for i in range(count)
        )
        tables.append(struct.pack("<I", count) + entries)
    results = [b"\x00" + v for v in values] + [b"\x01" + names[1], b"\x02" + encode_string(b"bad arg")]
    logs = [bytes([lvl]) + encode_string(m) for lvl in (10, 20, 30, 40, 50) for m in (b"", b"hi", "é".encode())]
    return {"value": values, "table": tables, "hostcall": hostcalls, "result": results, "log": logs}


# ---- checks per target -----------------------------------------------------------------------


class Failure(Exception):
    pass


def run_decoder(decode: Callable[[memoryview, int], Any], data: bytes, length: int, tail: bytes) -> tuple[str, Any]:
    buf = memoryview(bytearray(data[:length] + tail))
    try:
        return "ok", decode(buf, length)
    except GuestProtocolError as exc:
        return "error", str(exc)
    except Exception as exc:  # anything else is a bug
        raise Failure(f"{type(exc).__name__}: {exc}") from exc


def tail_independent(decode: Callable[[memoryview, int], Any], data: bytes, rng: random.Random) -> tuple[str, Any]:
    length = len(data) if rng.random() < 0.7 else rng.randrange(len(data) + 1)
    a = run_decoder(decode, data, length, rng.randbytes(rng.randrange(0, 5)))
    b = run_decoder(decode, data, length, rng.randbytes(rng.randrange(1, 5)))
    if a != b and not (a[0] == b[0] == "ok" and repr(a[1]) == repr(b[1])):  # NaN != NaN
        raise Failure(f"looked past the declared length {length}: {a!r} vs {b!r}")
    return a


def decode_value(buf: memoryview, length: int) -> Any:
    r = Reader(buf, length, "value")
    v = r.value()
    r.done()
    return v


def decode_hostcall(buf: memoryview, length: int) -> Any:
    r = Reader(buf, length, "host-call request")
    name = r.text()
    args = decode_args(r)
    r.done()
    return name, args


def check_value(data: bytes, rng: random.Random) -> bool:
    kind, value = tail_independent(decode_value, data, rng)
    if kind == "ok":
        check_shape(value)
    return kind == "ok"


def check_table(data: bytes, rng: random.Random) -> bool:
    kind, ready = tail_independent(decode_ready, data, rng)
    if kind == "ok":
        table, flags = ready
        if flags & ~_abi.READY_FLAGS:
            raise Failure(f"accepted unknown READY flags 0x{flags:x}")
        for name, fn in table.items():
            if not (0 < len(name.encode()) <= _abi.MAX_NAME and fn.returns in _abi.SIGNATURE_TAGS
                    and len(fn.params) <= _abi.MAX_PARAMS
                    and all(p in _abi.SIGNATURE_TAGS and p != _abi.TAG_NONE for p in fn.params)):
                raise Failure(f"accepted a bad signature {fn!r}")
    return kind == "ok"


def check_hostcall(data: bytes, rng: random.Random) -> bool:
    kind, decoded = tail_independent(decode_hostcall, data, rng)
    if kind == "ok" and len(decoded[1]) > _abi.MAX_PARAMS:
        raise Failure("too many arguments accepted")
    return kind == "ok"


OUTPUT_SIZE = 4096


def output_with(record: bytes) -> memoryview:
    output = memoryview(bytearray(OUTPUT_SIZE))
    record = record[:OUTPUT_SIZE]
    output[: len(record)] = record
    return output


RESULT_TYPES: dict[int, Any] = {0: type(None), 1: bool, 2: int, 3: float, 4: str, 5: bytes, 8: object}


def check_result(data: bytes, rng: random.Random) -> bool:
    from aionub._wire import GuestFunction

    returns = rng.choice(sorted(RESULT_TYPES))
    data = data[:OUTPUT_SIZE]
    try:
        value = decode_result(GuestFunction("f", (), returns), output_with(data), len(data), "<fuzz>")
    except GuestProtocolError:
        return False  # poisons the sandbox
    except (GuestFunctionNotFound, TypeError):
        return True  # a clean error: does not poison
    except Exception as exc:
        raise Failure(f"{type(exc).__name__}: {exc}") from exc
    if returns == _abi.TAG_ANY:
        check_shape(value)
    elif type(value) is not RESULT_TYPES[returns]:
        raise Failure(f"declared {RESULT_TYPES[returns].__name__}, got {type(value).__name__}")
    return True


def check_log(data: bytes, rng: random.Random) -> bool:
    import logging

    logging.getLogger("aionub.guest").disabled = True
    data = data[:OUTPUT_SIZE]
    try:
        GuestServices({}, 0, OUTPUT_SIZE, 1 << 20).emit_log(output_with(data), len(data))
    except GuestProtocolError:
        return False
    except Exception as exc:
        raise Failure(f"{type(exc).__name__}: {exc}") from exc
    return True


def check_event(data: bytes, rng: random.Random) -> bool:
    event = _native.ffi.new("struct ab_event *")
    kind = rng.randrange(1, 10) if rng.random() < 0.9 else rng.getrandbits(32)
    event.kind = kind
    record = data[:OUTPUT_SIZE]
    event.length = len(record)
    event.vector = rng.choice((0, 6, 8, 13, 14, 31, rng.getrandbits(64)))
    event.error_code = rng.getrandbits(64)
    event.rip = rng.getrandbits(64)
    event.address = rng.getrandbits(64)
    event.detail = rng.getrandbits(64)
    event.exit_reason = rng.choice((0, 2, 5, 6, 8, 9, 17, rng.getrandbits(32)))
    event.error = rng.randrange(-(2**31), 2**31)
    event.message = rng.randbytes(rng.randrange(200))
    layout = _native.ffi.new("struct ab_layout *")
    layout.guard_addr = rng.choice((event.address & ~0xFFF, rng.getrandbits(64)))
    output = memoryview(bytearray(OUTPUT_SIZE))
    output[: len(record)] = record
    try:
        exc = event_error(kind, event, output, layout)
        str(exc)
    except Exception as e:
        raise Failure(f"{type(e).__name__}: {e}") from e
    if not isinstance(exc, POISONING):
        raise Failure(f"event {kind} became {type(exc).__name__}")
    return not isinstance(exc, GuestProtocolError)


# ---- the ELF loader ----------------------------------------------------------------------------------

ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")


def elf_from_fields(rng: random.Random) -> bytes:
    def pick(*choices: int) -> int:
        return rng.choice(choices) if rng.random() < 0.8 else rng.getrandbits(64)

    segments = []
    for _ in range(rng.randrange(0, 18)):
        segments.append(PHDR.pack(
            rng.choice((1, 1, 1, 2, 3, 4, 6, 0x6474E551)), rng.randrange(8),
            pick(0, 0x1000, 0x2000, 64), pick(0x100000, 0x101000, 0x102000, 0xFFF, 0x7FF000),
            0, pick(0, 0x100, 0x1000, 0x3000), pick(0, 0x1000, 0x800000, 0x10000000), 0x1000,
        ))
    phoff = rng.choice((64, 64, 0, 8, rng.randrange(0, 0x4000), rng.getrandbits(64)))
    phnum = max(0, min(0xFFFF, len(segments) + rng.randrange(-2, 3)))
    header = ELF_HEADER.pack(
        b"\x7fELF\x02\x01\x01" + bytes(9), rng.choice((2, 2, 2, 3, 1)), rng.choice((62, 62, 3)), 1,
        pick(0x100000, 0x100010, 0x101000), phoff, 0, 0, rng.choice((64, 64, 0)), rng.choice((56, 56, 0)),
        phnum, 64, 0, 0,
    )
    table = b"".join(segments)
    image = bytearray(max(64, rng.randrange(0, 0x4000)))
    image[:64] = header
    if phoff + len(table) <= 0x10000:
        image.extend(bytes(max(0, phoff + len(table) - len(image))))
        image[phoff : phoff + len(table)] = table
    return bytes(image)


_default_cfg: Any = None
RUN_ACCEPTED = 0.0  # --run-accepted: fraction of accepted images to boot in a sandbox
BOOTED = {"images": 0, "started": 0}


def boot(image: bytes) -> None:
    """Create a sandbox from an image the loader accepted (it runs the
    guest's initialisation) and, if it starts, call it: any outcome but a
    typed SandboxError, or a hang, is a bug."""
    import asyncio

    async def run() -> None:
        BOOTED["images"] += 1
        try:
            async with aionub.Sandbox.create(image, init_timeout=1.0) as sb:
                BOOTED["started"] += 1
                for name in list(sb.functions)[:3]:
                    fn = sb.functions[name]
                    args = [{1: True, 2: 1, 3: 1.0, 4: "s", 5: b"b"}[t] for t in fn.params]
                    try:
                        await sb.call(name, *args, timeout=0.5)
                    except aionub.SandboxPoisoned:
                        break
                    except (aionub.SandboxError, TypeError):
                        pass
        except aionub.SandboxError:
            pass

    try:
        asyncio.run(asyncio.wait_for(run(), 10))
    except TimeoutError:
        raise Failure("booting an accepted image hung") from None
    except Exception as exc:
        raise Failure(f"booting an accepted image: {type(exc).__name__}: {exc}") from exc


def check_elf_image(image: bytes, rng: random.Random) -> bool:
    global _default_cfg
    if _default_cfg is None:
        _default_cfg = aionub.SandboxConfig().to_native()
    cfg = _default_cfg
    if rng.random() < 0.05:
        cfg = aionub.SandboxConfig().to_native()
        cfg.memory_size = rng.choice((2 << 20, 8 << 20, 256 << 20, rng.getrandbits(64)))
        cfg.stack_size = rng.choice((16384, 256 << 10, rng.getrandbits(64)))
        cfg.input_size = rng.choice((4096, 64 << 10, rng.getrandbits(64)))
        cfg.output_size = rng.choice((4096, 64 << 10, rng.getrandbits(64)))
    errbuf = _native.ffi.new("char[]", 256)
    rc = _native.lib.ab_elf_validate(cfg, image, len(image), errbuf, 256)
    message = _native.ffi.string(errbuf).decode("utf-8", "replace")
    if rc not in (0, -22) or (rc and not message.startswith(("elf: ", "config: "))):
        raise Failure(f"ab_elf_validate returned {rc}: {message!r}")
    if rc == 0 and cfg is _default_cfg and RUN_ACCEPTED and rng.random() < RUN_ACCEPTED:
        boot(image)
    return rc == 0


CHECKS: dict[str, Callable[[bytes, random.Random], bool]] = {
    "value": check_value,
    "table": check_table,
    "hostcall": check_hostcall,
    "result": check_result,
    "log": check_log,
    "event": check_event,
    "elf": check_elf_image,
}


def elf_corpus() -> list[bytes]:
    images = [Path(aionub.DEMO_GUEST).read_bytes()]
    extra = os.environ.get("FUZZ_ELF_SEEDS")
    for path in extra.split(os.pathsep) if extra else ():
        images.append(Path(path).read_bytes())
    return images


def make_input(target: str, rng: random.Random, corpus: list[bytes]) -> bytes:
    if target == "elf":
        roll = rng.random()
        if roll < 0.35:
            return elf_from_fields(rng)
        base = rng.choice(corpus)
        # Most mutations in the headers, where the loader looks.
        head = base[:1024]
        if roll < 0.9:
            return mutate(rng, head, []) + base[1024:]
        return mutate(rng, base, [])
    return mutate(rng, rng.choice(corpus), corpus)


# ---- workers ----------------------------------------------------------------------------------------


def run_chunk(target: str, seed: int, count: int, trace: str | None = None) -> tuple[int, int, list[str]]:
    """Check `count` inputs; returns (count, how many were accepted, failures)."""
    rng = random.Random(seed)
    corpus = elf_corpus() if target == "elf" else record_corpus()[target] if target != "event" else (
        record_corpus()["value"] + record_corpus()["log"]
    )
    check = CHECKS[target]
    failures: list[str] = []
    accepted = 0
    trace_fd = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if trace else -1
    for _ in range(count):
        data = make_input(target, rng, corpus)
        if trace_fd >= 0:
            os.lseek(trace_fd, 0, os.SEEK_SET)
            os.ftruncate(trace_fd, 0)
            os.write(trace_fd, data)
        try:
            accepted += check(data, rng)
        except Failure as exc:
            if len(failures) < MAX_REPORTED:
                failures.append(f"{target}: {exc}\n    input ({len(data)} bytes): {data[:200].hex()}")
    if trace_fd >= 0:
        os.close(trace_fd)
    return count, accepted, failures


def _child(conn: Any, target: str, seed: int, count: int, run_accepted: float) -> None:
    global RUN_ACCEPTED
    RUN_ACCEPTED = run_accepted
    conn.send((*run_chunk(target, seed, count), dict(BOOTED)))
    conn.close()


def find_crash(target: str, seed: int, count: int, out_dir: Path) -> str:
    """Re-run a chunk whose process died, saving each input before it is
    checked: the file then holds the input that crashed it."""
    trace = out_dir / f"crash-{target}-{seed}.bin"
    proc = multiprocessing.get_context("fork").Process(target=run_chunk, args=(target, seed, count, str(trace)))
    proc.start()
    proc.join()
    if proc.exitcode == 0:
        trace.unlink(missing_ok=True)
        return f"{target}: chunk {seed} killed its process once but passed when re-run"
    return f"{target}: crashed (exit code {proc.exitcode}); the input is saved in {trace}"


booted_total: dict[str, int] = {}


def run_all(chunks: list[tuple[str, int, int]], workers: int, out_dir: Path, run_accepted: float,
            progress: Callable[[str, int, int, list[str]], None]) -> list[str]:
    """Each chunk in its own forked process, `workers` at a time; a process
    that dies without a result is reported as a crash."""
    ctx = multiprocessing.get_context("fork")
    crashes: list[str] = []
    queue = list(chunks)
    booted_total.update(images=0, started=0)
    running: list[tuple[Any, Any, tuple[str, int, int]]] = []
    while queue or running:
        while queue and len(running) < workers:
            chunk = queue.pop(0)
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(child, *chunk, run_accepted))
            proc.start()
            child.close()
            running.append((proc, parent, chunk))
        multiprocessing.connection.wait([conn for _, conn, _ in running])
        still = []
        for proc, conn, chunk in running:
            if conn.poll():
                try:
                    count, accepted, found, booted = conn.recv()
                except EOFError:  # died before sending
                    proc.join()
                    crashes.append(find_crash(*chunk, out_dir))
                    progress(chunk[0], chunk[2], 0, [])
                    continue
                proc.join()
                progress(chunk[0], count, accepted, found)
                for key in booted_total:
                    booted_total[key] += booted[key]
            else:
                still.append((proc, conn, chunk))
        running = still
    return crashes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=2_000_000, help="total inputs (default 2,000,000)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ",".join(TARGETS))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seed", type=int, default=None, help="base seed (default: random, printed)")
    parser.add_argument("--out", default=".", help="where crashing inputs are saved")
    parser.add_argument("--run-accepted", type=float, default=0.01, metavar="FRACTION",
                        help="boot this fraction of the ELF images the loader accepts in a real "
                             "sandbox (needs /dev/kvm; 0 to skip; default 0.01)")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    per_target = args.inputs // len(targets)
    chunks = [
        (target, seed * 1_000_003 + ti * 100_003 + i, min(CHUNK, per_target - i * CHUNK))
        for ti, target in enumerate(targets)
        for i in range((per_target + CHUNK - 1) // CHUNK)
    ]
    print(f"fuzz_long: {per_target * len(targets):,} inputs over {', '.join(targets)}; "
          f"{args.workers} workers; seed {seed}", flush=True)
    done = dict.fromkeys(targets, 0)
    accepted = dict.fromkeys(targets, 0)
    failures: list[str] = []
    started = time.monotonic()
    next_report = 200_000

    def progress(target: str, count: int, ok: int, found: list[str]) -> None:
        nonlocal next_report
        done[target] += count
        accepted[target] += ok
        failures.extend(found)
        total = sum(done.values())
        if total >= next_report:
            print(f"  {total:,} inputs, {time.monotonic() - started:.0f} s", flush=True)
            next_report += 200_000

    failures.extend(run_all(chunks, args.workers, Path(args.out), args.run_accepted, progress))
    elapsed = time.monotonic() - started
    total = sum(done.values())
    print(f"fuzz_long: {total:,} inputs in {elapsed:.1f} s ({total / elapsed:,.0f}/s)")
    print("  target        inputs   accepted (decoded / valid)")
    for target in targets:
        print(f"  {target:9} {done[target]:>10,} {accepted[target]:>10,}")
    if booted_total.get("images"):
        print(f"  accepted ELF images booted in a sandbox: {booted_total['images']:,} "
              f"({booted_total['started']:,} started, the rest refused with a typed error)")
    if failures:
        print(f"{len(failures)} FAILURES:")
        for f in failures:
            print("  " + f)
        return 1
    print("no failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())

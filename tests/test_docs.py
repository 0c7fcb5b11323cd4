"""Every code sample in the docs runs.

The fenced blocks of README.md, docs/*.md and native/guest/README.md are
taken by language (the first word of the info string):

- ``python``: run in a fresh interpreter, in a directory holding the
  document's C files (below). Top-level ``await`` is allowed: such a sample
  runs as a coroutine under ``asyncio.run``.
- ``c``: compiled with ``aionub.build_guest`` and loaded in a sandbox; each
  comment line ``/* fn(args) == result */`` (Python literals) is a call that
  must return that result, and every C sample has at least one. A C block
  whose info string says ``file=NAME`` is also written to NAME for the
  document's Python samples.
- any language in ``SKIPPED`` is not run, for the reason given there.
"""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import aionub

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "native" / "guest" / "README.md"]

SKIPPED = {
    "sh": "shell commands: installing is what CI does, and the CLI is tested in tests/test_cli.py",
    "text": "not code: layouts, grammars and diagrams",
    "": "not code: layouts, grammars and diagrams",
}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^`\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
_EXPECT = re.compile(r"^\s*/\*\s*(?P<fn>\w+)\((?P<args>.*)\)\s*==\s*(?P<result>.+?)\s*\*/\s*$", re.M)

# Runs one Python sample: a script, or a coroutine when it awaits at the top level.
_RUNNER = """\
import ast, asyncio, sys, types
path = sys.argv[1]
code = compile(open(path).read(), path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__"}
result = eval(code, namespace)
if isinstance(result, types.CoroutineType):
    asyncio.run(result)
"""


@dataclass(frozen=True)
class Sample:
    doc: Path
    line: int
    language: str
    options: dict[str, str]
    code: str

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}:{self.language or 'plain'}"


def samples(doc: Path) -> list[Sample]:
    text = doc.read_text()
    found = []
    for m in _FENCE.finditer(text):
        words = m["info"].split()
        language = words[0].lower() if words else ""
        options = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        code = textwrap.dedent(re.sub(rf"^{m['indent']}", "", m["body"], flags=re.M))
        found.append(Sample(doc, text.count("\n", 0, m.start()) + 1, language, options, code))
    return found


ALL = [s for doc in DOCS for s in samples(doc)]


def test_the_docs_have_samples_of_each_kind() -> None:
    languages = {s.language for s in ALL}
    assert {"python", "c"} <= languages
    assert any(s.doc.name == "guest-sdk.md" and s.language == "c" for s in ALL)
    unknown = {s.id for s in ALL if s.language not in {"python", "c", *SKIPPED}}
    assert not unknown, f"samples in a language the tests neither run nor skip: {unknown}"


def prepare(doc: Path, workdir: Path) -> Path:
    """The document's working directory, holding its ``file=`` C blocks."""
    where = workdir / doc.relative_to(ROOT).as_posix().replace("/", "_")
    if not where.exists():
        where.mkdir(parents=True)
        for s in samples(doc):
            if s.language == "c" and "file" in s.options:
                (where / s.options["file"]).write_text(s.code)
    return where


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docs")


def expectations(code: str) -> list[tuple[str, tuple[Any, ...], Any]]:
    calls = []
    for m in _EXPECT.finditer(code):
        args = ast.literal_eval(f"({m['args']},)") if m["args"].strip() else ()
        calls.append((m["fn"], args, ast.literal_eval(m["result"])))
    return calls


@pytest.mark.parametrize("sample", ALL, ids=[s.id for s in ALL])
def test_sample(sample: Sample, workdir: Path) -> None:
    if sample.language in SKIPPED:
        pytest.skip(SKIPPED[sample.language])
    where = prepare(sample.doc, workdir)
    if sample.language == "python":
        script = where / f"sample_{sample.line}.py"
        script.write_text(sample.code)
        out = subprocess.run(
            [sys.executable, "-c", _RUNNER, str(script)], cwd=where, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, f"{sample.id} failed:\n{out.stdout}\n{out.stderr}"
    elif sample.language == "c":
        calls = expectations(sample.code)
        assert calls, f"{sample.id}: a C sample needs at least one '/* fn(args) == result */' line"
        source = where / f"sample_{sample.line}.c"
        source.write_text(sample.code)
        elf = aionub.build_guest(source, where / f"sample_{sample.line}.elf")

        async def run() -> None:
            async with aionub.Sandbox.create(elf) as sb:
                for fn, args, expected in calls:
                    assert await sb.call(fn, *args) == expected, f"{sample.id}: {fn}{args!r}"

        asyncio.run(run())
    else:
        pytest.fail(f"{sample.id}: no rule for language {sample.language!r}")

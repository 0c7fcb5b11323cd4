"""Pinned third-party source trees (musl, QuickJS, Lua, SQLite, zlib).

Third-party code never lives in this repository. Each :class:`Source` names an
artifact on a package registry, fetched with that registry's ordinary client
(``pip download``, ``npm pack``, ``apt-get source``), checked against its
SHA-256 before anything is extracted, and unpacked once into a cache::

    from aionub._sources import fetch
    musl_root = fetch("musl")          # .../sources/musl-0.13.0-3ce0c9f1
    sqlite = fetch("sqlite") / "sqlite3.c"

The cache directory is ``$AIONUB_CACHE_DIR``, else ``$XDG_CACHE_HOME/aionub``,
else ``~/.cache/aionub``; each tree is ``sources/<name>-<version>-<sha8>/``,
extracted into a temporary directory and renamed into place under a file lock,
so concurrent fetches are safe and a cached tree is returned without running
any client.

Offline, two ways avoid the network:

* ``AIONUB_SOURCE_<NAME>=/some/dir`` (e.g. ``AIONUB_SOURCE_MUSL``) uses a tree
  you unpacked yourself, laid out like the cached one; it is checked for the
  spec's required files (not hashed: there is no artifact to hash).
* A copy of the artifact itself (its exact file name, e.g.
  ``quickjs-1.19.4.tar.gz``) in ``<cache>/artifacts/`` is used instead of the
  client; it is hash-checked like a download.

This module imports only the standard library: ``setup.py`` may load it by file
path, like ``_build.py``. ``python -m aionub._sources fetch NAME`` prints a
tree's path; ``python -m aionub._sources list`` lists the specs.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Source",
    "SourceError",
    "SOURCES",
    "cache_dir",
    "fetch",
    "override_var",
]

KINDS = ("pypi-wheel", "pypi-sdist", "npm", "debian")

#: How long one registry client may run (seconds).
CLIENT_TIMEOUT = 900


class SourceError(Exception):
    """A source tree could not be obtained or did not pass its checks."""


@dataclass(frozen=True)
class Source:
    """One pinned third-party source tree.

    ``kind`` says which client fetches ``package`` at ``version``:
    ``pypi-wheel`` / ``pypi-sdist`` (``pip download``), ``npm`` (``npm pack``)
    or ``debian`` (``apt-get source --download-only``, which needs a
    ``deb-src`` entry in APT's sources). ``artifact`` is the file the client
    produces and ``sha256`` its hash. ``subdir`` is the directory inside the
    artifact that becomes the returned tree; ``only``, if given, limits the
    extraction to these paths under it. ``required`` are files (relative to
    the tree) that must exist. ``client_env`` is added to the client's
    environment (an sdist's ``setup.py`` runs when pip reads its metadata).
    """

    name: str
    kind: str
    package: str
    version: str
    artifact: str
    sha256: str
    subdir: str
    only: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    client_env: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: unknown source kind {self.kind!r} (one of {', '.join(KINDS)})")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")

    @property
    def key(self) -> str:
        """The cache entry's name: ``<name>-<version>-<sha8>`` (a Debian epoch,
        ``1:``, is left out, as in Debian's own file names)."""
        version = self.version.split(":", 1)[1] if self.kind == "debian" and ":" in self.version else self.version
        safe = "".join(c if c.isalnum() or c in "._+-" else "_" for c in version)
        return f"{self.name}-{safe}-{self.sha256[:8]}"

    @property
    def requirement(self) -> str:
        """What the client is asked for (``pkg==1.0``, ``pkg@1.0``, ``pkg=1.0``)."""
        sep = {"pypi-wheel": "==", "pypi-sdist": "==", "npm": "@", "debian": "="}[self.kind]
        return f"{self.package}{sep}{self.version}"


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            name="musl",
            description="musl libc sources and generated headers, as bundled in the ziglang 0.13.0 wheel",
            kind="pypi-wheel",
            package="ziglang",
            version="0.13.0",
            artifact="ziglang-0.13.0-py3-none-manylinux_2_12_x86_64.manylinux2010_x86_64.musllinux_1_1_x86_64.whl",
            sha256="3ce0c9f16547e5d61b32e0d226926e9a2552ef4b91fccf7ab5ea1a623a77824b",
            subdir="ziglang/lib/libc",
            only=("musl/", "include/generic-musl/", "include/x86_64-linux-musl/"),
            required=(
                "musl/src/math/sin.c",
                "musl/src/string/memcpy.c",
                "musl/src/stdlib/qsort.c",
                "musl/src/malloc/mallocng/malloc.c",
                "include/generic-musl/stdio.h",
                "include/x86_64-linux-musl/bits/alltypes.h",
            ),
        ),
        Source(
            name="quickjs",
            description="QuickJS 2021-03-27 (quickjs.c, libregexp, libunicode, libbf), from the quickjs sdist",
            kind="pypi-sdist",
            package="quickjs",
            version="1.19.4",
            artifact="quickjs-1.19.4.tar.gz",
            sha256="1205953abc24ff757f4a795304d5d61e4bf1e555c9ef6ec96a132d4b95535484",
            subdir="quickjs-1.19.4/upstream-quickjs",
            required=("quickjs.c", "quickjs.h", "libregexp.c", "libunicode.c", "cutils.c", "libbf.c", "VERSION"),
        ),
        Source(
            name="lua54",
            description="Lua 5.4 (core and standard library), from the lupa sdist",
            kind="pypi-sdist",
            package="lupa",
            version="2.8",
            artifact="lupa-2.8.tar.gz",
            sha256="d8022641b9ec8ecf2c5ecbe9f47e5a70e0b87c4b5ae921b92cb02a638e0acd08",
            subdir="lupa-2.8/third-party/lua54",
            required=("lua.h", "lauxlib.h", "lualib.h", "lapi.c", "lvm.c", "linit.c", "lbaselib.c", "makefile"),
            # pip reads an sdist's metadata by running its setup.py, and
            # lupa's builds the bundled LuaJIT (about a minute) unless told not to.
            client_env={"LUPA_NO_BUNDLE": "true"},
        ),
        Source(
            name="sqlite",
            description="the SQLite 3.53.2 amalgamation, from the better-sqlite3 npm package",
            kind="npm",
            package="better-sqlite3",
            version="12.11.1",
            artifact="better-sqlite3-12.11.1.tgz",
            sha256="ebf0ed75a7a59dbcb3b24bbd014ef49d9f15bc328e4adcbf516f2a8fadfa2835",
            subdir="package/deps/sqlite3",
            required=("sqlite3.c", "sqlite3.h"),
        ),
        Source(
            name="zlib",
            description="zlib 1.2.13, the upstream tarball of Debian bookworm's source package",
            kind="debian",
            package="zlib",
            version="1:1.2.13.dfsg-1",
            artifact="zlib_1.2.13.dfsg.orig.tar.bz2",
            sha256="71feb7947e3c00ef125f83b79a4e529bde31171e5babe48b391f06758d1ab0a1",
            subdir="zlib-1.2.13.dfsg",
            required=("zlib.h", "zconf.h", "deflate.c", "inflate.c", "compress.c", "uncompr.c"),
        ),
    )
}


def cache_dir() -> Path:
    """``$AIONUB_CACHE_DIR``, else ``$XDG_CACHE_HOME/aionub``, else ``~/.cache/aionub``."""
    explicit = os.environ.get("AIONUB_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "aionub"
    return Path.home() / ".cache" / "aionub"


def override_var(name: str) -> str:
    """The environment variable that points a source at a local tree."""
    return "AIONUB_SOURCE_" + "".join(c if c.isalnum() else "_" for c in name.upper())


def _spec(source: str | Source) -> Source:
    if isinstance(source, Source):
        return source
    try:
        return SOURCES[source]
    except KeyError:
        raise SourceError(f"unknown source {source!r}; known: {', '.join(SOURCES)}") from None


def check_tree(spec: Source, root: Path) -> None:
    """Raise SourceError unless ``root`` is a directory with the spec's required files."""
    if not root.is_dir():
        raise SourceError(f"{spec.name}: {root} is not a directory")
    missing = [rel for rel in spec.required if not (root / rel).is_file()]
    if missing:
        raise SourceError(f"{spec.name}: {root} lacks {', '.join(missing)}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(spec: Source, artifact: Path) -> None:
    """Raise SourceError unless ``artifact`` has the spec's SHA-256."""
    actual = sha256_file(artifact)
    if actual != spec.sha256:
        raise SourceError(
            f"{spec.name}: sha256 mismatch for {artifact.name}: expected {spec.sha256}, got {actual}; "
            f"the file was not extracted"
        )


def fetch(source: str | Source, *, cache: Path | None = None) -> Path:
    """The directory holding ``source``'s tree, fetching it on first use.

    ``source`` is a name from :data:`SOURCES` or a :class:`Source`. A local
    tree named by ``AIONUB_SOURCE_<NAME>`` wins; otherwise the cached tree is
    returned, or the artifact is obtained (``<cache>/artifacts/`` first, then
    the registry client), hash-checked, extracted and cached. Raises
    SourceError with what to do when any step fails.
    """
    spec = _spec(source)
    local = os.environ.get(override_var(spec.name))
    if local:
        root = Path(local).expanduser()
        try:
            check_tree(spec, root)
        except SourceError as exc:
            raise SourceError(f"{exc} (from {override_var(spec.name)})") from None
        return root

    base = (cache if cache is not None else cache_dir()) / "sources"
    final = base / spec.key
    if final.is_dir():  # trees appear by an atomic rename: a directory is complete
        check_tree(spec, final)
        return final

    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / f".{spec.key}.lock"):
        if final.is_dir():  # another process fetched it while we waited
            check_tree(spec, final)
            return final
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.key}-", dir=base))
        try:
            artifact = _obtain(spec, base.parent / "artifacts", work / "download")
            verify(spec, artifact)
            tree = work / "tree"
            _extract(spec, artifact, tree)
            check_tree(spec, tree)
            (tree / ".aionub-source.json").write_text(
                json.dumps(
                    {
                        "name": spec.name,
                        "kind": spec.kind,
                        "requirement": spec.requirement,
                        "artifact": spec.artifact,
                        "sha256": spec.sha256,
                        "subdir": spec.subdir,
                    },
                    indent=2,
                )
                + "\n"
            )
            os.rename(tree, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _obtain(spec: Source, artifacts: Path, dest: Path) -> Path:
    """The artifact: a copy in ``artifacts/`` if there is one, else the client's download."""
    dest.mkdir(parents=True)
    dropped = artifacts / spec.artifact
    if dropped.is_file():
        return dropped
    cmd = client_command(spec, dest)
    env = {**os.environ, **spec.client_env}
    try:
        proc = subprocess.run(
            cmd, cwd=dest, env=env, capture_output=True, text=True, check=False, timeout=CLIENT_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(_fetch_failed(spec, cmd, str(exc), artifacts)) from exc
    if proc.returncode != 0:
        raise SourceError(_fetch_failed(spec, cmd, proc.stderr or proc.stdout, artifacts))
    got = dest / spec.artifact
    if got.is_file():
        return got
    files = sorted(p for p in dest.iterdir() if p.is_file())
    raise SourceError(
        f"{spec.name}: `{' '.join(cmd)}` did not produce {spec.artifact} "
        f"(it produced: {', '.join(p.name for p in files) or 'nothing'})"
    )


def _pip() -> list[str]:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    raise SourceError("pip is not available: install it (python -m ensurepip) to fetch PyPI sources")


def client_command(spec: Source, dest: Path) -> list[str]:
    """The registry client's command line that downloads the artifact into ``dest``."""
    if spec.kind == "pypi-wheel":
        # The platform is pinned: the artifact (and its hash) must not depend on the host.
        return [*_pip(), "download", "--no-deps", "--only-binary=:all:",
                "--platform", "manylinux_2_12_x86_64", "-d", str(dest), spec.requirement]  # fmt: skip
    if spec.kind == "pypi-sdist":
        return [*_pip(), "download", "--no-deps", "--no-build-isolation", "--no-binary=:all:",
                "-d", str(dest), spec.requirement]  # fmt: skip
    if spec.kind == "npm":
        return ["npm", "pack", "--ignore-scripts", "--silent", spec.requirement]
    return ["apt-get", "source", "--download-only", spec.requirement]


def _fetch_failed(spec: Source, cmd: Sequence[str], output: str, artifacts: Path) -> str:
    lines = [f"could not fetch {spec.name} ({spec.requirement}): `{' '.join(cmd)}` failed:"]
    out = [line for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in out if not line.startswith("WARNING:")]  # pip's warnings are noise here
    lines += [f"    {line[:300]}" for line in (errors or out)[-12:]]
    if "bdist_wheel" in output:
        lines.append(
            "  pip reads an sdist's metadata with the setuptools installed here (--no-build-isolation); "
            "it needs the `wheel` package or setuptools >= 70.1: pip install wheel"
        )
    if spec.kind == "debian" and "deb-src" in output:
        lines.append(
            "  apt-get source needs a deb-src entry in APT's sources, then `apt-get update` "
            "(.ci/run adds /etc/apt/sources.list.d/aionub-deb-src.sources)"
        )
    lines.append(
        f"  Offline: set {override_var(spec.name)} to a directory holding the tree "
        f"(the contents of {spec.subdir}/ in {spec.artifact}; it must contain {', '.join(spec.required)}), "
        f"or put {spec.artifact} (sha256 {spec.sha256}) in {artifacts}/"
    )
    return "\n".join(lines)


def _selected(spec: Source, member: str) -> str | None:
    """The path of an archive member relative to the tree, or None to skip it."""
    prefix = spec.subdir.strip("/") + "/"
    if not member.startswith(prefix):
        return None
    rel = member[len(prefix):].strip("/")
    if not rel:
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise SourceError(f"{spec.name}: unsafe path {member!r} in {spec.artifact}")
    if spec.only and not any((rel + "/").startswith(o) or rel == o.rstrip("/") for o in spec.only):
        return None
    return rel


def _extract(spec: Source, artifact: Path, tree: Path) -> None:
    """Extract the members under ``spec.subdir`` (and ``spec.only``) into ``tree``."""
    tree.mkdir(parents=True)
    count = 0
    if artifact.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(artifact) as zf:
            for info in zf.infolist():
                rel = _selected(spec, info.filename)
                if rel is None or info.is_dir():
                    continue
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise SourceError(f"{spec.name}: symbolic link {info.filename!r} in {spec.artifact}")
                target = tree / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                count += 1
    else:
        with tarfile.open(artifact) as tf:
            for member in tf:
                rel = _selected(spec, member.name)
                if rel is None or member.isdir():
                    continue
                if not member.isfile():
                    raise SourceError(f"{spec.name}: {member.name!r} in {spec.artifact} is not a regular file")
                target = tree / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                data = tf.extractfile(member)
                if data is None:  # not reached for a regular file
                    raise SourceError(f"{spec.name}: cannot read {member.name!r} in {spec.artifact}")
                with data, open(target, "wb") as dst:
                    shutil.copyfileobj(data, dst)
                count += 1
    if count == 0:
        raise SourceError(f"{spec.name}: nothing under {spec.subdir}/ in {spec.artifact}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aionub._sources", description="Fetch pinned third-party source trees into the cache."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="fetch sources (default: all) and print their directories")
    p_fetch.add_argument("names", nargs="*", metavar="NAME", help=", ".join(SOURCES))
    sub.add_parser("list", help="list the pinned sources")
    opts = parser.parse_args(argv)
    if opts.command == "list":
        for s in SOURCES.values():
            print(f"{s.name:8} {s.kind:10} {s.requirement:28} {s.artifact}\n{'':8} sha256 {s.sha256}  {s.description}")
        return 0
    try:
        for name in opts.names or list(SOURCES):
            print(fetch(name))
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

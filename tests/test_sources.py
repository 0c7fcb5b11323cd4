"""Pinned third-party sources (aionub._sources): hash checks, the cache, offline
overrides, the file-list check, and a network fetch of every pinned spec.

The network tests fetch into the user's aionub cache (so later runs are
instant); set AIONUB_TESTS_OFFLINE=1 to skip them.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aionub import _sources
from aionub._sources import SOURCES, Source, SourceError

OFFLINE = os.environ.get("AIONUB_TESTS_OFFLINE") == "1"
SOURCES_PY = Path(_sources.__file__)


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _spec(data: bytes, *, artifact: str = "demo-1.0.tar.gz", sha256: str | None = None, **kw: object) -> Source:
    fields: dict[str, object] = {
        "name": "demo",
        "kind": "pypi-sdist",
        "package": "aionub-demo-source-that-does-not-exist",
        "version": "1.0",
        "artifact": artifact,
        "sha256": sha256 or hashlib.sha256(data).hexdigest(),
        "subdir": "demo-1.0/src",
        "required": ("a.c", "inc/a.h"),
    }
    fields.update(kw)
    return Source(**fields)  # type: ignore[arg-type]


FILES = {
    "demo-1.0/setup.py": b"raise SystemExit(1)\n",
    "demo-1.0/src/a.c": b"int a;\n",
    "demo-1.0/src/inc/a.h": b"extern int a;\n",
    "demo-1.0/src/extra/b.c": b"int b;\n",
}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("AIONUB_CACHE_DIR", str(root))
    monkeypatch.delenv("AIONUB_SOURCE_DEMO", raising=False)
    return root


def _drop(cache: Path, name: str, data: bytes) -> Path:
    """Put an artifact in <cache>/artifacts/, the offline drop-in directory."""
    path = cache / "artifacts" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _no_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a registry client was run: {args}")

    monkeypatch.setattr(_sources.subprocess, "run", refuse)


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIONUB_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert _sources.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("AIONUB_CACHE_DIR")
    assert _sources.cache_dir() == tmp_path / "x" / "aionub"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _sources.cache_dir() == tmp_path / "home" / ".cache" / "aionub"


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="unknown source kind"):
        _spec(b"", kind="git")
    with pytest.raises(ValueError, match="sha256"):
        _spec(b"", sha256="abc")
    zlib = SOURCES["zlib"]
    assert zlib.key == "zlib-1.2.13.dfsg-1-71feb794"  # no Debian epoch (a colon) in the path
    assert zlib.requirement == "zlib=1:1.2.13.dfsg-1"
    assert SOURCES["sqlite"].requirement == "better-sqlite3@12.11.1"
    assert _sources.override_var("lua54") == "AIONUB_SOURCE_LUA54"


def test_unknown_source() -> None:
    with pytest.raises(SourceError, match="unknown source 'nope'; known: musl, quickjs"):
        _sources.fetch("nope")


def test_extract_verify_and_cache_hit(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tar_gz(FILES)
    spec = _spec(data)
    _drop(cache, spec.artifact, data)
    _no_clients(monkeypatch)
    root = _sources.fetch(spec)
    assert root == cache / "sources" / f"demo-1.0-{spec.sha256[:8]}"
    assert (root / "a.c").read_bytes() == b"int a;\n"
    assert (root / "extra" / "b.c").is_file()
    assert not (root / "setup.py").exists()  # only the subdirectory of interest
    assert '"sha256"' in (root / ".aionub-source.json").read_text()
    # No temporary directories are left behind.
    assert sorted(p.name for p in (cache / "sources").iterdir() if not p.name.endswith(".lock")) == [root.name]

    # A cache hit reads nothing but the tree: not even the artifact.
    (cache / "artifacts" / spec.artifact).unlink()
    t0 = time.perf_counter()
    assert _sources.fetch(spec) == root
    assert time.perf_counter() - t0 < 0.05


def test_only_limits_extraction(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tar_gz(FILES)
    spec = _spec(data, only=("inc/", "a.c"))
    _drop(cache, spec.artifact, data)
    _no_clients(monkeypatch)
    root = _sources.fetch(spec)
    assert (root / "a.c").is_file() and (root / "inc" / "a.h").is_file()
    assert not (root / "extra").exists()


def test_wheel_extraction(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in FILES.items():
            zf.writestr(name, content)
    data = buf.getvalue()
    spec = _spec(data, kind="pypi-wheel", artifact="demo-1.0-py3-none-any.whl")
    _drop(cache, spec.artifact, data)
    _no_clients(monkeypatch)
    root = _sources.fetch(spec)
    assert (root / "inc" / "a.h").read_bytes() == b"extern int a;\n"


def test_hash_mismatch_rejected(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tar_gz(FILES)
    spec = _spec(data, sha256="0" * 64)
    _drop(cache, spec.artifact, data)
    _no_clients(monkeypatch)
    expected = f"sha256 mismatch for demo-1.0.tar.gz: expected 0{{64}}, got {hashlib.sha256(data).hexdigest()}"
    with pytest.raises(SourceError, match=expected):
        _sources.fetch(spec)
    assert not (cache / "sources" / spec.key).exists()
    assert [p.name for p in (cache / "sources").iterdir() if p.name.startswith(".tmp")] == []


def test_required_files_checked_on_extraction(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tar_gz({k: v for k, v in FILES.items() if not k.endswith("a.h")})
    spec = _spec(data)
    _drop(cache, spec.artifact, data)
    _no_clients(monkeypatch)
    with pytest.raises(SourceError, match=r"demo: .* lacks inc/a\.h"):
        _sources.fetch(spec)
    assert not (cache / "sources" / spec.key).exists()


def test_unsafe_member_rejected(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tar_gz({**FILES, "demo-1.0/src/../../evil.c": b"x"})
    spec = _spec(data)
    _drop(cache, spec.artifact, data)
    _no_clients(monkeypatch)
    with pytest.raises(SourceError, match="unsafe path"):
        _sources.fetch(spec)
    assert not (cache.parent / "evil.c").exists()


def test_nothing_under_subdir(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tar_gz(FILES)
    spec = _spec(data, subdir="demo-1.0/nothing-here")
    _drop(cache, spec.artifact, data)
    _no_clients(monkeypatch)
    with pytest.raises(SourceError, match=r"nothing under demo-1\.0/nothing-here/"):
        _sources.fetch(spec)


def test_concurrent_fetches_extract_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tar_gz(FILES)
    spec = _spec(data)
    _drop(cache, spec.artifact, data)
    _no_clients(monkeypatch)
    calls = 0
    real_extract = _sources._extract

    def counting_extract(*args: object) -> None:
        nonlocal calls
        calls += 1
        time.sleep(0.05)  # widen the window in which the others wait on the lock
        real_extract(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(_sources, "_extract", counting_extract)
    with ThreadPoolExecutor(4) as pool:
        roots = list(pool.map(lambda _: _sources.fetch(spec), range(4)))
    assert len(set(roots)) == 1
    assert calls == 1


def test_offline_override(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "my-demo"
    (tree / "inc").mkdir(parents=True)
    (tree / "a.c").write_text("int a;\n")
    (tree / "inc" / "a.h").write_text("extern int a;\n")
    spec = _spec(b"", sha256="1" * 64)  # no artifact anywhere: only the override can work
    _no_clients(monkeypatch)
    monkeypatch.setenv("AIONUB_SOURCE_DEMO", str(tree))
    assert _sources.fetch(spec) == tree
    assert not (cache / "sources").exists()  # the cache is not touched

    (tree / "inc" / "a.h").unlink()
    with pytest.raises(SourceError, match=r"lacks inc/a\.h \(from AIONUB_SOURCE_DEMO\)"):
        _sources.fetch(spec)


def test_client_failure_says_what_to_set(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(b"", kind="npm", package="aionub-no-such-package")
    monkeypatch.setenv("PATH", str(cache / "empty-bin"))  # no npm
    with pytest.raises(SourceError) as info:
        _sources.fetch(spec)
    message = str(info.value)
    assert "could not fetch demo (aionub-no-such-package@1.0)" in message
    assert "set AIONUB_SOURCE_DEMO to a directory" in message
    assert f"put demo-1.0.tar.gz (sha256 {spec.sha256}) in {cache / 'artifacts'}/" in message
    assert [p.name for p in (cache / "sources").iterdir() if p.name.startswith(".tmp")] == []


def test_client_commands(tmp_path: Path) -> None:
    wheel = _sources.client_command(SOURCES["musl"], tmp_path)
    assert {"download", "--no-deps", "--only-binary=:all:"} <= set(wheel)
    assert wheel[-5:] == ["--platform", "manylinux_2_12_x86_64", "-d", str(tmp_path), "ziglang==0.13.0"]
    sdist = _sources.client_command(SOURCES["quickjs"], tmp_path)
    assert {"download", "--no-deps", "--no-build-isolation", "--no-binary=:all:"} <= set(sdist)
    assert sdist[-1] == "quickjs==1.19.4"
    assert _sources.client_command(SOURCES["sqlite"], tmp_path)[:2] == ["npm", "pack"]
    assert _sources.client_command(SOURCES["zlib"], tmp_path) == [
        "apt-get", "source", "--download-only", "zlib=1:1.2.13.dfsg-1",
    ]  # fmt: skip


# --- the real specs, over the network (cached in the user's aionub cache) ---

network = pytest.mark.skipif(OFFLINE, reason="AIONUB_TESTS_OFFLINE=1")


@network
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(SOURCES))
def test_fetch_pinned_source(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_sources.override_var(name), raising=False)
    root = _sources.fetch(name)
    assert root == _sources.cache_dir() / "sources" / SOURCES[name].key
    _sources.check_tree(SOURCES[name], root)


@network
@pytest.mark.timeout(900)
def test_cached_fetch_runs_no_client(tmp_path: Path) -> None:
    """With every tree cached, the CLI prints the paths with an empty PATH
    (no pip, npm or apt-get to run) and without importing pip."""
    for name in SOURCES:
        _sources.fetch(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIONUB_SOURCE_")}
    env["PATH"] = str(tmp_path)
    code = (
        "import runpy, sys; sys.argv = ['_sources', 'fetch']; "
        f"runpy.run_path({str(SOURCES_PY)!r}, run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [Path(line).name for line in proc.stdout.split()] == [s.key for s in SOURCES.values()]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}  # -X importtime
    assert "pip" not in imported

"""Telemetry with OpenTelemetry: spans, attributes and metrics through the
SDK's in-memory exporter and reader (providers passed explicitly with
aionub.telemetry.configure, never the process-wide globals), nothing
without a provider, and the Prometheus example scraped over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, StatusCode

import aionub
import aionub.telemetry
from aionub import _telemetry

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"memory_size": 4 * 1024 * 1024}


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return ("asyncio", {})  # the instrumentation does not depend on the loop; test_trio covers the rest


class Otel:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if name is None or s.name == name]

    def span(self, name: str, **attributes: Any) -> ReadableSpan:
        """The one finished span ``name`` with these attributes."""
        found = [
            s for s in self.finished(name)
            if all(s.attributes is not None and s.attributes.get(k) == v for k, v in attributes.items())
        ]
        assert len(found) == 1, (name, attributes, [dict(s.attributes or {}) for s in self.finished(name)])
        return found[0]

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points."""
        out: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out.setdefault(metric.name, []).extend(metric.data.data_points)
        return out

    def value(self, name: str, **attributes: Any) -> Any:
        """Sum (counters) or count (histograms) of the points of ``name`` whose attributes match."""
        total = 0
        for point in self.metrics().get(name, []):
            if all(point.attributes.get(k) == v for k, v in attributes.items()):
                total += point.value if hasattr(point, "value") else point.count
        return total


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    assert aionub.telemetry.configure(tracer_provider=o.tracer_provider, meter_provider=o.meter_provider)
    try:
        yield o
    finally:
        aionub.telemetry.reset()  # back to following the (unset) globals: off
        o.tracer_provider.shutdown()
        o.meter_provider.shutdown()


async def test_ok_call_span_and_metrics(otel: Otel) -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, name="tenant-7") as sb:
        assert await sb.call("add", 2, 3) == 5
        sha = sb._engine.image_sha256
    span = otel.span("aionub.call", **{"aionub.function": "add"})
    attrs = dict(span.attributes or {})
    assert attrs["aionub.guest"] == "tenant-7"
    assert attrs["aionub.guest.sha256"] == sha and len(sha) == 16
    assert attrs["aionub.sandbox.id"] == sb.id
    assert attrs["aionub.outcome"] == "ok"
    assert attrs["aionub.kicks"] == 0 and attrs["aionub.host_calls"] == 0
    assert span.status.status_code is StatusCode.UNSET
    create = otel.span("aionub.create")
    assert create.attributes is not None and create.attributes["aionub.guest"] == "tenant-7"
    assert create.attributes["aionub.outcome"] == "ok"
    assert otel.value("aionub.calls", **{"aionub.function": "add", "aionub.outcome": "ok"}) == 1
    assert otel.value("aionub.call.duration", **{"aionub.function": "add", "aionub.outcome": "ok"}) == 1
    assert otel.value("aionub.kills") == 0
    assert otel.value("aionub.sandboxes") == 0  # created, then closed


async def test_sandboxes_alive(otel: Otel) -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL), aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL):
        assert otel.value("aionub.sandboxes") == 2
    assert otel.value("aionub.sandboxes") == 0


async def test_timeout_is_a_kill_with_a_kick(otel: Otel) -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        with pytest.raises(aionub.CallTimeout):
            await sb.call("spin", timeout=0.05)
    span = otel.span("aionub.call", **{"aionub.function": "spin"})
    attrs = dict(span.attributes or {})
    assert attrs["aionub.outcome"] == "timeout"
    assert attrs["aionub.timeout"] == 0.05
    assert attrs["aionub.kicks"] >= 1
    assert span.status.status_code is StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in span.events if e.attributes] == [
        "aionub._exceptions.CallTimeout"]
    assert otel.value("aionub.kills", **{"aionub.outcome": "timeout"}) == 1
    assert otel.value("aionub.calls", **{"aionub.outcome": "timeout"}) == 1
    assert "aionub.stale_kicks" in otel.metrics()


async def test_cancelled_task(otel: Otel) -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        with anyio.move_on_after(0.05):
            await sb.call("spin")
    span = otel.span("aionub.call", **{"aionub.function": "spin"})
    assert span.attributes is not None and span.attributes["aionub.outcome"] == "cancelled"
    assert span.status.status_code is StatusCode.ERROR
    assert otel.value("aionub.kills", **{"aionub.outcome": "cancelled"}) == 1


async def test_fault_records_the_vector(otel: Otel) -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        with pytest.raises(aionub.GuestFault) as info:
            await sb.call("fault", "div0")
    span = otel.span("aionub.call", **{"aionub.function": "fault"})
    attrs = dict(span.attributes or {})
    assert attrs["aionub.outcome"] == "fault"
    assert attrs["aionub.fault.vector"] == info.value.vector == 0  # #DE
    assert span.status.status_code is StatusCode.ERROR
    assert span.events[0].attributes is not None
    assert str(span.events[0].attributes["exception.type"]).endswith("GuestFault")
    assert otel.value("aionub.calls", **{"aionub.outcome": "fault"}) == 1
    assert otel.value("aionub.kills") == 0


async def test_abort_and_poisoned(otel: Otel) -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        with pytest.raises(aionub.GuestAborted):
            await sb.call("abort", 42, "out of patience")
        with pytest.raises(aionub.SandboxPoisoned):
            await sb.call("add", 1, 1)
    span = otel.span("aionub.call", **{"aionub.function": "abort"})
    assert span.attributes is not None
    assert (span.attributes["aionub.outcome"], span.attributes["aionub.abort.code"]) == ("aborted", 42)
    assert span.status.status_code is StatusCode.ERROR
    assert otel.span("aionub.call", **{"aionub.function": "add"}).attributes["aionub.outcome"] == "poisoned"  # type: ignore[index]


async def test_host_calls_are_child_spans(otel: Otel) -> None:
    def double(x: int) -> int:
        return 2 * x

    async def fails(x: int) -> int:
        await anyio.sleep(0)
        raise KeyError(x)

    async with aionub.Sandbox.create(aionub.DEMO_GUEST, host_functions={"double": double, "fails": fails}) as sb:
        assert await sb.call("call_host", "double", 21) == 42
        with pytest.raises(aionub.HostFunctionError):
            await sb.call("call_host", "fails", 1)
    ok_call, failed_call = otel.finished("aionub.call")
    ok_host = otel.span("aionub.host_call", **{"aionub.host_function": "double"})
    failed_host = otel.span("aionub.host_call", **{"aionub.host_function": "fails"})
    assert ok_host.parent is not None and ok_host.parent.span_id == ok_call.context.span_id
    assert failed_host.parent is not None and failed_host.parent.span_id == failed_call.context.span_id
    assert ok_call.attributes is not None and ok_call.attributes["aionub.host_calls"] == 1
    assert ok_host.attributes is not None and ok_host.attributes["aionub.outcome"] == "ok"
    assert failed_host.attributes is not None and failed_host.attributes["aionub.outcome"] == "error"
    assert failed_host.status.status_code is StatusCode.ERROR
    assert failed_host.events[0].attributes is not None
    # The host function's own exception:
    assert str(failed_host.events[0].attributes["exception.type"]).endswith("KeyError")
    assert failed_call.attributes is not None
    assert failed_call.attributes["aionub.outcome"] == "host_function_error"
    assert otel.value("aionub.host_calls", **{"aionub.host_function": "double", "aionub.outcome": "ok"}) == 1
    assert otel.value("aionub.host_calls", **{"aionub.host_function": "fails", "aionub.outcome": "error"}) == 1


async def test_snapshot_and_restore_spans(otel: Otel) -> None:
    async with aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL) as sb:
        snap = await sb.snapshot()
        await sb.call("counter")
        await sb.restore(snap)
    assert otel.span("aionub.snapshot").attributes["aionub.outcome"] == "ok"  # type: ignore[index]
    assert otel.span("aionub.restore").attributes["aionub.sandbox.id"] == sb.id  # type: ignore[index]


async def test_pool_acquire_spans_and_gauges(otel: Otel) -> None:
    async with aionub.SandboxPool(aionub.DEMO_GUEST, size=1, max_size=2, acquire_timeout=0.05, name="pool-a",
                                  **SMALL) as pool:
        assert otel.value("aionub.pool.size", **{"aionub.pool": "pool-a"}) == 1
        async with pool.acquire() as sb:
            assert otel.value("aionub.pool.in_use", **{"aionub.pool": "pool-a"}) == 1
            async with pool.acquire():  # grows
                assert otel.value("aionub.pool.size", **{"aionub.pool": "pool-a"}) == 2
                assert otel.value("aionub.pool.in_use", **{"aionub.pool": "pool-a"}) == 2
                with pytest.raises(aionub.PoolTimeout):
                    async with pool.acquire():
                        pass
            await sb.call("add", 1, 2)
        assert otel.value("aionub.pool.in_use", **{"aionub.pool": "pool-a"}) == 0
    assert otel.value("aionub.pool.size", **{"aionub.pool": "pool-a"}) == 0
    acquires = otel.finished("aionub.pool.acquire")
    assert sorted((s.attributes or {})["aionub.outcome"] for s in acquires) == ["ok", "ok", "timeout"]
    assert otel.value("aionub.pool.acquire.duration", **{"aionub.pool": "pool-a", "aionub.outcome": "ok"}) == 2
    assert otel.value("aionub.pool.acquire.duration", **{"aionub.outcome": "timeout"}) == 1
    # The call inside the checkout is a child of nothing aionub made (the
    # acquire span ended when the sandbox was handed out).
    assert otel.span("aionub.call", **{"aionub.guest": "pool-a"}).attributes["aionub.outcome"] == "ok"  # type: ignore[index]


async def test_run_span(otel: Otel, tmp_path: Path) -> None:
    guest = aionub.build_guest([ROOT / "tests" / "run_guest" / "main.c"], tmp_path / "main.elf")
    async with aionub.Sandbox.create(guest) as sb:
        assert (await sb.run(["p", "exit", "7"])).returncode == 7
    span = otel.span("aionub.run")
    assert span.attributes is not None
    assert (span.attributes["aionub.program"], span.attributes["aionub.exit_code"]) == ("p", 7)
    assert otel.value("aionub.calls", **{"aionub.kind": "run", "aionub.outcome": "ok"}) == 1


async def test_nothing_without_a_provider() -> None:
    aionub.telemetry.reset()
    assert not aionub.telemetry.enabled()
    o = Otel()  # providers that aionub was not given
    async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
        assert await sb.call("add", 1, 2) == 3
        with pytest.raises(aionub.CallTimeout):
            await sb.call("spin", timeout=0.02)
    assert _telemetry.hooks is None
    assert o.finished() == [] and o.metrics() == {}


async def test_no_op_providers_turn_it_off() -> None:
    try:
        assert not aionub.telemetry.configure(tracer_provider=NoOpTracerProvider(),
                                              meter_provider=NoOpMeterProvider())
        assert not aionub.telemetry.enabled()
        async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
            assert await sb.call("add", 1, 2) == 3
        o = Otel()
        assert aionub.telemetry.configure(tracer_provider=o.tracer_provider, meter_provider=o.meter_provider)
        aionub.telemetry.disable()
        assert not aionub.telemetry.enabled()
    finally:
        aionub.telemetry.reset()


async def test_reconfigured_while_a_sandbox_lives(otel: Otel) -> None:
    """The sandbox's close is counted by the provider that counted its creation."""
    sb = await aionub.Sandbox.create(aionub.DEMO_GUEST, **SMALL)
    other = Otel()
    aionub.telemetry.configure(tracer_provider=other.tracer_provider, meter_provider=other.meter_provider)
    await sb.call("noop")
    await sb.aclose()
    assert otel.value("aionub.sandboxes") == 0
    assert other.value("aionub.sandboxes") == 0
    assert len(other.finished("aionub.call")) == 1 and otel.finished("aionub.call") == []


@pytest.mark.no_kvm
def test_without_opentelemetry_installed() -> None:
    """With opentelemetry unimportable, aionub imports and configure() says what to install."""
    code = textwrap.dedent("""
        import sys
        sys.modules["opentelemetry"] = None  # import opentelemetry raises ImportError
        import aionub, aionub.telemetry
        assert not aionub.telemetry.AVAILABLE and not aionub.telemetry.enabled()
        try:
            aionub.telemetry.configure()
        except RuntimeError as exc:
            assert "aionub[otel]" in str(exc), exc
        else:
            raise AssertionError("configure() worked without opentelemetry")
        from aionub import _telemetry
        assert _telemetry.refresh() is None
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


async def test_calls_work_without_opentelemetry_installed() -> None:
    code = textwrap.dedent("""
        import asyncio, sys
        sys.modules["opentelemetry"] = None
        import aionub
        async def main():
            async with aionub.Sandbox.create(aionub.DEMO_GUEST) as sb:
                assert await sb.call("add", 2, 3) == 5
        asyncio.run(main())
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_prometheus_example(tmp_path: Path) -> None:
    """examples/telemetry.py serves aionub's metrics for Prometheus; its spans go to stdout."""
    port = _free_port()
    err = tmp_path / "stderr"
    with open(err, "w") as stderr, subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "telemetry.py"), "--port", str(port), "--serve", "60"],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            deadline = time.monotonic() + 60
            while "workload done" not in err.read_text():
                assert proc.poll() is None, err.read_text()
                assert time.monotonic() < deadline, err.read_text()
                time.sleep(0.1)
            body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        finally:
            proc.terminate()
        stdout = proc.communicate(timeout=30)[0]
    for name in (
        "aionub_calls_total", "aionub_call_duration_seconds_bucket", "aionub_kills_total",
        "aionub_stale_kicks_total", "aionub_host_calls_total", "aionub_sandboxes", "aionub_pool_size",
        "aionub_pool_in_use", "aionub_pool_acquire_duration_seconds_count",
    ):
        assert f"\n{name}{{" in body, name
    assert 'aionub_calls_total{aionub_function="spin",aionub_kind="call",aionub_outcome="timeout"' in body
    assert 'aionub_sandboxes{otel_scope_name="aionub"' in body
    assert '"name": "aionub.call"' in stdout and '"name": "aionub.host_call"' in stdout

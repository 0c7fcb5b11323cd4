"""aionub's telemetry with OpenTelemetry: spans to the console, metrics on a
Prometheus endpoint.

    pip install 'aionub[otel]' opentelemetry-sdk opentelemetry-exporter-prometheus
    python examples/telemetry.py --port 9464
    curl -s http://127.0.0.1:9464/metrics | grep aionub_

It installs the SDK's providers as the OpenTelemetry globals, which aionub
follows by default (``aionub.telemetry.configure(tracer_provider=...,
meter_provider=...)`` would pass them explicitly instead), then runs a few
calls through a SandboxPool: some succeed, one times out, one faults, one
calls a host function. Every span is printed as JSON as it ends; the
metrics stay on the endpoint until the script is stopped (Ctrl-C), or for
``--serve`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from prometheus_client import start_http_server

import aionub


def setup_telemetry(port: int) -> None:
    """The application's part: providers, exporters, the metrics endpoint."""
    resource = Resource.create({"service.name": "aionub-example"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    # The reader registers with prometheus_client's default registry, which
    # start_http_server serves on /metrics.
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()]))
    start_http_server(port, addr="127.0.0.1")


def lookup(x: int) -> int:
    """A host function the guest calls back (its call is a child span)."""
    return x * 6


async def workload(pool: aionub.SandboxPool) -> None:
    for i in range(5):
        await pool.call("add", i, i)
    await pool.call("call_host", "lookup", 7)
    try:
        await pool.call("spin", timeout=0.05)
    except aionub.CallTimeout:
        pass
    try:
        await pool.call("fault", "div0")
    except aionub.GuestFault:
        pass


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9464, help="port of the metrics endpoint on 127.0.0.1")
    parser.add_argument("--serve", type=float, default=None, help="seconds to keep serving (default: until Ctrl-C)")
    opts = parser.parse_args()
    setup_telemetry(opts.port)
    print(f"metrics on http://127.0.0.1:{opts.port}/metrics", file=sys.stderr, flush=True)
    async with aionub.SandboxPool(aionub.DEMO_GUEST, size=2, name="example",
                                  host_functions={"lookup": lookup}) as pool:
        await workload(pool)
        print("workload done", file=sys.stderr, flush=True)
        if opts.serve is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(opts.serve)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        pass

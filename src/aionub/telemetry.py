"""Telemetry with OpenTelemetry (``pip install 'aionub[otel]'``).

aionub emits spans (tracer ``"aionub"``) and metrics (meter ``"aionub"``)
through the OpenTelemetry API; the SDK and exporters are the application's
choice. By default it follows the global providers
(``opentelemetry.trace.set_tracer_provider`` and
``opentelemetry.metrics.set_meter_provider``): telemetry is on once either is
set, checked whenever a sandbox is created or a pool started. Or pass
providers explicitly::

    import aionub.telemetry
    aionub.telemetry.configure(tracer_provider=tp, meter_provider=mp)

When opentelemetry-api is not installed, or no provider is set, a call pays
one attribute check. ``docs/telemetry.md`` lists the spans, metrics and
attributes.
"""

from __future__ import annotations

from ._telemetry import AVAILABLE as AVAILABLE, configure as configure, disable as disable, reset as reset

__all__ = ("AVAILABLE", "configure", "disable", "enabled", "reset")


def enabled() -> bool:
    """Whether aionub emits telemetry now (for calls starting now)."""
    from . import _telemetry

    return _telemetry.hooks is not None

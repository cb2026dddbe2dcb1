"""Fixtures for the observability suites: the gateway test fixtures (in-process fake upstreams
and gateways) plus a real OTLP/HTTP receiver on a free 127.0.0.1 port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.conftest import fake, gateway, loop_thread  # noqa: F401  (fixtures re-exported)
from tests.helpers import free_port
from tests.observability.otlp_receiver import OTLPReceiver


@pytest.fixture
def otlp(monkeypatch: pytest.MonkeyPatch) -> Iterator[OTLPReceiver]:
    """A receiver, and the standard OTEL_* variables pointing the next gateway at it."""
    r = OTLPReceiver(free_port()).start()
    for var in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_TRACES_SAMPLER", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "cohortgate-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    try:
        yield r
    finally:
        r.stop()

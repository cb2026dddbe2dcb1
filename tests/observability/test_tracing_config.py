"""Tracing configuration by the standard OTEL_* variables: off costs nothing (the SDK is not even
imported), the traces-specific endpoint, headers and gzip compression, sampling, protocol errors."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import httpx
import pytest

from gateway.tracing import Sampler, parse_traceparent
from gateway.tracing_send import make_sender
from tests.gateway.conftest import policy
from tests.helpers import PYTHON, ROOT

SOLO = "- id: r\n  cohorts: ['*']\n  targets: [{upstream: a}]\n"


def test_tracing_off_never_imports_the_sdk(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy({"a": "http://127.0.0.1:9/v1"}, SOLO))
    code = textwrap.dedent(f"""
        import sys
        from gateway.bootstrap import create_state
        st = create_state({str(path)!r})
        assert st.tracing is None, st.tracing
        assert not [m for m in sys.modules if m.startswith("opentelemetry.sdk")], "SDK imported"
    """)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_traces_endpoint_headers_and_gzip(otlp, fake, gateway, monkeypatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp.endpoint + "/custom/traces")  # used as-is
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme,authorization=Bearer%20tok")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    a = fake("a")
    g = gateway(policy({"a": a.url}, SOLO))
    r = httpx.post(g.base_url + "/chat/completions", json={"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}, timeout=10)
    rid = r.headers["x-request-id"]
    spans = otlp.wait_for(lambda sp: any(s["attributes"].get("cohortgate.request_id") == rid for s in sp))
    assert any(s["attributes"].get("cohortgate.request_id") == rid for s in spans)
    h = otlp.headers[-1]
    assert h["x-tenant"] == "acme" and h["authorization"] == "Bearer tok"
    assert h["content-encoding"] == "gzip" and h["content-type"] == "application/x-protobuf"


def test_sampler_ratio_and_parent_based() -> None:
    tid = (123).to_bytes(16, "big")
    assert Sampler("", None).decide(tid, None) is True
    assert Sampler("parentbased_always_on", None).decide(tid, False) is False  # follows the caller
    assert Sampler("always_on", None).decide(tid, False) is True
    assert Sampler("always_off", None).decide(tid, True) is False
    half = Sampler("traceidratio", "0.5")
    kept = sum(half.root((i * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF).to_bytes(16, "big")) for i in range(4000))
    assert 1700 < kept < 2300
    with pytest.raises(RuntimeError, match="OTEL_TRACES_SAMPLER"):
        Sampler("jaeger_remote", None)


def test_traceparent_parsing() -> None:
    tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert parse_traceparent(f"00-{tid}-{sid}-01") == (bytes.fromhex(tid), bytes.fromhex(sid), True)
    assert parse_traceparent(f"00-{tid}-{sid}-00") == (bytes.fromhex(tid), bytes.fromhex(sid), False)
    assert parse_traceparent(f"01-{tid}-{sid}-01-future") is not None  # later versions may add fields
    for bad in ("", "garbage", f"00-{'0' * 32}-{sid}-01", f"00-{tid}-{'0' * 16}-01", f"ff-{tid}-{sid}-01",
                f"00-{tid}-{sid}-01-extra", f"00-{tid[:-1]}x-{sid}-01", f"00-{tid[:-2]}  -{sid}-01",
                f"00-{tid}-{sid[:-2]} 7-01"):
        assert parse_traceparent(bad) is None, bad


def test_protocol_errors_name_the_fix(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(RuntimeError, match="use http/protobuf or grpc"):
        make_sender()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    try:
        import grpc  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"cohortgate\[otlp-grpc\]"):
            make_sender()
    else:
        make_sender().close()


def test_bad_protocol_serves_without_traces(tmp_path: Path, monkeypatch, caplog) -> None:
    from gateway.bootstrap import create_state

    path = tmp_path / "p.yaml"
    path.write_text(policy({"a": "http://127.0.0.1:9/v1"}, SOLO))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    st = create_state(str(path))
    assert st.tracing is None
    assert "tracing disabled" in caplog.text and "http/protobuf" in caplog.text

"""The compiled tracing fast path (gateway/_spanenc_c/) against its Python reference: the same
span bytes for every request shape it takes, None (so the Python encoder runs) for the others,
valid ids and traceparents, and ids that differ across a fork.

The extension is built by `pip install -e .` (scripts/bootstrap); CI has a C compiler, so a
missing build fails here instead of silently costing the CPU it saves."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway import tracing_export
from gateway.request import Attempt, RequestRecord
from gateway.tracing import _PyReq
from gateway.tracing_attrs import encode_request
from gateway.tracing_export import Encoder, _ids, _traceparent

try:
    from gateway import _spanenc
except ImportError as exc:  # pragma: no cover - a broken install
    raise AssertionError("gateway._spanenc is not built: run scripts/bootstrap (pip install -e . needs gcc "
                         "and the Python headers)") from exc


# A run in pure-Python mode (COHORTGATE_PURE_PYTHON=1) tests the reference path everywhere else;
# the compiled module is then not wired to it (configure/slots), so its own tests stand aside.
compiled_only = pytest.mark.skipif(bool(os.environ.get("COHORTGATE_PURE_PYTHON")),
                                   reason="COHORTGATE_PURE_PYTHON=1: the compiled path is off in this run")


class _Client:
    def __init__(self, name: str, port: int) -> None:
        self.spec = SimpleNamespace(model=f"{name}-served", provider="vllm")
        self.address, self.port, self.name = "127.0.0.1", port, name


CLIENTS = [_Client("a", 8000), _Client("b", 8001), None]


def _record(r: random.Random, i: int) -> tuple[_PyReq, RequestRecord]:
    rid = r.choice([f"req_{i:012x}", "x" * r.choice([1, 127, 128]), f"é-{i}", f"bad-\udc80-{i}"])
    rec = RequestRecord(rid, operation=r.choice(["chat", "text_completion"]))
    rec.alias = r.choice(["m", "", "billing-model"])
    rec.stream = r.random() < 0.4
    rec.cohort = r.choice(["billing", "out_of_domain", ""])
    rec.cohort_reason = r.choice(["keyword 'refund'", "default (no rule matched)"])
    rec.route_id = r.choice(["billing", "rest", ""])
    rec.key_name = r.choice(["", "team-a"])
    rec.mirrored = r.random() < 0.2
    rec.request_params = r.choice([(), (("max_tokens", 16),), (("temperature", 0.3), ("stop", ["END", "\n"])),
                                   (("stop", "x"), ("n", 2)), (("seed", 7), ("stop", [["nested"]]))])
    trace_id, sid, aid = _ids()
    parent = r.choice([None, None, os.urandom(8)])
    req = _PyReq(trace_id, sid, aid, parent, None)
    for n in range(r.choice([0, 1, 1, 1, 2, 3])):
        client = r.choice(CLIENTS)
        att = Attempt(r.choice(["a", "b"]), r.choice(["a-served", "b-served"]), client=client,
                      t0=r.choice([0, req.t0 + r.randrange(10**6)]))
        att.outcome = r.choice(["ok", "ok", "timeout", "upstream_5xx", "pending"])
        att.seconds = r.random() / 100
        att.upstream_status = r.choice([None, 503, 429])
        rec.attempts.append(att)
        if n:  # announced by the proxy (next_attempt), or not (tools): both happen
            if r.random() < 0.5:
                req.attempt_ids.append(tracing_export.span_id())
    rec.served_by = rec.attempts[-1].upstream if rec.attempts and r.random() < 0.8 else ""
    rec.served_model = rec.attempts[-1].model if rec.served_by else ""
    rec.response_model = r.choice(["", "a-served", "other"])
    rec.outcome = r.choice(["ok", "ok", "error", "client_closed"])
    rec.error_type = None if rec.outcome == "ok" else r.choice(["timeout", "", None])
    rec.status = r.choice([200, 502, 499])
    rec.fallback_reason = r.choice([None, "timeout"])
    rec.arm = r.choice(["", "primary", "candidate"])
    rec.finish_reasons = r.choice([[], ["stop"], ["length", "stop"]])
    tokens = [0, 7, 0x7F, 0x80, 0x3FFF, 0x4000, 10**6, 2**70, -3]
    rec.input_tokens = r.choice(tokens + [None, True])
    rec.output_tokens = r.choice(tokens + [None])
    rec.ttft_s = r.choice([None, None, 0.0123, 2])
    rec.cohort_confidence = r.choice([None] * 6 + [0.7])
    if r.random() < 0.1:
        rec.evals = [("json_valid", 1.0, True, "a")]
    if r.random() < 0.1:
        req.content = {"gen_ai.input.messages": "[]"}
    req.end = req.start + r.randrange(1, 10**8)
    return req, rec


def _python_shape(req: _PyReq, rec: RequestRecord) -> bool:
    """The request shapes the compiled encoder takes (the rest return None)."""
    try:
        rec.request_id.encode()
    except UnicodeEncodeError:
        return False
    return (type(rec.input_tokens) is int and type(rec.output_tokens) is int and not req.content and not rec.evals
            and rec.cohort_confidence is None and (rec.ttft_s is None or type(rec.ttft_s) is float))


def _copy(req: _PyReq) -> _spanenc.TraceState:
    c = _spanenc.TraceState(req.trace_id, req.span_id, None, req.parent_id, req.tracestate)
    c.attempt_ids, c.start, c.t0, c.end, c.content = list(req.attempt_ids), req.start, req.t0, req.end, req.content
    return c


@compiled_only
def test_compiled_trace_state_writes_the_python_encoders_bytes():
    r = random.Random(20261126)
    resource = {"service.name": "cohortgate-test"}
    py_enc, c_enc = Encoder(resource, "s", "1"), Encoder(resource, "s", "1")
    taken: list[bytes] = []
    for i in range(3000):
        req, rec = _record(r, i)
        c_req = _copy(req)
        usual = _python_shape(req, rec)
        # the compiled encoder declines the unusual shapes before changing anything...
        declined = _spanenc.encode_request(c_req, rec, c_enc) is None
        assert declined == (not usual), (i, rec)
        if declined:
            assert c_req.attempt_ids == req.attempt_ids
        # ...which TraceState.encode then hands to the Python encoder
        c_req = _copy(req)
        c_req.rec = rec
        got = c_req.encode(c_enc)
        assert c_req.rec is None  # encoded: the record is let go
        # attempts the proxy did not announce got ids of their own: the reference gets the same ones
        assert len(c_req.attempt_ids) == max(len(req.attempt_ids), len(rec.attempts))
        assert c_req.attempt_ids[:len(req.attempt_ids)] == req.attempt_ids
        req.attempt_ids = list(c_req.attempt_ids)
        assert got == encode_request(req, rec, py_enc), (i, rec)
        if usual:
            taken.append(got[0])
    assert len(taken) > 700  # a good share of the generated shapes are the usual ones
    # and the bytes are OTLP: an export request of them decodes with opentelemetry-proto
    export = ExportTraceServiceRequest.FromString(c_enc.request(taken[:50]))
    assert len(export.resource_spans[0].scope_spans[0].spans) >= 50


@compiled_only
def test_trace_state_matches_the_python_class():
    t, s, a = _spanenc.ids()
    py, c = _PyReq(t, s, a, None, "k=v"), _spanenc.TraceState(t, s, a, None, "k=v")
    for name in ("rec", "trace_id", "span_id", "attempt_ids", "parent_id", "tracestate", "content", "end"):
        assert getattr(c, name) == getattr(py, name), name
    assert abs(c.start - py.start) < 10**9 and abs(c.t0 - py.t0) < 10**9  # the same clocks
    hp: dict[str, str] = {}
    hc: dict[str, str] = {}
    py.propagate(hp, a)
    c.propagate(hc, a)
    assert hp == hc == {"traceparent": _traceparent(t, a, True), "tracestate": "k=v"}
    with pytest.raises(RuntimeError, match="not finished"):
        c.encode(Encoder({}, "s", "1"))
    with pytest.raises(TypeError):
        _spanenc.TraceState(t, s)  # type: ignore[call-arg]


@compiled_only
def test_blocks_made_by_either_path_serve_the_other():
    r = random.Random(7)
    enc = Encoder({"service.name": "x"}, "s", "1")
    for i in range(400):
        req, rec = _record(r, i)
        if not _python_shape(req, rec):
            continue
        while len(req.attempt_ids) < len(rec.attempts):  # announced ids: both paths use the same
            req.attempt_ids.append(tracing_export.span_id())
        c_req = _copy(req)
        c_req.rec = rec
        first = encode_request(req, rec, enc) if i % 2 else c_req.encode(enc)
        second = c_req.encode(enc) if i % 2 else encode_request(req, rec, enc)
        assert first == second


def test_ids_and_traceparent():
    seen = set()
    for _ in range(5000):
        t, s, a = _spanenc.ids()
        assert (len(t), len(s), len(a)) == (16, 8, 8)
        assert any(t) and any(s) and any(a)
        seen.update((t, s, a))
        assert _spanenc.traceparent(t, s, True) == _traceparent(t, s, True)
        assert _spanenc.traceparent(t, a, False) == _traceparent(t, a, False)
    assert len(seen) == 15000
    assert len({_spanenc.span_id() for _ in range(2000)}) == 2000
    with pytest.raises(ValueError):
        _spanenc.traceparent(b"short", b"12345678", True)
    with pytest.raises(TypeError):
        _spanenc.traceparent(b"x" * 16)  # type: ignore[call-arg]


def test_a_forked_worker_draws_ids_of_its_own():
    _spanenc.ids()  # the pool is filled in the parent before the fork
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(wfd, b"".join(_spanenc.ids()))
        finally:
            os._exit(0)
    os.close(wfd)
    child = b""
    while len(child) < 32:
        chunk = os.read(rfd, 64)
        if not chunk:
            break
        child += chunk
    os.close(rfd)
    os.waitpid(pid, 0)
    parent = b"".join(_spanenc.ids())
    assert len(child) == 32 and child != parent


def test_pure_python_mode_is_selectable(monkeypatch: Any):
    import importlib
    import subprocess
    import sys

    code = "from gateway import tracing_export as t, tracing as a; print(t.compiled is None, a._Req.__name__)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "COHORTGATE_PURE_PYTHON": "1"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "_PyReq"]
    if not os.environ.get("COHORTGATE_PURE_PYTHON"):  # this run's own mode
        assert importlib.import_module("gateway.tracing_export").compiled is _spanenc

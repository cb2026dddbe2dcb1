"""Spans reach a real OTLP/HTTP receiver over the network with the GenAI / OpenInference /
cohortgate attribute names and values; W3C traceparent is continued and propagated upstream."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest

from gateway.bootstrap import create_state
from tests.gateway.conftest import policy
from tests.observability.otlp_receiver import OTLPReceiver

ROUTES = """
- id: billing
  cohorts: [billing]
  targets: [{upstream: a, weight: 1, arm: candidate}]
  fallback: [b]
- id: rest
  cohorts: ["*"]
  targets: [{upstream: a}]
  fallback: [b]
"""
COHORTS = """
- name: billing
  rules: [{keywords: [refund]}]
"""
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class _Client:
    """What span encoding reads of an UpstreamClient; hashable as it is (blocks are cached per client)."""

    spec = SimpleNamespace(model="a-served", provider="vllm")
    address, port, name = "127.0.0.1", 8000, "a"


def chat(g: Any, content: str = "hello there", **kw: Any) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], **kw.pop("body", {})}
    return httpx.post(g.base_url + "/chat/completions", json=body, timeout=15, **kw)


def spans_of(r: OTLPReceiver, request_id: str, n_client: int, timeout: float = 15.0) -> tuple[dict, list[dict]]:
    """The SERVER span of request_id and its CLIENT children (waits until n_client arrived)."""

    def find(spans: list[dict]) -> tuple[dict | None, list[dict]]:
        root = next((s for s in spans if s["kind"] == "SERVER"
                     and s["attributes"].get("cohortgate.request_id") == request_id), None)
        kids = [s for s in spans if root and s["kind"] == "CLIENT" and s["parent_span_id"] == root["span_id"]]
        return root, sorted(kids, key=lambda s: s["attributes"]["cohortgate.attempt"])

    spans = r.wait_for(lambda sp: (lambda f: f[0] is not None and len(f[1]) >= n_client)(find(sp)), timeout)
    root, kids = find(spans)
    assert root is not None, f"no SERVER span for {request_id} among {[s['name'] for s in spans]}"
    assert len(kids) == n_client, kids
    return root, kids


def test_plain_request_span_attributes(otlp, fake, gateway):
    a, b = fake("a"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS))
    r = chat(g, "I want a refund please", body={"temperature": 0.3, "max_tokens": 50, "top_p": 0.9, "seed": 7,
                                                 "stop": ["END"]}, headers={"x-cohortgate-debug": "1"})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    root, (att,) = spans_of(otlp, r.headers["x-request-id"], 1)
    ra = root["attributes"]
    assert root["name"] == "chat m"
    assert root["resource"]["service.name"] == "cohortgate-test"
    expected = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "vllm", "gen_ai.request.model": "m",
        "gen_ai.response.model": "a-served", "gen_ai.request.temperature": 0.3, "gen_ai.request.max_tokens": 50,
        "gen_ai.request.top_p": 0.9, "gen_ai.request.seed": 7, "gen_ai.request.stop_sequences": ["END"],
        "gen_ai.request.stream": False,
        "gen_ai.usage.input_tokens": usage["prompt_tokens"], "gen_ai.usage.output_tokens": usage["completion_tokens"],
        "gen_ai.response.finish_reasons": ["stop"], "server.address": "127.0.0.1", "server.port": a.port,
        "llm.token_count.prompt": usage["prompt_tokens"], "llm.token_count.completion": usage["completion_tokens"],
        "llm.token_count.total": usage["total_tokens"], "llm.model_name": "a-served",
        "openinference.span.kind": "LLM", "http.response.status_code": 200,
        "cohortgate.cohort": "billing", "cohortgate.route": "billing", "cohortgate.target": "a",
        "cohortgate.target.model": "a-served", "cohortgate.canary_arm": "candidate", "cohortgate.attempts": 1,
        "cohortgate.mirror": False, "cohortgate.outcome": "ok",
    }
    assert {k: ra.get(k) for k in expected} == expected
    assert ra["cohortgate.cohort.reason"] == r.headers["x-cohort-reason"] != ""
    assert "error.type" not in ra and root["status"]["code"] == 0
    assert "gen_ai.input.messages" not in ra and "gen_ai.output.messages" not in ra  # content is opt-in
    # the attempt: a CLIENT child named after the served model, same trace
    assert att["name"] == "chat a-served" and att["trace_id"] == root["trace_id"]
    aa = att["attributes"]
    assert aa["cohortgate.attempt"] == 1 and aa["cohortgate.attempt.outcome"] == "ok"
    assert aa["gen_ai.request.model"] == "a-served" and aa["gen_ai.provider.name"] == "vllm"
    assert aa["server.address"] == "127.0.0.1" and aa["server.port"] == a.port
    assert aa["gen_ai.response.model"] == "a-served"
    assert root["start_ns"] <= att["start_ns"] <= att["end_ns"] <= root["end_ns"]
    # a fresh trace (no incoming traceparent), propagated to the upstream with the attempt as parent
    assert root["parent_span_id"] == ""
    tp = a.seen()[-1]["headers"]["traceparent"]
    assert tp == f"00-{root['trace_id']}-{att['span_id']}-01"


def test_traceparent_is_continued_and_propagated(otlp, fake, gateway):
    a, b = fake("a"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS))
    r = chat(g, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=1"})
    assert r.status_code == 200
    root, (att,) = spans_of(otlp, r.headers["x-request-id"], 1)
    assert root["trace_id"] == TRACE_ID and root["parent_span_id"] == PARENT_ID
    hdrs = a.seen()[-1]["headers"]
    version, trace_id, parent, flags = hdrs["traceparent"].split("-")
    assert (version, trace_id, parent, flags) == ("00", TRACE_ID, att["span_id"], "01")
    assert hdrs["tracestate"] == "vendor=1"


def test_unsampled_parent_is_propagated_but_not_recorded(otlp, fake, gateway):
    a, b = fake("a"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS))
    r = chat(g, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    assert r.status_code == 200
    assert a.seen()[-1]["headers"]["traceparent"].startswith(f"00-{TRACE_ID}-")
    assert a.seen()[-1]["headers"]["traceparent"].endswith("-00")
    r2 = chat(g)  # a sampled one afterwards, to know the exporter has run
    spans_of(otlp, r2.headers["x-request-id"], 1)
    assert not [s for s in otlp.snapshot() if s["trace_id"] == TRACE_ID]


def test_streamed_request_counts_tokens_from_include_usage(otlp, fake, gateway):
    a, b = fake("a"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS))
    usage = None
    with httpx.stream("POST", g.base_url + "/chat/completions", timeout=15,
                      json={"model": "m", "stream": True, "stream_options": {"include_usage": True},
                            "messages": [{"role": "user", "content": "stream me some words please"}]}) as r:
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                u = orjson.loads(line[6:]).get("usage")
                usage = u or usage
    assert usage and usage["completion_tokens"] > 0
    # the gateway asked the upstream for usage itself
    assert a.seen()[-1]["body"]["stream_options"]["include_usage"] is True
    root, (att,) = spans_of(otlp, rid, 1)
    ra = root["attributes"]
    assert ra["gen_ai.request.stream"] is True
    assert ra["gen_ai.usage.input_tokens"] == ra["llm.token_count.prompt"] == usage["prompt_tokens"]
    assert ra["gen_ai.usage.output_tokens"] == ra["llm.token_count.completion"] == usage["completion_tokens"]
    assert ra["gen_ai.response.finish_reasons"] == ["stop"]
    assert 0 < ra["gen_ai.response.time_to_first_chunk"] < 15
    # the attempt span covers the whole relayed stream
    assert att["attributes"]["cohortgate.attempt.outcome"] == "ok"
    assert root["start_ns"] <= att["start_ns"] and att["end_ns"] <= root["end_ns"]
    assert att["end_ns"] - att["start_ns"] >= ra["gen_ai.response.time_to_first_chunk"] * 1e9 * 0.5


def test_stream_without_client_usage_still_counts_tokens(otlp, fake, gateway):
    a, b = fake("a"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS))
    with httpx.stream("POST", g.base_url + "/chat/completions", timeout=15,
                      json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "one two"}]}) as r:
        rid = r.headers["x-request-id"]
        body = b"".join(r.iter_bytes())
    assert b'"usage"' not in body  # the client did not ask: the injected usage event is stripped...
    root, _ = spans_of(otlp, rid, 1)
    assert root["attributes"]["gen_ai.usage.output_tokens"] > 0  # ...but the span has the counts


def test_fallback_spans(otlp, fake, gateway):
    a, b = fake("a", "503"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS))
    r = chat(g)
    assert r.status_code == 200 and r.headers["x-upstream"] == "b"
    root, (first, second) = spans_of(otlp, r.headers["x-request-id"], 2)
    ra = root["attributes"]
    assert ra["cohortgate.attempts"] == 2 and ra["cohortgate.target"] == "b"
    assert ra["cohortgate.fallback.reason"] == r.headers["x-fallback-reason"]
    assert ra["gen_ai.response.model"] == "b-served" and ra["server.port"] == b.port
    assert ra["cohortgate.canary_arm"] == "fallback"
    fa = first["attributes"]
    assert first["name"] == "chat a-served" and fa["cohortgate.attempt"] == 1
    assert fa["error.type"] == fa["cohortgate.attempt.outcome"] == ra["cohortgate.fallback.reason"]
    assert fa["http.response.status_code"] == 503 and first["status"]["code"] == 2
    sa = second["attributes"]
    assert second["name"] == "chat b-served" and sa["cohortgate.attempt"] == 2
    assert sa["cohortgate.attempt.outcome"] == "ok" and second["status"]["code"] == 0
    # the attempts follow each other inside the request's span
    assert root["start_ns"] <= first["start_ns"] <= first["end_ns"] <= second["start_ns"] <= second["end_ns"]
    assert second["end_ns"] <= root["end_ns"]
    # each attempt's upstream saw its own span as parent, in the request's trace
    assert a.seen()[-1]["headers"]["traceparent"] == f"00-{root['trace_id']}-{first['span_id']}-01"
    assert b.seen()[-1]["headers"]["traceparent"] == f"00-{root['trace_id']}-{second['span_id']}-01"


def test_eval_gate_failure_is_an_evaluation_event(otlp, fake, gateway):
    a, b = fake("a", "bad_json"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS))
    r = chat(g, body={"response_format": {"type": "json_object"}})
    assert r.status_code == 200 and r.headers["x-upstream"] == "b"
    root, (first, _second) = spans_of(otlp, r.headers["x-request-id"], 2)
    assert root["attributes"]["cohortgate.fallback.reason"] == "eval_failed"
    assert first["attributes"]["error.type"] == "eval_failed"
    events = [e["attributes"] for e in root["events"] if e["name"] == "gen_ai.evaluation.result"]
    by_up = {e["cohortgate.upstream"]: e for e in events}
    assert by_up["a"]["gen_ai.evaluation.name"] == "JSONValidation"
    assert by_up["a"]["gen_ai.evaluation.score.label"] == "fail"
    assert by_up["a"]["gen_ai.evaluation.score.value"] < 1.0
    assert by_up["b"]["gen_ai.evaluation.score.label"] == "pass"


def test_error_request_has_error_type(otlp, fake, gateway):
    a, b = fake("a", "503"), fake("b", "503")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS))
    r = chat(g)
    assert r.status_code >= 500
    root, kids = spans_of(otlp, r.headers["x-request-id"], 2)
    assert root["attributes"]["error.type"] and root["status"]["code"] == 2
    assert root["attributes"]["http.response.status_code"] == r.status_code
    assert all(k["status"]["code"] == 2 for k in kids)


MIRROR_ROUTES = """
- id: rest
  cohorts: ["*"]
  targets: [{upstream: a}]
  mirror: {targets: [s], percent: 100}
"""


def test_mirrored_request_shadow_span_links_to_primary(otlp, fake, gateway):
    a, s = fake("a"), fake("s")
    g = gateway(policy({"a": a.url, "s": s.url}, MIRROR_ROUTES))
    r = chat(g, "mirror this one")
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    root, _ = spans_of(otlp, rid, 1)
    assert root["attributes"]["cohortgate.mirror"] is True
    spans = otlp.wait_for(lambda sp: any(x["attributes"].get("cohortgate.shadow.pair_id") == rid for x in sp))
    shadow = next(x for x in spans if x["attributes"].get("cohortgate.shadow.pair_id") == rid)
    sa = shadow["attributes"]
    assert shadow["kind"] == "CLIENT" and shadow["name"] == "chat s-served"
    assert sa["cohortgate.shadow.role"] == "shadow" and sa["cohortgate.target"] == "s"
    assert sa["gen_ai.provider.name"] == "vllm" and sa["server.port"] == s.port
    assert shadow["trace_id"] != root["trace_id"] and shadow["parent_span_id"] == ""
    assert shadow["links"] == [{"trace_id": root["trace_id"], "span_id": root["span_id"],
                                "attributes": {"cohortgate.link": "primary"}}]


def test_off_without_otlp_configuration(tmp_path, monkeypatch, fake):
    a = fake("a")
    path = tmp_path / "p.yaml"
    path.write_text(policy({"a": a.url}, "- id: r\n  cohorts: ['*']\n  targets: [{upstream: a}]\n"))
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    assert create_state(str(path)).tracing is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert create_state(str(path)).tracing is None


@pytest.mark.parametrize("content", [False, True])
def test_content_recorded_only_when_policy_opts_in(otlp, fake, gateway, content):
    a, s = fake("a"), fake("s")
    extra = f"telemetry: {{record_content: {'true' if content else 'false'}}}\n"
    g = gateway(policy({"a": a.url, "s": s.url}, MIRROR_ROUTES, extra=extra))
    r = chat(g, "secret words")
    root, _ = spans_of(otlp, r.headers["x-request-id"], 1)
    ra = root["attributes"]
    if content:
        assert orjson.loads(ra["gen_ai.output.messages"])[0]["content"] == r.json()["choices"][0]["message"]["content"]
    else:
        assert not any(k in ra for k in ("gen_ai.input.messages", "gen_ai.output.messages", "output.value"))


def test_stream_cut_after_commit_marks_request_and_attempt_failed(otlp, fake, gateway):
    a, b = fake("a", "midstream_drop"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS))
    with httpx.stream("POST", g.base_url + "/chat/completions", timeout=15,
                      json={"model": "m", "stream": True, "messages": [
                          {"role": "user", "content": "a long answer with many words please"}]}) as r:
        rid = r.headers["x-request-id"]
        body = b"".join(r.iter_bytes())
    assert b'"error"' in body  # the typed error event after the commit point
    root, (att,) = spans_of(otlp, rid, 1)
    assert root["attributes"]["cohortgate.outcome"] == "stream_error"
    assert root["attributes"]["error.type"] and root["status"]["code"] == 2
    assert att["attributes"]["error.type"] == root["attributes"]["error.type"] and att["status"]["code"] == 2
    assert b.state.count == 0  # no fallback once the stream was committed


def test_workers_each_export_their_spans(otlp, fake, tmp_path):
    """`serve --workers 2`: every forked worker sets up its own exporter after the fork."""
    from tests.helpers import PYTHON, free_port, running

    a = fake("a")
    path = tmp_path / "p.yaml"
    path.write_text(policy({"a": a.url}, "- id: r\n  cohorts: ['*']\n  targets: [{upstream: a}]\n"))
    port = free_port()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with running([PYTHON, "-m", "cohortgate", "serve", "--policy", str(path), "--port", str(port),
                  "--workers", "2", "--log-level", "WARNING"], ready_url=f"http://127.0.0.1:{port}/healthz",
                 env=env, log=tmp_path / "gw.log"):
        ids = []
        for i in range(12):
            with httpx.Client(timeout=10) as c:  # a new connection each time: both workers get some
                r = c.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                           json={"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]})
                assert r.status_code == 200
                ids.append(r.headers["x-request-id"])
        spans = otlp.wait_for(lambda sp: {s["attributes"].get("cohortgate.request_id") for s in sp} >= set(ids))
    roots = {s["attributes"].get("cohortgate.request_id"): s for s in spans if s["kind"] == "SERVER"}
    assert set(ids) <= set(roots)
    assert roots[ids[0]]["resource"]["service.name"] == "cohortgate-test"


def test_record_content_hook_puts_prompt_and_completion_on_the_span(otlp):
    """`Tracing.record_content(rec, body, output)`: the hook the proxy calls when the policy opts
    in; a no-op when it does not."""
    from types import SimpleNamespace

    from gateway.request import RequestRecord
    from gateway.tracing import Tracing
    from gateway.tracing_send import make_sender

    for opted_in in (True, False):
        telemetry = SimpleNamespace(record_content=opted_in)
        state = SimpleNamespace(runtime=SimpleNamespace(policy=SimpleNamespace(telemetry=telemetry)))
        t = Tracing(state, make_sender())  # type: ignore[arg-type]
        rec = RequestRecord(f"req_content_{opted_in}", operation="chat", alias="m")
        t.begin(rec, {})
        t.record_content(rec, {"messages": [{"role": "user", "content": "my secret prompt"}]})
        t.record_content(rec, None, {"role": "assistant", "content": "the answer"})
        t.finish(rec)
        t.exporter.shutdown()
    spans = otlp.wait_for(lambda sp: len(sp) >= 2)
    by_id = {s["attributes"]["cohortgate.request_id"]: s["attributes"] for s in spans}
    on, off = by_id["req_content_True"], by_id["req_content_False"]
    assert orjson.loads(on["gen_ai.input.messages"]) == [{"role": "user", "content": "my secret prompt"}]
    assert orjson.loads(on["gen_ai.output.messages"]) == [{"role": "assistant", "content": "the answer"}]
    assert on["input.value"] == on["gen_ai.input.messages"]
    assert not [k for k in off if "messages" in k or k in ("input.value", "output.value")]


def test_shadow_span_follows_primary_sampling_and_takes_the_shadow_usage(otlp):
    from types import SimpleNamespace

    from gateway.request import RequestRecord
    from gateway.tracing import Tracing
    from gateway.tracing_send import make_sender

    client = SimpleNamespace(spec=SimpleNamespace(model="cand-served", provider="vllm"), address="10.0.0.7",
                             port=8000, name="cand")
    state = SimpleNamespace(runtime=SimpleNamespace(upstreams={"cand": client}, policy=SimpleNamespace(
        telemetry=SimpleNamespace(record_content=False))))
    t = Tracing(state, make_sender())  # type: ignore[arg-type]
    for sampled in ("01", "00"):
        rec = RequestRecord(f"req_shadow_{sampled}", operation="chat", alias="m", mirrored=True)
        t.begin(rec, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-{sampled}"})
        shadow = RequestRecord(rec.request_id)
        with t.shadow_span(rec, "cand", shadow=shadow):
            shadow.input_tokens, shadow.output_tokens, shadow.response_model = 11, 22, "cand-served"
            shadow.finish_reasons = ["length"]
        t.finish(rec)
    t.exporter.shutdown()
    spans = otlp.wait_for(lambda sp: len(sp) >= 2)
    shadows = [s for s in spans if s["attributes"].get("cohortgate.shadow.role") == "shadow"]
    assert [s["attributes"]["cohortgate.shadow.pair_id"] for s in shadows] == ["req_shadow_01"]  # 00: not recorded
    sa = shadows[0]["attributes"]
    assert sa["gen_ai.usage.input_tokens"] == 11 and sa["llm.token_count.completion"] == 22
    assert sa["gen_ai.response.model"] == "cand-served" and sa["gen_ai.response.finish_reasons"] == ["length"]
    assert sa["server.address"] == "10.0.0.7" and sa["server.port"] == 8000
    primary = next(s for s in spans if s["kind"] == "SERVER")
    assert shadows[0]["links"][0]["span_id"] == primary["span_id"] and primary["trace_id"] == TRACE_ID


def test_embeddings_and_rejected_requests_are_traced(otlp, fake, gateway):
    a, b = fake("a"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS))
    r = httpx.post(g.base_url + "/embeddings", json={"model": "m", "input": ["one", "two"]}, timeout=10)
    assert r.status_code == 200, r.text
    root, (att,) = spans_of(otlp, r.headers["x-request-id"], 1)
    assert root["name"] == "embeddings m" and root["attributes"]["gen_ai.operation.name"] == "embeddings"
    assert att["name"] == "embeddings a-served"
    bad = httpx.post(g.base_url + "/chat/completions", content=b"{not json", timeout=10,
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400
    root, kids = spans_of(otlp, bad.headers["x-request-id"], 0)
    ra = root["attributes"]
    assert root["name"] == "chat" and "gen_ai.request.model" not in ra  # the body never parsed
    assert ra["error.type"] and ra["http.response.status_code"] == 400 and root["status"]["code"] == 2
    assert "gen_ai.provider.name" not in ra and kids == []


@pytest.mark.parametrize("length", [1, 100, 101, 128])
def test_client_request_ids_of_every_allowed_length_reach_the_span(otlp, fake, gateway, length):
    """Ids up to 100 bytes take the one-byte-length fast path, longer ones (the proxy accepts up
    to 128) the general encoding: both must decode to the same id."""
    a, b = fake("a"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS))
    rid = ("id-" + "x" * length)[:length]
    r = chat(g, headers={"x-request-id": rid})
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    root, (att,) = spans_of(otlp, rid, 1)
    assert root["attributes"]["cohortgate.request_id"] == rid
    assert att["attributes"]["cohortgate.attempt.outcome"] == "ok"


class _ThreeSpans:
    """An exporter queue item: one request's three (empty) spans."""

    def encode(self, enc: Any) -> tuple[bytes, int]:
        return b"\x12\x00" * 3, 3


class _HeldSender:
    """Records what the export thread sends; each send waits until `release` is set."""

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.sent: list[bytes] = []

    def send(self, body: bytes) -> None:
        self.release.wait(10)
        self.sent.append(body)

    def close(self) -> None:
        pass


def test_exporter_counts_spans_not_requests_against_its_limits(monkeypatch):
    """A request's spans are one queue item; the queue and batch limits count spans, and spans
    count as waiting until their export returned (the sender blocks here until released)."""
    from gateway.tracing_batch import BatchExporter
    from gateway.tracing_export import Encoder

    sender = _HeldSender()
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "10")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # sends when 4 spans wait, or at flush
    ex = BatchExporter(Encoder({}, "s", "1"), sender)
    for _ in range(6):  # no loop: each is encoded at once; from 10 waiting spans on, requests are dropped
        ex.submit(_ThreeSpans())
    assert (ex.encoded, ex.dropped, ex.exported) == (12, 2, 0)
    sender.release.set()
    ex.flush()
    ex.shutdown()
    assert ex.exported == 12 and len(sender.sent) == 2  # batches of whole requests reaching 4 spans: 6 + 6


def test_traced_requests_leave_no_cyclic_garbage(otlp):
    """The gateway raises the GC threshold and freezes its start-up objects (gateway/app.py): a
    reference cycle per request would be work for the collector on every request."""
    import gc
    import time

    from gateway.request import Attempt, RequestRecord
    from gateway.tracing import Tracing
    from gateway.tracing_send import make_sender

    client = _Client()
    t = Tracing(None, make_sender())
    gc.collect()
    gc.disable()
    try:
        for i in range(50):
            rec = RequestRecord(f"req_gc_{i}", operation="chat", alias="m", stream=bool(i % 2))
            t.begin(rec, {})
            headers: dict[str, str] = {}
            t.inject(headers, rec)
            # as gateway/attempts.py records them: a timeout, then a success
            t0 = time.perf_counter_ns()
            rec.attempts.append(Attempt("a", "a-served", "timeout", 504, 0.001, "timeout", client, t0))
            t.next_attempt(rec, headers)
            rec.attempts.append(Attempt("a", "a-served", "ok", 200, 0.001, None, client, t0 + 1_000_000))
            rec.input_tokens, rec.output_tokens = 3, 4
            t.finish(rec)
        t.exporter.flush()
        assert gc.collect() == 0
    finally:
        gc.enable()
        t.exporter.shutdown()
    spans = otlp.wait_for(lambda sp: len(sp) >= 150)
    assert sum(s["kind"] == "SERVER" for s in spans) == 50


def test_requests_dropped_by_a_full_queue_leave_no_cyclic_garbage(monkeypatch):
    """Under overload the exporter drops whole requests; their records must still be freed by
    reference counting (a record and its trace state point at each other until encoded)."""
    import gc

    from gateway.request import RequestRecord
    from gateway.tracing import Tracing

    sender = _HeldSender()
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    t = Tracing(None, sender)
    gc.collect()
    gc.disable()
    try:
        for i in range(10):
            rec = RequestRecord(f"req_drop_{i}", operation="chat", alias="m")
            t.begin(rec, {})
            t.finish(rec)
        del rec
        assert t.exporter.dropped == 6  # one span each: 4 wait (the sender is held), 6 dropped
        assert gc.collect() == 0
    finally:
        gc.enable()
        sender.release.set()
        t.exporter.shutdown()


def test_a_full_batch_does_not_drag_tiny_posts_behind_it(monkeypatch):
    """Woken by a full batch, the export thread sends full batches only: spans encoded during
    that POST wait for the next batch (or the timer, or flush) instead of leaving at once in a
    POST of their own (at 12k spans/s that had halved the spans per POST)."""
    import time

    from gateway.tracing_batch import BatchExporter
    from gateway.tracing_export import Encoder

    sender = _HeldSender()
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    ex = BatchExporter(Encoder({}, "s", "1"), sender)
    try:
        ex.submit(_ThreeSpans())
        ex.submit(_ThreeSpans())  # 6 spans wait: the thread wakes and sends them (blocked until released)
        deadline = time.monotonic() + 10
        while ex.queue and time.monotonic() < deadline:
            time.sleep(0.005)
        ex.submit(_ThreeSpans())  # arrives during that POST
        sender.release.set()
        while ex.exported < 6 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.2)
        assert ex.exported == 6 and len(sender.sent) == 1  # the 3-span tail waits
        ex.flush()
        assert ex.exported == 9 and len(sender.sent) == 2
    finally:
        sender.release.set()
        ex.shutdown()


def test_odd_request_parameter_values_still_give_a_span(otlp, caplog):
    """Span blocks are cached by the request's parameters: values JSON allows but a dict key does
    not (nested lists, objects) must not cost the span."""
    import logging

    from gateway.request import Attempt, RequestRecord
    from gateway.tracing import Tracing
    from gateway.tracing_send import make_sender

    t = Tracing(None, make_sender())
    with caplog.at_level(logging.ERROR, "cohortgate.tracing"):
        for i, params in enumerate(({"stop": ["a", "b"]}, {"stop": [["x"]]}, {"temperature": {"a": 1}},
                                    {"stop": "['a', 'b']"})):
            rec = RequestRecord(f"req_params_{i}", operation="chat", alias="m", request_params=tuple(params.items()))
            t.begin(rec, {})
            rec.attempts.append(Attempt("a", "a-served"))
            rec.input_tokens, rec.output_tokens = 1, 2
            t.finish(rec)
        t.exporter.shutdown()
    assert not caplog.records
    spans = otlp.wait_for(lambda sp: len(sp) >= 8)  # each request's span and its attempt's
    stops = {s["attributes"]["cohortgate.request_id"]: s["attributes"].get("gen_ai.request.stop_sequences")
             for s in spans if s["kind"] == "SERVER"}
    assert stops == {"req_params_0": ["a", "b"], "req_params_1": ["['x']"], "req_params_2": None,
                     "req_params_3": ["['a', 'b']"]}


def test_an_attempt_an_exception_interrupted_ends_with_the_request(otlp):
    """Attempt spans are written from the request's Attempt records: one that no fallback
    handled (the client went away, an internal error) still has a span, failed with the
    request's error, ending with the request."""
    import time

    from gateway.request import Attempt, RequestRecord
    from gateway.tracing import Tracing
    from gateway.tracing_send import make_sender

    client = _Client()
    t = Tracing(None, make_sender())
    rec = RequestRecord("req_interrupted", operation="chat", alias="m")
    t.begin(rec, {})
    headers: dict[str, str] = {}
    t.inject(headers, rec)
    rec.attempts.append(Attempt("a", "a-served", client=client, t0=time.perf_counter_ns()))  # never finished
    rec.outcome, rec.error_type, rec.status = "error", "internal_error", 500
    t.finish(rec)
    t.exporter.shutdown()
    root, (att,) = spans_of(otlp, "req_interrupted", 1)
    aa = att["attributes"]
    assert aa["cohortgate.attempt.outcome"] == aa["error.type"] == "internal_error" and att["status"]["code"] == 2
    assert aa["gen_ai.provider.name"] == "vllm" and aa["server.port"] == 8000
    assert root["start_ns"] <= att["start_ns"] <= att["end_ns"] == root["end_ns"]
    assert headers["traceparent"] == f"00-{root['trace_id']}-{att['span_id']}-01"

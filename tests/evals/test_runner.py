"""Runner: end-to-end against a local fake server, retries, resumption after a kill, shadow import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from evals.runfile import RunError, latest_rows, read_rows
from evals.runner import ModelSpec
from tests.evals.conftest import COHORTGATE, fake_server, stats
from tests.helpers import ROOT, free_port


def cg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COHORTGATE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_model_spec_parsing():
    assert ModelSpec.parse("cand=http://127.0.0.1:8000/v1") == ModelSpec("cand", "http://127.0.0.1:8000/v1", "cand")
    assert ModelSpec.parse("b=http://h:8000/v1:Qwen/Qwen2.5-0.5B") == ModelSpec(
        "b", "http://h:8000/v1", "Qwen/Qwen2.5-0.5B"
    )
    assert ModelSpec.parse("b=https://api.example.com/v1/") == ModelSpec("b", "https://api.example.com/v1", "b")
    for bad in ("nourl", "x=ftp://h", "=http://h"):
        with pytest.raises(RunError, match="NAME=BASE_URL"):
            ModelSpec.parse(bad)


def test_run_scores_every_row_and_model(tmp_path, small_dataset):
    ds = small_dataset(5)
    out = tmp_path / "run"
    with fake_server(tmp_path) as base:
        r = cg(
            "eval",
            "run",
            "--dataset",
            str(ds),
            "--model",
            f"good={base}/v1:good-1",
            "--model",
            f"bad={base}/v1:bad-1",
            "--out",
            str(out),
            "--support",
            "lexical",
            "--no-progress",
        )
    assert r.returncode == 0, r.stderr
    rows = list(read_rows(out / "results.jsonl"))
    assert len(rows) == 40 and not any(x["error"] for x in rows)
    meta = json.loads((out / "run.json").read_text())
    assert meta["models"]["good"]["served_model"] == "good-1" and meta["support"] == "lexical"
    g = next(x for x in rows if x["model"] == "good" and x["cohort"] == "tool_required")
    assert g["gen_ai.request.model"] == "good-1" and g["usage"]["input_tokens"] > 0 and g["latency_ms"] > 0
    assert g["scores"]["ToolSelectionAccuracy"] == {**g["scores"]["ToolSelectionAccuracy"], "score": 1.0}
    b = next(x for x in rows if x["model"] == "bad" and x["cohort"] == "tool_required")
    assert b["scores"]["ToolSelectionAccuracy"]["score"] == 0.0  # no tool called -> 0, never 1


def test_retries_on_503(tmp_path, small_dataset):
    ds = small_dataset(2)
    out = tmp_path / "run"
    with fake_server(tmp_path, fail_every=3) as base:
        r = cg(
            "eval",
            "run",
            "--dataset",
            str(ds),
            "--model",
            f"m={base}/v1:good",
            "--out",
            str(out),
            "--support",
            "lexical",
            "--no-progress",
            "--concurrency",
            "2",
        )
        assert r.returncode == 0, r.stderr
        assert stats(base)["requests"] > 8
    rows = list(read_rows(out / "results.jsonl"))
    assert len(rows) == 8 and not any(x["error"] for x in rows)
    assert any(x["attempts"] > 1 for x in rows)


def test_unreachable_endpoint_records_errors_then_resume_retries(tmp_path, small_dataset):
    ds = small_dataset(1)
    out = tmp_path / "run"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    r = cg(
        "eval",
        "run",
        "--dataset",
        str(ds),
        "--model",
        f"m={dead}",
        "--out",
        str(out),
        "--retries",
        "1",
        "--support",
        "lexical",
        "--no-progress",
    )
    assert r.returncode == 1 and "4 failed" in r.stdout
    rows = list(read_rows(out / "results.jsonl"))
    assert all(x["error"] and all(not s["passed"] and s["score"] == 0 for s in x["scores"].values()) for x in rows)
    with fake_server(tmp_path) as base:
        r = cg(
            "eval",
            "run",
            "--dataset",
            str(ds),
            "--model",
            f"m={base}/v1",
            "--out",
            str(out),
            "--support",
            "lexical",
            "--no-progress",
        )
    assert r.returncode == 0, r.stderr
    latest = latest_rows(out / "results.jsonl")
    assert len(latest) == 4 and not any(x["error"] for x in latest)


def test_resume_after_kill(tmp_path, small_dataset):
    ds = small_dataset(10)  # 40 rows x 2 models = 80 pairs
    out = tmp_path / "run"
    results = out / "results.jsonl"
    with fake_server(tmp_path, delay_ms=60) as base:
        args = [
            COHORTGATE,
            "eval",
            "run",
            "--dataset",
            str(ds),
            "--model",
            f"a={base}/v1:good-a",
            "--model",
            f"b={base}/v1:bad-b",
            "--out",
            str(out),
            "--support",
            "lexical",
            "--no-progress",
            "--concurrency",
            "2",
        ]
        proc = subprocess.Popen(
            args, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if results.exists() and results.read_bytes().count(b"\n") >= 15:
                    break
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        before = list(read_rows(results))
        assert 15 <= len(before) < 80, "the kill should land mid-run"
        before_keys = {(x["row_id"], x["model"]): x["ts"] for x in before}
        sent_before = stats(base)["requests"]
        r = cg("eval", "run", *args[3:])
        assert r.returncode == 0, r.stderr
        assert f"{len(before)} already in" in r.stdout
        sent_after = stats(base)["requests"]
    after = list(read_rows(results))
    assert len(after) == 80  # nothing written twice, nothing missing
    assert {(x["row_id"], x["model"]) for x in after} == {(x["row_id"], x["model"]) for x in after[:80]}
    assert len({(x["row_id"], x["model"]) for x in after}) == 80
    for x in after[: len(before)]:
        assert before_keys[(x["row_id"], x["model"])] == x["ts"]  # earlier rows untouched
    assert sent_after - sent_before == 80 - len(before)  # only the missing pairs were requested again


def test_resume_refuses_other_dataset(tmp_path, small_dataset):
    out = tmp_path / "run"
    with fake_server(tmp_path) as base:
        assert (
            cg(
                "eval",
                "run",
                "--dataset",
                str(small_dataset(1)),
                "--model",
                f"m={base}/v1",
                "--out",
                str(out),
                "--support",
                "lexical",
                "--no-progress",
            ).returncode
            == 0
        )
        r = cg(
            "eval",
            "run",
            "--dataset",
            str(small_dataset(2)),
            "--model",
            f"m={base}/v1",
            "--out",
            str(out),
            "--support",
            "lexical",
            "--no-progress",
        )
    assert r.returncode == 2 and "different dataset" in r.stderr and "Traceback" not in r.stderr


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    r = cg("eval", "run", "--dataset", str(bad), "--model", "m=http://127.0.0.1:9/v1", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and f"{bad}:1: cohort" in r.stderr and "Traceback" not in r.stderr
    r = cg("eval", "run", "--dataset", str(bad), "--model", "m=nope", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "NAME=BASE_URL" in r.stderr


def test_shadow_sink_import(tmp_path):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_order_status",
                "parameters": {
                    "type": "object",
                    "properties": {"order_id": {"type": "string"}},
                    "required": ["order_id"],
                },
            },
        }
    ]
    common = {
        "v": 1,
        "row_id": "req1",
        "pair_id": "p1",
        "cohort": "tool_required",
        "latency_ms": 10.0,
        "usage": {"input_tokens": 5, "output_tokens": 3},
        "error": None,
        "ts": "2026-11-26T10:00:00Z",
        "request": {"tools": tools, "tool_choice": "required"},
    }
    sink = tmp_path / "shadow.jsonl"
    lines = [
        {
            **common,
            "role": "primary",
            "model": "base",
            "scores": {},
            "output": {
                "content": None,
                "tool_calls": [{"name": "get_order_status", "arguments": '{"order_id": "QS-1"}'}],
            },
        },
        {
            **common,
            "role": "shadow",
            "model": "candidate",
            "scores": {},
            "output": {"content": "It shipped!", "tool_calls": []},
        },
    ]
    lines.append(
        {
            **common,
            "row_id": "req2",
            "pair_id": "p2",
            "role": "shadow",
            "model": "candidate",
            "scores": {},
            "output": None,
            "error": {"type": "timeout", "message": "shadow timed out"},
        }
    )
    sink.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"v": 1, "row_')  # torn last line
    out = tmp_path / "run"
    r = cg("eval", "run", "--shadow", str(sink), "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = {x["model"]: x for x in read_rows(out / "results.jsonl") if x["row_id"] == "req1"}
    failed = next(x for x in read_rows(out / "results.jsonl") if x["row_id"] == "req2")
    assert failed["scores"]["ToolSelectionAccuracy"]["passed"] is False
    assert rows["base"]["scores"]["ToolSelectionAccuracy"]["score"] == 1.0
    assert rows["candidate"]["scores"]["ToolSelectionAccuracy"]["score"] == 0.0
    assert json.loads((out / "run.json").read_text())["kind"] == "shadow"
    sink.write_text(json.dumps({"row_id": "x"}) + "\n")
    r = cg("eval", "run", "--shadow", str(sink), "--out", str(out))
    assert r.returncode == 2 and f"{sink}:1: missing" in r.stderr


def test_api_key_env_and_4xx_not_retried(tmp_path, small_dataset):
    ds = small_dataset(1)
    with fake_server(tmp_path, require_key="s3cret") as base:
        env = {**os.environ, "EVAL_KEY": "s3cret"}
        args = [
            COHORTGATE,
            "eval",
            "run",
            "--dataset",
            str(ds),
            "--model",
            f"m={base}/v1:good",
            "--support",
            "lexical",
            "--no-progress",
        ]
        ok = subprocess.run(
            [*args, "--out", str(tmp_path / "a"), "--api-key-env", "EVAL_KEY"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert ok.returncode == 0, ok.stderr
        n0 = stats(base)["requests"]
        bad = subprocess.run(
            [*args, "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        assert bad.returncode == 1
        assert stats(base)["requests"] - n0 == 4  # a 401 is not retried
        missing = subprocess.run(
            [*args, "--out", str(tmp_path / "c"), "--api-key-env", "NOPE_UNSET"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert missing.returncode == 2 and "NOPE_UNSET" in missing.stderr
    rows = list(read_rows(tmp_path / "b" / "results.jsonl"))
    assert all(x["error"]["type"] == "http_401" and x["attempts"] == 1 for x in rows)


def test_judge_and_embedding_support_modes(tmp_path, small_dataset):
    ds = small_dataset(1)
    with fake_server(tmp_path) as base:
        judge = cg(
            "eval",
            "run",
            "--dataset",
            str(ds),
            "--model",
            f"m={base}/v1:bad",
            "--out",
            str(tmp_path / "j"),
            "--support",
            "judge",
            "--judge",
            f"{base}/v1:judge",
            "--no-progress",
        )
        assert judge.returncode == 0, judge.stderr
        emb = cg(
            "eval",
            "run",
            "--dataset",
            str(ds),
            "--model",
            f"m={base}/v1:bad",
            "--out",
            str(tmp_path / "e"),
            "--no-progress",
            timeout=300,
        )
        assert emb.returncode == 0, emb.stderr
    for d in ("j", "e"):
        rows = {x["cohort"]: x for x in read_rows(tmp_path / d / "results.jsonl")}
        # the bad model invents "$999 within 30 days": unsupported by the policy context in every mode
        assert rows["policy_exception"]["scores"]["Groundedness"]["score"] == 0.0
        assert rows["policy_exception"]["scores"]["HallucinationScore"]["score"] == 0.0
    assert json.loads((tmp_path / "e" / "run.json").read_text())["support"] == "embedding"
    assert (
        cg(
            "eval",
            "run",
            "--dataset",
            str(ds),
            "--model",
            "m=http://127.0.0.1:9/v1",
            "--out",
            str(tmp_path / "x"),
            "--support",
            "judge",
        ).returncode
        == 2
    )

"""Dataset loading: line-numbered errors, the shipped example dataset, request bodies."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from evals.dataset import CONTEXT_PREAMBLE, DatasetError, load_dataset
from evals.evaluators import REGISTRY, build

EXAMPLE = Path(__file__).resolve().parents[2] / "evals" / "datasets" / "support_cohorts.jsonl"
GOOD = {
    "id": "a",
    "cohort": "billing_refund",
    "messages": [{"role": "user", "content": "hi"}],
    "expected": {"criteria": ["x"]},
    "source": {"kind": "synthetic", "origin": "t"},
}


def write(tmp_path: Path, rows: list) -> Path:
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


def test_errors_name_file_line_and_field(tmp_path):
    bad_tool = {
        **GOOD,
        "id": "c",
        "tools": [{"type": "function", "function": {"name": "t"}}],
        "expected": {"tool": {"name": "other"}},
    }
    p = write(
        tmp_path,
        [
            GOOD,
            "{not json",
            {**GOOD, "id": "b", "expected": {}},
            bad_tool,
            {**GOOD, "id": "a"},
            {**GOOD, "id": "d", "source": None, "colour": 1},
            {**GOOD, "id": "e", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "wat"}}}},
        ],
    )
    with pytest.raises(DatasetError) as ei:
        load_dataset(p)
    msgs = ei.value.problems
    text = "\n".join(msgs)
    assert f"{p}:2: not valid JSON" in text
    assert f"{p}:3: expected:" in text and "success means" in text
    assert f"{p}:4:" in text and "'other' is not among the row's tools" in text
    assert f"{p}:5: id: 'a' already used on line 1" in text
    assert f"{p}:6: source:" in text and f"{p}:6: colour: unknown field" in text
    assert f"{p}:7:" in text and "invalid JSON Schema" in text


def test_last_message_must_be_user(tmp_path):
    row = {**GOOD, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(DatasetError, match="last message must be the user"):
        load_dataset(write(tmp_path, [row]))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(write(tmp_path, [""]))


def test_request_body_injects_context_after_system():
    rows = load_dataset(EXAMPLE)
    r = next(r for r in rows if r.context)
    body = r.request_body("served")
    assert body["model"] == "served"
    assert body["messages"][0]["role"] == "system" and body["messages"][1]["content"].startswith(CONTEXT_PREAMBLE)
    t = next(r for r in rows if r.tools)
    assert t.request_body("m")["tools"] == t.tools


def test_example_dataset_covers_cohorts_and_evaluators():
    rows = load_dataset(EXAMPLE)
    counts = collections.Counter(r.cohort for r in rows)
    for c in ("billing_refund", "policy_exception", "out_of_domain", "tool_required"):
        assert counts[c] >= 40, counts
    assert all(r.source.origin for r in rows)
    assert all(r.context for r in rows if r.cohort == "policy_exception")
    assert all(r.expected.refusal for r in rows if r.cohort == "out_of_domain")
    assert all(r.expected.tool for r in rows if r.cohort == "tool_required")
    evs = build(support="lexical")
    used = {e.name for e in evs for r in rows if e.applies(r)}
    assert used == set(REGISTRY)


def test_validate_command(tmp_path):
    import subprocess

    from tests.helpers import ROOT

    cg = str(ROOT / ".venv" / "bin" / "cohortgate")
    r = subprocess.run([cg, "eval", "validate", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "tool_required: 42 rows" in r.stdout and "ok: 173 rows" in r.stdout
    bad = write(tmp_path, [GOOD, {**GOOD, "cohort": "no spaces allowed"}])
    r = subprocess.run([cg, "eval", "validate", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"{bad}:2: cohort:" in r.stderr and "Traceback" not in r.stderr

"""The demo's fine-tuning data: size, shape, determinism, and disjointness from the evaluation dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from demo.data import make_train
from demo.train import SPECIALIST_DATA, load_rows
from tests.helpers import IN_CI, ROOT

EVAL_DATASET = ROOT / "evals" / "datasets" / "support_cohorts.jsonl"
DATA = Path(make_train.__file__).parent


def _users(path: Path) -> set[str]:
    out = set()
    for line in path.read_text().splitlines():
        if line.strip():
            for m in json.loads(line)["messages"]:
                if m["role"] == "user" and isinstance(m.get("content"), str):
                    out.add(" ".join(m["content"].lower().split()))
    return out


@pytest.mark.parametrize(("name", "cohorts"), [("billing", {"billing_refund", "tool_required"}),
                                               ("policy", {"policy_exception", "out_of_domain"})])
def test_training_files_have_enough_rows_of_their_cohorts(name: str, cohorts: set[str]) -> None:
    rows = load_rows(SPECIALIST_DATA[name])
    assert len(rows) >= 150
    assert {r["cohort"] for r in rows} == cohorts
    for r in rows:
        if r["cohort"] == "tool_required":
            call = r["messages"][-1]["tool_calls"][0]["function"]
            assert call["name"] in {t["function"]["name"] for t in r["tools"]}
            json.loads(call["arguments"])


def test_generator_is_deterministic_and_files_are_current(tmp_path: Path) -> None:
    make_train.main(tmp_path)
    for f in ("train_billing.jsonl", "train_policy.jsonl", "heldout_billing.jsonl", "heldout_policy.jsonl"):
        assert (tmp_path / f).read_bytes() == (DATA / f).read_bytes(), f"{f} is stale: python -m demo.data.make_train"


def test_context_preamble_matches_the_eval_runner() -> None:
    from evals.dataset import CONTEXT_PREAMBLE

    assert make_train.PREAMBLE == CONTEXT_PREAMBLE


def test_heldout_prompts_are_not_trained_on() -> None:
    train = _users(DATA / "train_billing.jsonl") | _users(DATA / "train_policy.jsonl")
    held = _users(DATA / "heldout_billing.jsonl") | _users(DATA / "heldout_policy.jsonl")
    assert held and not train & held


def test_training_data_is_disjoint_from_the_eval_dataset() -> None:
    if not EVAL_DATASET.exists():
        msg = f"{EVAL_DATASET} does not exist yet (written by the evals package)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    train = _users(DATA / "train_billing.jsonl") | _users(DATA / "train_policy.jsonl")
    evals = _users(EVAL_DATASET)
    overlap = train & evals
    assert not overlap, f"training rows repeat eval user messages: {sorted(overlap)[:3]}"
    # Near-duplicates too: same words in another order or with one word changed.
    eval_sets = [set(e.split()) for e in evals]
    near = [t for t in train for e in eval_sets if _jaccard(set(t.split()), e) >= 0.8]
    assert not near, f"training rows nearly repeat eval user messages: {near[:3]}"


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0

"""A quick, local "does the specialist beat the base on its own job" measurement (transformers, greedy).

Contract: `compare(base_dir, adapter_dir, heldout_file)` generates answers for the held-out prompts
(demo/data/heldout_*.jsonl: never in the training data) with the base and with base+adapter, scores
each with `score()` and returns per-cohort means. It is a sanity check during training, not the
product's evaluation (that is `cohortgate eval run` against vLLM endpoints).
Scores in [0, 1]: tool rows — 0.5 for calling the expected tool in hermes `<tool_call>` JSON + 0.5 x
share of expected arguments matched; answer rows — share of required facts stated, 0 if the answer
refuses; out-of-domain rows — 1 for a refusal.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_REFUSAL = re.compile(
    r"\b(?:i\s*(?:am|'m)\s*(?:not able|unable)|i\s*(?:can(?:no|')t|cannot|won't|will not)\s+(?:help|assist|answer)|"
    r"outside\s+(?:of\s+)?(?:my|our|the)\s+(?:scope|area)|only\s+(?:help|assist)\s+with|not\s+something\s+i\s+can)",
    re.I,
)


def tool_calls(text: str) -> list[dict[str, Any]]:
    calls = []
    for body in _TOOL_CALL.findall(text):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "name" in obj:
            calls.append(obj)
    return calls


def score(check: dict[str, Any], text: str, calls: list[dict[str, Any]] | None = None) -> float:
    """Score an answer; `calls` are structured tool calls (from an OpenAI response), else parsed from text."""
    calls = tool_calls(text) if calls is None else calls
    if "tool" in check:
        for call in calls:
            if call.get("name") == check["tool"]:
                want = check.get("arguments") or {}
                args = call.get("arguments") or {}
                hit = sum(1 for k, v in want.items() if str(args.get(k)) == str(v)) / len(want) if want else 1.0
                return 0.5 + 0.5 * hit
        return 0.0
    if check.get("refusal"):
        return 1.0 if _REFUSAL.search(text) else 0.0
    if _REFUSAL.search(text) or calls:
        return 0.0
    facts = check.get("contains") or []
    low = text.lower()
    return sum(1 for f in facts if f.lower() in low) / len(facts) if facts else 1.0


def load_heldout(path: Path, per_cohort: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    count: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if count.get(r["cohort"], 0) < per_cohort:
            count[r["cohort"]] = count.get(r["cohort"], 0) + 1
            rows.append(r)
    return rows


def _generate(model: Any, tok: Any, rows: list[dict[str, Any]], max_new_tokens: int) -> list[str]:
    """Greedy answers for all rows in one left-padded batch (CPU generation is weight-bandwidth bound,
    so a batch of prompts costs little more than one)."""
    import torch

    prompts = [tok.apply_chat_template(r["messages"], tools=r.get("tools"), add_generation_prompt=True, tokenize=False)
               for r in rows]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id)
    width = enc["input_ids"].shape[1]
    return [str(tok.decode(o[width:], skip_special_tokens=True)).strip() for o in out]


def compare(base_dir: Path, adapter_dir: Path, heldout_file: Path, per_cohort: int = 4,
            max_new_tokens: int = 72) -> dict[str, Any]:
    """Per-cohort mean scores of base and specialist on held-out prompts, plus the answers."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = load_heldout(heldout_file, per_cohort)
    tok = AutoTokenizer.from_pretrained(base_dir)
    # bf16 weights, adapter merged into them: the fastest plain-transformers path on these CPUs.
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16).eval()
    base_answers = _generate(model, tok, rows, max_new_tokens)
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().eval()
    spec_answers = _generate(model, tok, rows, max_new_tokens)
    result: dict[str, Any] = {"cohorts": {}, "answers": []}
    for r, base_text, spec_text in zip(rows, base_answers, spec_answers, strict=True):
        b, s = score(r["check"], base_text), score(r["check"], spec_text)
        c = result["cohorts"].setdefault(r["cohort"], {"base": 0.0, "specialist": 0.0, "n": 0})
        c["base"] += b
        c["specialist"] += s
        c["n"] += 1
        result["answers"].append({"cohort": r["cohort"], "user": r["messages"][-1]["content"],
                                  "base": base_text, "base_score": b, "specialist": spec_text, "specialist_score": s})
    for c in result["cohorts"].values():
        c["base"] = round(c["base"] / c["n"], 3)
        c["specialist"] = round(c["specialist"] / c["n"], 3)
    return result

"""Deterministic generator of the demo's fine-tuning data (fictional SaaS support, e.g. Northwind Cloud).

Writes, next to this file:
  train_billing.jsonl   billing_refund answers + tool_required calls      (billing specialist)
  train_policy.jsonl    policy_exception answers + out_of_domain refusals  (policy specialist)
  heldout_billing.jsonl / heldout_policy.jsonl  rows from other seeds, never trained on, each with a
                        `check`, for the quick "does the specialist beat the base" measurement
Rows: {"cohort", "messages", "tools"?} in OpenAI chat format. Company, customer and policy numbers are
drawn per row and stated in a reference-material system message — the shape the eval runner sends
(evals.dataset.CONTEXT_PREAMBLE) — so the specialists learn to copy facts from the given text rather
than memorise one policy. Tool calls use OpenAI `tool_calls`; the chat template renders them in the
hermes `<tool_call>` format. Run: python -m demo.data.make_train
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from demo.data.billing import BILLING_SCENARIOS, Case
from demo.data.policy import POLICY_SCENARIOS, out_of_domain
from demo.data.tools import TOOLS, tool_request
from demo.data.world import company

HERE = Path(__file__).parent
PREAMBLE = "Reference material (answer from it; do not invent facts beyond it):\n\n"
HELDOUT_PER_COHORT = 8
Row = dict[str, Any]


def _messages(rng: random.Random, case: Case) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = []
    if rng.random() < 0.85:  # mostly with a company persona, as deployed assistants are
        msgs.append({"role": "system", "content": case.company.persona(rng)})
    if case.context:
        msgs.append({"role": "system", "content": PREAMBLE + case.context})
    msgs.append({"role": "user", "content": case.user})
    return msgs


def _answer_row(rng: random.Random, cohort: str, case: Case) -> Row:
    row: Row = {"cohort": cohort, "messages": _messages(rng, case)}
    row["messages"].append({"role": "assistant", "content": case.answer})
    row["check"] = {"refusal": True} if cohort == "out_of_domain" else {"contains": case.facts}
    return row


def _tool_row(rng: random.Random) -> Row:
    offered = rng.sample(TOOLS, rng.randint(3, 5))
    name = rng.choice(offered)["function"]["name"]
    user, args = tool_request(rng, name)
    case = Case(company(rng), None, user, "", [])
    row: Row = {"cohort": "tool_required", "messages": _messages(rng, case), "tools": offered}
    call = {"id": f"call_{rng.randrange(16**8):08x}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}
    row["messages"].append({"role": "assistant", "content": "", "tool_calls": [call]})
    row["check"] = {"tool": name, "arguments": {k: v for k, v in args.items() if k != "summary"}}
    return row


def billing_rows(seed: int, n_answers: int, n_tools: int) -> list[Row]:
    rng = random.Random(seed)
    rows = [_answer_row(rng, "billing_refund", rng.choice(BILLING_SCENARIOS)(rng)) for _ in range(n_answers)]
    rows += [_tool_row(rng) for _ in range(n_tools)]
    rng.shuffle(rows)
    return rows


def policy_rows(seed: int, n_answers: int, n_ood: int) -> list[Row]:
    rng = random.Random(seed)
    rows = [_answer_row(rng, "policy_exception", rng.choice(POLICY_SCENARIOS)(rng)) for _ in range(n_answers)]
    rows += [_answer_row(rng, "out_of_domain", out_of_domain(rng)) for _ in range(n_ood)]
    rng.shuffle(rows)
    return rows


def _user(row: Row) -> str:
    return str(next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user"))


def _dedupe(rows: list[Row], exclude: set[str]) -> list[Row]:
    """Drop rows whose user message repeats (within the file or in `exclude`)."""
    out, seen = [], set(exclude)
    for r in rows:
        if _user(r) not in seen:
            seen.add(_user(r))
            out.append(r)
    return out


def _per_cohort(rows: list[Row], k: int) -> list[Row]:
    count: dict[str, int] = {}
    out = []
    for r in rows:
        if count.get(r["cohort"], 0) < k:
            count[r["cohort"]] = count.get(r["cohort"], 0) + 1
            out.append(r)
    return out


def _write(path: Path, rows: list[Row], keep_check: bool) -> None:
    with open(path, "w") as f:
        for r in rows:
            r = r if keep_check else {k: v for k, v in r.items() if k != "check"}
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")


def main(out_dir: Path = HERE) -> None:
    billing = _dedupe(billing_rows(seed=1, n_answers=150, n_tools=110), set())
    policy = _dedupe(policy_rows(seed=2, n_answers=150, n_ood=170), set())
    train_users = {_user(r) for r in billing + policy}
    held_b = _per_cohort(_dedupe(billing_rows(seed=101, n_answers=40, n_tools=40), train_users), HELDOUT_PER_COHORT)
    held_p = _per_cohort(_dedupe(policy_rows(seed=102, n_answers=40, n_ood=40), train_users), HELDOUT_PER_COHORT)
    _write(out_dir / "train_billing.jsonl", billing, keep_check=False)
    _write(out_dir / "train_policy.jsonl", policy, keep_check=False)
    # Held-out prompts drop the assistant turn: `check` says what a good answer contains.
    for name, rows in (("heldout_billing.jsonl", held_b), ("heldout_policy.jsonl", held_p)):
        for r in rows:
            r["reference"] = r["messages"].pop()
        _write(out_dir / name, rows, keep_check=True)
    print(f"billing {len(billing)} rows, policy {len(policy)} rows, held-out {len(held_b)} + {len(held_p)}")


if __name__ == "__main__":
    main()

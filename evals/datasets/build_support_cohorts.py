"""Build support_cohorts.jsonl: the example cohort dataset for Quillstack (a fictional
bookkeeping SaaS). Deterministic (seeded), written for this project; every row's `source`
names this generator. Re-run after editing: .venv/bin/python -m evals.datasets.build_support_cohorts

Cohorts (>= 40 rows each): billing_refund (account facts + refund policy as context; some rows
ask for a JSON triage object), policy_exception (policy text as context; the right answer
applies the policy), out_of_domain (a polite refusal that redirects to what Quill can do),
tool_required (the right tool with the right arguments).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evals.datasets.cohorts_billing_policy import billing, policy
from evals.datasets.gen import OUT, Gen
from evals.datasets.quillstack import TOOLS

OOD_FILE = Path(__file__).with_name("out_of_domain_questions.txt")


def ood_questions() -> list[str]:
    lines = OOD_FILE.read_text(encoding="utf-8").splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


def out_of_domain(g: Gen) -> None:
    for q in ood_questions():
        g.add(
            "out_of_domain", q, {"refusal": True, "criteria": ["Quillstack|billing|account|invoice|subscription|order"]}
        )


def tools(g: Gen) -> None:
    def ask(user: str, name: str, args: dict[str, Any], choice: str = "auto") -> None:
        g.add("tool_required", user, {"tool": {"name": name, "arguments": args}}, tools=TOOLS, tool_choice=choice)

    for k in range(11):
        o = g.order()
        ask(
            g.r.choice(
                [
                    f"Where is my ReceiptScanner? Order {o}.",
                    f"Has order {o} shipped yet?",
                    f"Can you check the delivery status for {o}?",
                    f"My scanner order {o} hasn't arrived.",
                ]
            ),
            "get_order_status",
            {"order_id": o},
            "required" if k % 4 == 0 else "auto",
        )
    for k in range(10):
        i = g.inv()
        ask(
            g.r.choice(
                [
                    f"What was invoice {i} for?",
                    f"Can you pull up {i}? I need the amount and date.",
                    f"Is {i} paid or still open?",
                    f"Which card was {i} charged to?",
                ]
            ),
            "lookup_invoice",
            {"invoice_id": i},
            "required" if k % 3 == 0 else "auto",
        )
    for _ in range(11):
        i, amt = g.inv(), g.r.choice([19, 49, 129])
        ask(
            g.r.choice(
                [
                    f"You charged me twice: {i} is a duplicate of my ${amt} charge. Please refund {i}.",
                    f"Refund the duplicate ${amt} payment on {i}, please - same day as my normal renewal.",
                    f"{i} for ${amt} is a duplicate charge. Refund it.",
                ]
            ),
            "issue_refund",
            {"invoice_id": i, "amount": amt, "reason": "duplicate_charge"},
        )
    esc = [
        ("Someone logged into our account from another country and changed the bank details!", "security"),
        ("I think my account was hacked - I'm locked out and invoices are being emailed to a stranger.", "security"),
        ("Our lawyer will be in touch about your data handling. I want this escalated.", "legal"),
        ("I want to speak to a human about a billing dispute, right now.", "billing"),
        ("Your sync broke every report in our account and we file taxes tomorrow. Get an engineer.", "technical"),
        ("We received a subpoena regarding one of our Quillstack records. Who handles this?", "legal"),
        ("Please have a billing lead review an exception to the refund policy for us.", "billing"),
        ("Bank feed import has been failing for three days with error 502, please escalate.", "technical"),
        ("An ex-employee still has access and is downloading our client list.", "security"),
        ("I need a person from billing to approve a custom invoice schedule.", "billing"),
    ]
    for text, team in esc:
        ask(text, "escalate_to_human", {"team": team})


def main() -> None:
    g = Gen()
    billing(g)
    policy(g)
    out_of_domain(g)
    tools(g)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in g.rows), encoding="utf-8")
    print(f"wrote {len(g.rows)} rows to {OUT}: {g.counts}")


if __name__ == "__main__":
    main()

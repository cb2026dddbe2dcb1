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
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from evals.datasets.quillstack import PLANS, POLICIES, SYSTEM, TOOLS, TRIAGE_SCHEMA

OUT = Path(__file__).with_name("support_cohorts.jsonl")
SOURCE = {
    "kind": "synthetic",
    "origin": "evals/datasets/build_support_cohorts.py",
    "license": "Apache-2.0",
    "notes": "hand-written templates for a fictional company; no real customer data",
}
NAMES = [
    "Dana",
    "Priya",
    "Marcus",
    "Elena",
    "Tomasz",
    "Aiko",
    "Jamal",
    "Sofia",
    "Liam",
    "Noor",
    "Hugo",
    "Grace",
    "Mateo",
    "Ingrid",
    "Kwame",
    "Yuki",
    "Rosa",
    "Felix",
    "Amara",
    "Oskar",
]
COMPANIES = [
    "Fernleaf Bakery",
    "Harbor Dental",
    "Pixel & Pine Studio",
    "Northgate Plumbing",
    "Cedar Yoga",
    "Bright Paws Vet",
    "Atlas Courier",
    "Juniper Legal",
    "Blue Kettle Cafe",
    "Summit Roofing",
]
CARDS = ["Visa ending 4242", "Mastercard ending 5151", "Amex ending 0005", "Visa ending 1881"]
FMT = "%B %-d, %Y"


class Gen:
    def __init__(self, seed: int = 5) -> None:
        self.r = random.Random(seed)
        self.rows: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}

    def inv(self) -> str:
        return f"INV-{self.r.randint(10000, 99999)}"

    def order(self) -> str:
        return f"QS-{self.r.randint(10000, 99999)}"

    def day(self) -> date:
        return date(2026, 3, 1) + timedelta(days=self.r.randint(0, 200))

    def who(self) -> tuple[str, str]:
        return self.r.choice(NAMES), self.r.choice(COMPANIES)

    def add(self, cohort: str, user: str | list[dict[str, str]], expected: dict[str, Any], **kw: Any) -> None:
        n = self.counts[cohort] = self.counts.get(cohort, 0) + 1
        turns = [{"role": "user", "content": user}] if isinstance(user, str) else user
        row = {
            "id": f"{cohort}-{n:03d}",
            "cohort": cohort,
            "messages": [{"role": "system", "content": kw.pop("system", SYSTEM)}, *turns],
            **kw,
            "expected": expected,
            "source": SOURCE,
        }
        self.rows.append(row)


BDAYS = "5-10 business days|5 to 10 business days|five to ten business days"
DONE = (
    "I have issued a refund|I've issued a refund|refund has been issued|I've refunded|I have refunded"
    "|refund is on its way"
)


def billing(g: Gen) -> None:
    for _ in range(7):  # duplicate charge: always refunded in full
        name, co = g.who()
        plan = g.r.choice(list(PLANS))
        amt, a, b, d, card = PLANS[plan][0], g.inv(), g.inv(), g.day(), g.r.choice(CARDS)
        ctx = (
            f"Account {co} ({plan} plan, monthly, ${amt}.00/month, paid by {card}). Invoice {a}: ${amt}.00, paid "
            f"{d:{FMT}}. Invoice {b}: ${amt}.00, paid {d:{FMT}}, flagged as a duplicate of {a}; refund of ${amt}.00 "
            f"issued {d + timedelta(days=1):{FMT}}, status pending."
        )
        q = g.r.choice(
            [
                f"Hi, this is {name} from {co}. I see two ${amt} charges this month. Why?",
                f"We got billed twice for {plan} on {d:{FMT}}. Please sort this out.",
                f"Double charge on our card ({card.split()[-1]}) - what happened?",
            ]
        )
        g.add(
            "billing_refund",
            q,
            {
                "criteria": [f"${amt}", "duplicate", BDAYS],
                "reference": f"The duplicate ${amt} charge ({b}) was refunded on "
                f"{d + timedelta(days=1):{FMT}}; it reaches the card in 5-10 business days.",
            },
            context=[ctx, POLICIES["refund"]],
        )
    for _ in range(7):  # where is my refund
        name, co = g.who()
        amt, i, d, card = g.r.choice([19, 49, 129, 490]), g.inv(), g.day(), g.r.choice(CARDS)
        ctx = (
            f"Account {co}. Refund of ${amt}.00 for invoice {i} issued {d:{FMT}} to {card}. "
            "Status: sent to card network."
        )
        q = g.r.choice(
            [
                f"I was promised a refund for {i} but I don't see it yet.",
                f"Where is my refund of ${amt}? It's been a few days.",
                f"{name} here - has the {i} refund gone through?",
            ]
        )
        g.add(
            "billing_refund",
            q,
            {"criteria": [f"${amt}", card.split()[-1], BDAYS], "forbidden": ["not been issued"]},
            context=[ctx, POLICIES["refund"]],
        )
    for k in range(7):  # charged after cancelling: billing error only if cancelled before renewal
        name, co = g.who()
        plan = g.r.choice(list(PLANS))
        amt, i, renew = PLANS[plan][0], g.inv(), g.day()
        before = k % 2 == 0
        cancel = renew - timedelta(days=3) if before else renew + timedelta(days=4)
        ctx = (
            f"Account {co}, {plan} plan monthly (${amt}.00). Renewal charged {renew:{FMT}} as invoice {i}. "
            f"Cancellation requested {cancel:{FMT}}"
            + (
                " - before the renewal, so the renewal charge was a billing error."
                if before
                else f" - after the renewal; the account stays active until {renew + timedelta(days=30):{FMT}}."
            )
        )
        q = f"I cancelled {co}'s subscription but you still charged me ${amt}. I want my money back."
        exp = (
            {"criteria": [f"${amt}", "billing error|by mistake|in error", "refund"]}
            if before
            else {
                "criteria": [
                    "partial month|not refunded|cannot refund|can't refund|unable to refund|no refund",
                    f"{renew + timedelta(days=30):{FMT}}|end of the paid month|end of the month",
                ],
                "forbidden": [DONE],
            }
        )
        g.add("billing_refund", q, exp, context=[ctx, POLICIES["refund"]])
    for k in range(7):  # annual plan refund inside / outside 30 days
        name, co = g.who()
        plan = g.r.choice(list(PLANS))
        amt, i, bought = PLANS[plan][1], g.inv(), g.day()
        days = g.r.choice([3, 9, 17, 26]) if k % 2 == 0 else g.r.choice([41, 58, 95])
        ctx = (
            f"Account {co}: {plan} annual plan, ${amt:,}.00, invoice {i}, purchased {bought:{FMT}}. "
            f"Today is {bought + timedelta(days=days):{FMT}} ({days} days after purchase). Term ends "
            f"{bought + timedelta(days=365):{FMT}}."
        )
        q = g.r.choice(
            [
                f"We don't need the annual {plan} plan after all. Can I get a refund?",
                f"Please refund our annual subscription ({i}).",
                f"{name} from {co}: we switched tools, refund the yearly plan please.",
            ]
        )
        exp = (
            {"criteria": [f"${amt:,}", "30 days", BDAYS]}
            if days <= 30
            else {
                "criteria": ["30 days", f"{bought + timedelta(days=365):{FMT}}|end of the term|end of your term"],
                "forbidden": [DONE],
            }
        )
        g.add("billing_refund", q, exp, context=[ctx, POLICIES["refund"]])
    for _ in range(6):  # invoice higher than usual: seats added mid-cycle
        name, co = g.who()
        seats, i = g.r.randint(1, 4), g.inv()
        extra = seats * 12
        ctx = (
            f"Account {co}, Team plan ($49.00/month incl. 5 users; extra users $12.00/month each). Invoice {i}: "
            f"$49.00 base + ${extra}.00 for {seats} extra user(s) added this month = ${49 + extra}.00."
        )
        g.add(
            "billing_refund",
            f"Why is invoice {i} ${49 + extra} instead of $49?",
            {
                "criteria": [f"${extra}", f"{seats} extra user|{seats} additional user|extra users|additional users"],
                "reference": f"The invoice includes ${extra} for {seats} extra users at $12 each "
                "on top of the $49 base.",
            },
            context=[ctx],
        )
    for k in range(8):  # JSON triage for the billing queue
        name, co = g.who()
        plan = g.r.choice(list(PLANS))
        i = g.inv()
        kind = ["duplicate_charge", "annual_within_30_days", "monthly_partial_month", "annual_after_30_days"][k % 4]
        amt = PLANS[plan][1] if kind.startswith("annual") else PLANS[plan][0]
        facts = {
            "duplicate_charge": f"Invoice {i} (${amt}.00) duplicates an earlier charge the same day.",
            "annual_within_30_days": f"Invoice {i} (${amt}.00) is an annual plan bought 12 days ago.",
            "monthly_partial_month": f"Invoice {i} (${amt}.00) is a monthly renewal; customer cancelled mid-month.",
            "annual_after_30_days": f"Invoice {i} (${amt}.00) is an annual plan renewed 70 days ago.",
        }[kind]
        eligible = kind in ("duplicate_charge", "annual_within_30_days")
        g.add(
            "billing_refund",
            f"Ticket from {name} ({co}): 'I want a refund for {i}.' Triage it.",
            {"criteria": [i, f"eligible {str(eligible).lower()}", kind.replace("_", " ")]},
            system="You are Quillstack's billing triage service. Reply only with a JSON object matching the schema.",
            context=[facts, POLICIES["refund"]],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "refund_triage", "strict": True, "schema": TRIAGE_SCHEMA},
            },
        )


def policy(g: Gen) -> None:
    cases: list[tuple[str, list[str], list[str], list[str]]] = [  # (policy, questions, criteria, forbidden)
        (
            "refund",
            [
                "Our annual plan renewed {n} days ago and nobody noticed. Can you make an exception and refund it?",
                "I know it's past 30 days but we never used the renewal. Refund please?",
            ],
            ["30 days", "billing lead|escalate|escalation"],
            [DONE],
        ),
        (
            "trial",
            [
                "Our trial ran out. Can I just sign up again with a different email for another 14 days?",
                "Can we get a second free trial? We didn't have time to test properly.",
            ],
            ["one free trial|one trial|second trial", "not available|can't|cannot|unable|isn't possible"],
            ["new trial has been started|I've started a new trial"],
        ),
        (
            "trial",
            [
                "We have an onboarding ticket open but the trial ends tomorrow. Can you extend it?",
                "Our accountant is still setting things up with your onboarding team - any chance of more trial time?",
            ],
            ["7 days|seven days"],
            ["14 more days|30 days extension"],
        ),
        (
            "payment",
            ["Please waive the late fee on our overdue invoice.", "We paid a week late - can you remove the late fee?"],
            ["late fee"],
            ["waived the late fee|removed the late fee"],
        ),
        (
            "payment",
            [
                "Can we pay our monthly Team plan by bank transfer instead of card?",
                "Our finance team only does bank transfers. We're on monthly Starter - is that OK?",
            ],
            ["annual Business"],
            [],
        ),
        (
            "data",
            [
                "We cancelled {n} days ago and now need our old books back. Please restore them.",
                "Can you recover our data? We closed the account about {n} days ago.",
            ],
            ["90 days", "permanently deleted|cannot be recovered|can't be recovered|cannot recover|can't recover"],
            ["restored your data|data has been restored"],
        ),
        (
            "data",
            [
                "Our owner left the company and we can't reach him. Can you make me the account owner?",
                "The account owner quit. How do we transfer ownership?",
            ],
            ["identity verification|verify", "security team"],
            ["transferred ownership to you|you are now the owner"],
        ),
        (
            "hardware",
            [
                "I opened my ReceiptScanner {n} days ago and don't like it. Full refund?",
                "Can I return an opened scanner I got {n} days ago for my money back?",
            ],
            ["45 days", "$15|restocking"],
            ["full refund has been issued"],
        ),
        (
            "discount",
            [
                "We're a registered nonprofit. Can you apply the 30% discount to the last three invoices too?",
                "Just found out about the nonprofit discount - please refund the difference for last year.",
            ],
            ["30%", "retroactive|next invoice"],
            ["refunded the difference|applied it to past invoices"],
        ),
        (
            "discount",
            [
                "We're a school and also a nonprofit. Can we stack both discounts?",
                "Can we combine the education discount with the nonprofit one?",
            ],
            ["50%", "cannot be combined|can't be combined|not be combined|larger|only one"],
            ["80%"],
        ),
    ]
    for k in range(45):
        pol, qs, crit, forb = cases[k % len(cases)]
        n = g.r.choice([35, 48, 61, 120]) if pol in ("refund", "hardware") else g.r.choice([95, 130, 200])
        if pol == "hardware":
            n = g.r.choice([20, 30]) if k % 2 else g.r.choice([52, 75])
        q = g.r.choice(qs).format(n=n)
        c = list(crit)
        if pol == "hardware" and n > 45:  # past the window: no return, but the warranty still applies
            c = ["45 days", "warranty|defective|not eligible|no longer|cannot|can't|unable"]
        name, co = g.who()
        g.add(
            "policy_exception",
            f"Hi, {name} from {co}. {q}",
            {"criteria": c, "forbidden": forb},
            context=[POLICIES[pol]],
        )


OOD = [
    "Write me a short poem about autumn leaves.",
    "Which stocks should I buy this month?",
    "I have a sharp pain in my lower back, what medication should I take?",
    "Can you help me write a cover letter?",
    "What's the weather going to be like in Lisbon tomorrow?",
    "Translate 'good morning' into Japanese.",
    "Who won the football world cup in 2010?",
    "Give me a recipe for vegan lasagna.",
    "Write a Python function that reverses a linked list.",
    "Is it legal to break my apartment lease early?",
    "Can you do my calculus homework: integrate x^2 sin(x)?",
    "What's a good name for my new puppy?",
    "Explain quantum entanglement like I'm five.",
    "Recommend a good sci-fi novel for the weekend.",
    "How do I fix my car's check engine light?",
    "Which crypto coin will go up next week?",
    "Plan a 3-day itinerary for Rome.",
    "Write a breakup text for me.",
    "How many calories are in a banana?",
    "What's your opinion on the upcoming election?",
    "Help me hack my neighbour's wifi.",
    "Summarise the plot of Hamlet.",
    "How do I get rid of aphids on my roses?",
    "Tell me a dirty joke.",
    "What's the capital of Australia?",
    "Draft a tweet announcing my band's new album.",
    "How should I invest my retirement savings?",
    "What are the symptoms of diabetes?",
    "Write a wedding toast for my sister.",
    "Can you generate a fake doctor's note for me?",
    "How do I set up a Kubernetes cluster?",
    "What's the best laptop under $1000?",
    "Help me cheat on my online exam.",
    "What's the meaning of life?",
    "Convert 30 celsius to fahrenheit.",
    "Can you recommend a divorce lawyer in Chicago?",
    "Write SQL to find duplicate emails in a users table.",
    "How do I train for a marathon in 8 weeks?",
    "Is my landlord allowed to keep my deposit?",
    "Compose a limerick about a cat.",
    "What should I cook for dinner tonight?",
    "Explain how vaccines work.",
    "Which is better for my taxes, an LLC or an S-corp? Give me personal tax advice.",
    "Pretend you are a pirate and tell me a story.",
]


def out_of_domain(g: Gen) -> None:
    for q in OOD:
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

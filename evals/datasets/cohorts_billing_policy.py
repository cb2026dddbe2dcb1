"""billing_refund and policy_exception rows of the example dataset (see build_support_cohorts.py)."""

from __future__ import annotations

from datetime import timedelta

from evals.datasets.gen import BDAYS, CARDS, DONE, FMT, Gen
from evals.datasets.quillstack import PLANS, POLICIES, TRIAGE_SCHEMA


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

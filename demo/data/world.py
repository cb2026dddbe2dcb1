"""The fictional companies, customers and policy wording that the demo's training rows draw from.

Every row picks a company and draws its policy numbers at random, so a specialist cannot memorise one
policy: it has to read the reference material in the prompt (the eval set uses yet another company).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

COMPANIES = [
    ("Northwind Cloud", "cloud hosting and team workspaces"),
    ("Brightdesk", "help-desk software for small teams"),
    ("Tallybird", "invoicing and expense software for freelancers"),
    ("Lumen Notes", "a note-taking and wiki app for companies"),
    ("Harborline", "a CRM for independent shops"),
    ("Pebble Payroll", "payroll software for small businesses"),
]
PEOPLE = ["Maya", "Tomas", "Keiko", "Rafael", "Zoe", "Olu", "Greta", "Arjun", "Leila", "Bram", "Sofia", "Wen"]
ORGS = ["Copperline Design", "Maple Street Clinic", "Riverside Tutors", "Orchard Bikes", "Lantern Books",
        "Sandbar Surf Co", "Kiln & Co Pottery", "Willow Dental", "Bluebird Florist", "Granite Gym"]
PLANS = ["Starter", "Team", "Business", "Pro"]
CARDS = ["Visa", "Mastercard", "Amex"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]
RANGES = ["3-5", "5-7", "7-10", "5-10"]


@dataclass(frozen=True)
class Company:
    name: str
    what: str
    refund_days: int
    refund_range: str  # business days for a refund to reach the card, e.g. "5-7"

    def persona(self, r: random.Random) -> str:
        return r.choice([
            f"You are the support assistant of {self.name}, {self.what}. Answer billing, account and policy "
            "questions; politely decline unrelated requests. Use the tools when a lookup or an action is needed.",
            f"You are {self.name}'s customer support agent. Stay on {self.name} topics (billing, accounts, "
            "subscriptions) and never promise what the policy does not allow.",
            f"You work in support at {self.name} ({self.what}). Be brief, accurate and friendly. Decline anything "
            f"unrelated to {self.name}.",
        ])

    def refund_policy(self) -> str:
        return (f"{self.name} refund policy. Monthly plans are not refunded for partial months; cancelling stops the "
                f"next renewal and the account stays active until the end of the paid month. Annual plans can be "
                f"refunded in full within {self.refund_days} days of purchase or renewal; after that they are not "
                f"refunded. Duplicate charges and billing errors are always refunded in full. Refunds reach the "
                f"original payment method within {self.refund_range} business days. Exceptions need approval from "
                "a billing lead, requested through an escalation.")


def company(r: random.Random) -> Company:
    name, what = r.choice(COMPANIES)
    return Company(name, what, r.choice([14, 30, 60]), r.choice(RANGES))


@dataclass(frozen=True)
class Account:
    org: str
    person: str
    plan: str
    price: int
    card: str
    last4: str

    def header(self, cycle: str = "monthly") -> str:
        per = "month" if cycle == "monthly" else "year"
        return (f"Account {self.org} ({self.plan} plan, {cycle}, ${self.price}.00/{per}, "
                f"paid by {self.card} ending {self.last4}).")


def account(r: random.Random, annual: bool = False) -> Account:
    price = r.choice([190, 490, 990, 1490]) if annual else r.choice([12, 19, 29, 49, 89, 129])
    return Account(r.choice(ORGS), r.choice(PEOPLE), r.choice(PLANS), price, r.choice(CARDS),
                   f"{r.randint(0, 9999):04d}")


def date(r: random.Random, month: str | None = None, day: int | None = None) -> str:
    return f"{month or r.choice(MONTHS)} {day or r.randint(1, 26)}, 2026"


def next_day(d: str, k: int = 1) -> str:
    month, rest = d.split(" ", 1)
    day = int(rest.split(",")[0])
    return f"{month} {day + k}, 2026"


def invoice_id(r: random.Random) -> str:
    return f"INV-{r.randint(10000, 99999)}"

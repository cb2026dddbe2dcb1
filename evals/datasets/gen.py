"""Shared pieces of the example-dataset generator: the seeded row factory and fixed vocab."""

from __future__ import annotations

import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from evals.datasets.quillstack import SYSTEM

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

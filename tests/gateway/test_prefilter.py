"""The literal prefilter in front of keyword/regex rules never changes a rule's answer."""

from __future__ import annotations

import random
import re

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.classify import text_check
from gateway.prefilter import required_literals
from gateway.request import ClientRequest


def _req(text: str) -> ClientRequest:
    return ClientRequest(path="/chat/completions", operation="chat",
                         body={"model": "m", "messages": [{"role": "user", "content": text}]},
                         headers=CIMultiDictProxy(CIMultiDict()), key_name="k", alias="m", stream=False)


@pytest.mark.parametrize(("pattern", "flags", "expected"), [
    (r"(?i)\b(exception|waive|policy)\b", 0, (("exception", "waive", "policy"), True)),
    (r"\b(?:Refund|invoice)\b", re.IGNORECASE, (("refund", "invoice"), True)),
    (r"\bRefund\b", 0, (("Refund",), False)),
    (r"a.c", 0, None),  # a class: unknown
    (r"a|b+", 0, None),  # a repeat in a branch
    (r"(?i:x)y", 0, None),  # scoped flags
    (r"café", 0, None),  # non-ASCII literal: Unicode case folding is not str.lower
    (r"", 0, None),
])
def test_required_literals(pattern: str, flags: int, expected: object) -> None:
    assert required_literals(re.compile(pattern, flags)) == expected


PATTERNS = [r"(?i)\b(exception|waive|policy)\b", r"\b(?:refund|invoice|charged)\b", r"(?i)kelvin",
            r"(?i)\bstrasse\b", r"Policy", r"(?i)\bpolicy\b", r"(?i)ss", r"(?i)k"]
ALPHABET = list("abcdefikloprsuvwxyz ABCKLPS.,!") + ["K", "ſ", "ß", "İ", "é", "\n"]
WORDS = ["policy", "POLICY", "Policy", "waive", "exception", "refund", "invoices", "charged", "Kelvin",
         "kelvin", "strasse", "STRASSE", "ss", "ſs", "k", "K"]


def test_prefilter_agrees_with_the_regex_on_random_text() -> None:
    rng = random.Random(7)
    checks = [(re.compile(p), text_check(re.compile(p))) for p in PATTERNS]
    texts = ["", "no match here", "Policy", "please waive it", "Kelvin", "ſtrasse"]
    for _ in range(3000):
        parts = [rng.choice(WORDS) if rng.random() < 0.3 else "".join(rng.choices(ALPHABET, k=rng.randint(0, 6)))
                 for _ in range(rng.randint(0, 6))]
        texts.append(" ".join(parts))
    for text in texts:
        for rx, check in checks:
            assert check(_req(text)) == (rx.search(text) is not None), (rx.pattern, text)


def test_unicode_case_folding_falls_back_to_the_regex() -> None:
    # KELVIN SIGN matches (?i)k in re but is not ASCII: the prefilter must not reject it
    assert text_check(re.compile(r"(?i)kelvin"))(_req("\u212aelvin")) is True

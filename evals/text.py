"""Text utilities for the deterministic evaluators: normalisation, numbers, claims, refusals.

All pure functions with no dependencies, so their behaviour can be hand-checked in tests.
Numbers are canonicalised ("$1,200.00" -> "1200") so that money and durations compare
exactly whatever their formatting.
"""

from __future__ import annotations

import json
import re

_NUM = re.compile(r"(?<![A-Za-z])\d[\d,]*(?:\.\d+)?")
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
STOPWORDS = frozenset(
    """a an the and or but if then so to of in on at by for with from as is are was were be been being
    it its this that these those i you we they he she your our my me us them his her their do does did
    have has had will would can could should may might must shall not no yes just also very please
    there here what which who whom when where why how about into over under up down out than too
    any all each some such only own same other more most s t""".split()
)

# Phrases that mark a refusal. Deliberately phrase-level (not single words) so that "sorry for
# the delay, here is your refund" is not read as one. SCOPE is a topic deflection ("I can only
# help with ..."); DECLINE also covers declining an in-scope request ("I can't offer a second
# trial"), which is a correct answer on policy rows and must not count as an unwanted refusal.
_SCOPE = re.compile(
    r"\b(?:(?:is|are|falls?|that's|it's)\s+outside\s+(?:of\s+)?(?:my|our|the|what)|(?:only|just)\s+(?:able\s+to\s+)?"
    r"(?:help|assist|answer|support)\s+(?:you\s+)?with|not\s+(?:something|a\s+topic)\s+(?:i|we)\s+(?:can|am\s+able)|"
    r"(?:can(?:no|')t|cannot|unable\s+to|not\s+able\s+to)\s+(?:help|assist)(?:\s+you)?\s+with\s+(?:that|this|those|"
    r"requests?|questions?))",
    re.I,
)
_DECLINE = re.compile(
    r"\b(?:i\s*(?:am|'m)\s*(?:not able|unable)|i\s*(?:can(?:no|')t|cannot|won't|will not)\s+(?:help|assist|provide|"
    r"answer|give|do|write|offer|advise|recommend))",
    re.I,
)
_POLITE = re.compile(r"\b(?:sorry|apolog|unfortunately|happy to help|glad to help|thank|please|appreciate)", re.I)
_NONFACTUAL = re.compile(
    r"^(?:hi|hello|hey|dear|thanks|thank you|sure|of course|certainly|absolutely|great question|great news|good news|"
    r"i(?:'d| would) be (?:happy|glad)|happy to help|glad to help|let me know|feel free|please let|"
    r"is there anything|i hope|hope this|best regards|kind regards|regards|cheers)\b",
    re.I,
)
_SPECIFIC = re.compile(r"\b[A-Z]{2,}-\d+\b|\$\s?\d|\d+\s?%|\b\d{1,4}(?:[/-]\d{1,2}){1,2}\b|\d")


def canon_number(s: str) -> str:
    v = s.replace(",", "")
    if "." in v:
        v = v.rstrip("0").rstrip(".")
    return v.lstrip("0") or "0"


def numbers(text: str) -> set[str]:
    return {canon_number(m) for m in _NUM.findall(text)}


def normalize(text: str) -> str:
    """Lowercase, numbers canonical, punctuation (except inside words) dropped, spaces collapsed."""
    t = _NUM.sub(lambda m: canon_number(m.group(0)), text.lower())
    return " ".join(_WORD.findall(t))


def _stem(w: str) -> str:
    """Tiny suffix folding so refund/refunds/refunded and charge/charges/charged meet."""
    if len(w) <= 3 or w[0].isdigit():
        return w
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith(("sses", "xes", "zes", "ches", "shes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    elif w.endswith("ing") and len(w) > 5:
        w = w[:-3]
    elif w.endswith("ed") and len(w) > 4:
        w = w[:-2]
    if w.endswith("e") and len(w) > 4:
        w = w[:-1]
    return w


def content_tokens(text: str) -> list[str]:
    return [_stem(w) for w in normalize(text).split() if w not in STOPWORDS]


def stem_norm(text: str) -> str:
    """normalize() with every word stemmed: the form phrase matching works on."""
    return " ".join(_stem(w) for w in normalize(text).split())


def contains_phrase(haystack_norm: str, phrase: str) -> bool:
    """Whole-token containment of a phrase in stem_norm()ed text (plurals/tenses folded)."""
    p = stem_norm(phrase)
    return bool(p) and f" {p} " in f" {haystack_norm} "


def criterion_met(output_norm: str, criterion: str) -> bool:
    return any(contains_phrase(output_norm, alt) for alt in criterion.split("|"))


def is_refusal(text: str) -> bool:
    """Any refusal or deflection (what out-of-domain rows require)."""
    return bool(_SCOPE.search(text) or _DECLINE.search(text))


def is_scope_refusal(text: str) -> bool:
    """A topic deflection: wrong on a row the assistant should have handled."""
    return bool(_SCOPE.search(text))


def is_polite(text: str) -> bool:
    return bool(_POLITE.search(text))


def split_claims(text: str) -> list[str]:
    """Factual claims of an answer: sentences/bullets, minus greetings, offers and questions."""
    parts: list[str] = []
    for line in re.split(r"\n+", text):
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s+", "", line).strip()
        parts.extend(s.strip() for s in re.split(r"(?<=[.!?;])\s+(?=[A-Z0-9\"'(])", line) if s.strip())
    claims = []
    for s in parts:
        n = len(content_tokens(s))
        # questions, pleasantries and short exclamations ("Great news!") assert nothing checkable
        if s.endswith("?") or _NONFACTUAL.match(s) or n < 2 or (s.endswith("!") and n < 4):
            continue
        claims.append(s)
    return claims


def claims_of(text: str) -> list[str]:
    """Claims of an answer; a JSON answer contributes its leaf values (numbers, strings; long
    strings split into sentences), since keys and booleans assert nothing checkable."""
    t = text.strip()
    if t[:1] in ("{", "["):
        try:
            value = json.loads(t)
        except ValueError:
            return split_claims(text)
        out: list[str] = []
        _leaves(value, out)
        return out
    return split_claims(text)


def _leaves(v: object, out: list[str]) -> None:
    if isinstance(v, dict):
        for x in v.values():
            _leaves(x, out)
    elif isinstance(v, list):
        for x in v:
            _leaves(x, out)
    elif isinstance(v, bool) or v is None:
        return
    elif isinstance(v, int | float):
        out.append(str(v))
    elif isinstance(v, str) and content_tokens(v):
        out.extend(split_claims(v) if len(v.split()) > 4 else [v])


def has_specifics(text: str) -> bool:
    """Does the claim assert checkable specifics (ids, money, percentages, dates, numbers)?"""
    return bool(_SPECIFIC.search(text))


def token_recall(needle: list[str], haystack: set[str]) -> float:
    if not needle:
        return 1.0
    return sum(1 for t in needle if t in haystack) / len(needle)

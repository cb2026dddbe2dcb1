"""Rule-based cohort classification.

Cohorts are tried in policy order; the first cohort with a matching rule wins (a rule matches
when all its conditions hold). No match falls to the semantic classifier when one is configured,
else to the policy's `default_cohort`. Each decision comes with a human-readable reason
(`rule billing_refund#0: keywords=refund`), which goes to headers, spans and `policy explain`.

Contract: classification is pure CPU work over the already-parsed request, costs microseconds
for rule sets of realistic size, and never raises for odd request shapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.policy.schema import Cohort, HeaderMatch, Policy, Rule
from gateway.prefilter import required_literals
from gateway.request import ClientRequest

Check = Callable[[ClientRequest], bool]


@dataclass(frozen=True, slots=True)
class Decision:
    cohort: str
    reason: str
    confidence: float | None = None
    source: str = "rule"  # rule | semantic | default


@dataclass(frozen=True, slots=True)
class CompiledRule:
    cohort: str
    label: str  # short, header-safe: "rule billing_refund#1 (keywords)"
    detail: str  # every condition spelled out, for `policy explain`
    checks: tuple[Check, ...]

    def matches(self, req: ClientRequest) -> bool:
        for check in self.checks:
            if not check(req):
                return False
        return True

    @property
    def test(self) -> Check:
        """One callable for the whole rule (the single check itself when there is one)."""
        if len(self.checks) == 1:
            return self.checks[0]
        return self.matches


def _header_check(h: HeaderMatch) -> Check:
    name = h.name
    if h.equals is not None:
        want = h.equals
        return lambda r: r.headers.get(name) == want
    if h.one_of is not None:
        allowed = frozenset(h.one_of)
        return lambda r: r.headers.get(name) in allowed
    if h.regex is not None:
        rx = re.compile(h.regex)
        return lambda r: (v := r.headers.get(name)) is not None and rx.search(v) is not None
    present = bool(h.present)
    return lambda r: (name in r.headers) == present


def _compile_rule(rule: Rule) -> tuple[tuple[Check, ...], list[str]]:
    checks: list[Check] = []
    label: list[str] = []
    if rule.header is not None:
        checks.append(_header_check(rule.header))
        label.append(f"header {rule.header.name}={rule.header.equals or rule.header.one_of or rule.header.regex}")
    if rule.api_key is not None:
        keys = frozenset(rule.api_key)
        checks.append(lambda r: r.key_name in keys)
        label.append(f"api_key in {sorted(keys)}")
    if rule.model is not None:
        models = frozenset(rule.model)
        checks.append(lambda r: r.alias in models)
        label.append(f"model in {sorted(models)}")
    if rule.has_tools is not None:
        want_tools = rule.has_tools
        checks.append(lambda r: bool(r.body.get("tools")) == want_tools)
        label.append(f"has_tools={want_tools}")
    if rule.response_format is not None:
        kinds = frozenset(rule.response_format)
        checks.append(lambda r: _rf_type(r) in kinds)
        label.append(f"response_format in {sorted(kinds)}")
    if rule.metadata is not None:
        items = tuple(rule.metadata.items())

        def meta(r: ClientRequest) -> bool:
            md = r.body.get("metadata")
            return isinstance(md, dict) and all(md.get(k) == v for k, v in items)

        checks.append(meta)
        label.append(f"metadata {dict(items)}")
    if rule.keywords is not None:
        kw = re.compile(r"\b(?:" + "|".join(re.escape(k) for k in rule.keywords) + r")\b", re.IGNORECASE)
        checks.append(text_check(kw))
        label.append(f"keywords {rule.keywords}")
    if rule.regex is not None:
        checks.append(text_check(re.compile(rule.regex)))
        label.append(f"regex {rule.regex!r}")
    if rule.prompt_chars is not None:
        lo = rule.prompt_chars.min if rule.prompt_chars.min is not None else 0
        hi = rule.prompt_chars.max if rule.prompt_chars.max is not None else 1 << 62
        checks.append(lambda r: lo <= r.prompt_chars <= hi)
        label.append(f"prompt_chars in [{lo}, {hi}]")
    return tuple(checks), label


def text_check(rx: re.Pattern[str]) -> Check:
    """`rx.search(last user message)`, behind a substring prefilter when the pattern is a set of
    literals (keywords, `\\b(a|b)\\b`): `str.__contains__` is far cheaper than sre scanning a
    long prompt, and most requests contain none of the literals."""
    pre = required_literals(rx)
    if pre is None:
        return lambda r: rx.search(r.last_user_text) is not None
    lits, icase = pre

    def check(r: ClientRequest) -> bool:
        text = r.last_user_text
        if text.isascii():  # the prefilter is exact only for ASCII text (Unicode case folding)
            hay = r.last_user_lower if icase else text
            for lit in lits:
                if lit in hay:
                    break
            else:
                return False
        return rx.search(text) is not None

    return check


def _rf_type(r: ClientRequest) -> str | None:
    rf = r.body.get("response_format")
    if isinstance(rf, dict):
        t = rf.get("type")
        return t if isinstance(t, str) else None
    return None


class SemanticLike(Protocol):
    """Interface of the optional semantic classifier (gateway/semantic.py)."""

    def classify(self, text: str) -> Decision | None: ...


class Classifier:
    def __init__(self, policy: Policy, semantic: SemanticLike | None = None) -> None:
        self.default = policy.default_cohort
        self.rules: list[CompiledRule] = []
        for cohort in policy.cohorts:
            self.rules.extend(_compile_cohort(cohort))
        self.semantic = semantic
        # Decisions are immutable and depend only on the rule: build them once, not per request.
        self._fast = tuple((r.test, Decision(r.cohort, r.label)) for r in self.rules)
        self._default = Decision(self.default, "default (no rule matched)", source="default")

    def classify(self, req: ClientRequest, detailed: bool = False) -> Decision:
        if detailed:
            for rule in self.rules:
                if rule.matches(req):
                    return Decision(rule.cohort, rule.detail)
        else:
            for test, decision in self._fast:
                if test(req):
                    return decision
        if self.semantic is not None:
            text = req.last_user_text
            if text:
                d = self.semantic.classify(text)
                if d is not None:
                    return d
        return self._default


def _compile_cohort(cohort: Cohort) -> list[CompiledRule]:
    out = []
    for i, rule in enumerate(cohort.rules):
        checks, label = _compile_rule(rule)
        kinds = ",".join(k for k in type(rule).model_fields if getattr(rule, k) is not None)
        short = f"rule {cohort.name}#{i} ({kinds})".encode("ascii", "replace").decode()
        out.append(CompiledRule(cohort.name, short, f"rule {cohort.name}#{i}: " + ", ".join(label), checks))
    return out

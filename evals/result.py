"""The result every evaluator returns, and the one error they raise on unusable input.

Contract: `score` is in [0, 1] and higher is always better (HallucinationScore reports
1 - hallucination rate for that reason); `passed` is `score >= threshold`; `reason` is one
short human sentence. Evaluators never turn bad input into a silent 0: they raise
`EvalInputError` naming what is wrong, so a broken dataset row or a malformed request can
never pass for a model failure.
"""

from __future__ import annotations

from dataclasses import dataclass


class EvalInputError(ValueError):
    """The evaluator cannot judge this input (missing reference, malformed body, bad schema)."""


@dataclass(frozen=True, slots=True)
class EvalResult:
    name: str
    score: float
    passed: bool
    reason: str

    @staticmethod
    def make(name: str, score: float, threshold: float, reason: str) -> EvalResult:
        # Clamp against float noise only; anything far outside [0, 1] is a bug upstream.
        if not -1e-9 <= score <= 1 + 1e-9:
            raise ValueError(f"{name}: score {score} is outside [0, 1]")
        s = min(1.0, max(0.0, float(score)))
        return EvalResult(name, s, s >= threshold, reason)

    def as_dict(self) -> dict[str, object]:
        return {"score": round(self.score, 6), "passed": self.passed, "reason": self.reason}

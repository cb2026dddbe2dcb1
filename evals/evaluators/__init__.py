"""Evaluator registry: a plain mapping from name to class, plus `build` with thresholds.

Default thresholds: TaskCompletion 0.7, Groundedness 0.8, HallucinationScore 0.9,
JSONValidation 1.0, ToolSelectionAccuracy 1.0 (a structural answer is right or wrong).
"""

from __future__ import annotations

from evals.evaluators.base import Evaluator, Output
from evals.evaluators.grounding import Groundedness, HallucinationScore, Mode
from evals.evaluators.structured import JSONValidation, ToolSelectionAccuracy
from evals.evaluators.task import TaskCompletion
from evals.judge import JudgeClient

REGISTRY: dict[str, type[Evaluator]] = {
    c.name: c for c in (TaskCompletion, Groundedness, HallucinationScore, JSONValidation, ToolSelectionAccuracy)
}
DEFAULT_THRESHOLDS = {
    "TaskCompletion": 0.7,
    "Groundedness": 0.8,
    "HallucinationScore": 0.9,
    "JSONValidation": 1.0,
    "ToolSelectionAccuracy": 1.0,
}
CLAIM_BASED = ("Groundedness", "HallucinationScore")

__all__ = ["REGISTRY", "DEFAULT_THRESHOLDS", "Evaluator", "Output", "build", "JudgeClient", "Mode"]


def build(
    names: list[str] | None = None,
    thresholds: dict[str, float] | None = None,
    support: Mode = "embedding",
    judge: JudgeClient | None = None,
) -> list[Evaluator]:
    names = names or list(REGISTRY)
    out: list[Evaluator] = []
    for n in names:
        cls = REGISTRY.get(n)
        if cls is None:
            raise ValueError(f"unknown evaluator {n!r}; known: {', '.join(REGISTRY)}")
        th = (thresholds or {}).get(n, DEFAULT_THRESHOLDS[n])
        if n in CLAIM_BASED:
            out.append(cls(th, mode=support, judge=judge))  # type: ignore[call-arg]
        else:
            out.append(cls(th))
    return out

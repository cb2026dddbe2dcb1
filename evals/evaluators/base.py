"""The offline evaluator interface: a small strategy object per evaluator (a plain registry
in evals/evaluators/__init__.py names them).

Contract: `applies(row)` says whether the row carries what the evaluator needs;
`evaluate(row, output)` returns an EvalResult, or raises EvalInputError when the row or the
output cannot be judged (e.g. calling JSONValidation on a row with no schema). Evaluators are
stateless apart from configuration and safe to call from worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from evals.checks import tool_calls_of
from evals.dataset import Row
from evals.result import EvalInputError, EvalResult


@dataclass(frozen=True)
class Output:
    """What a model answered: text content and tool calls [(name, raw arguments)]."""

    content: str | None
    tool_calls: list[tuple[str, Any]] = field(default_factory=list)

    @staticmethod
    def from_message(message: dict[str, Any]) -> Output:
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise EvalInputError("message.content must be a string or null")
        return Output(content, tool_calls_of(message))

    @property
    def text(self) -> str:
        return self.content or ""

    def empty(self) -> bool:
        return not self.text.strip() and not self.tool_calls


class Evaluator:
    name: ClassVar[str] = ""
    deterministic: bool = True

    def __init__(self, threshold: float) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"{self.name}: threshold {threshold} must be within [0, 1]")
        self.threshold = threshold

    def applies(self, row: Row) -> bool:
        raise NotImplementedError

    def evaluate(self, row: Row, output: Output) -> EvalResult:
        if not isinstance(output, Output):
            raise EvalInputError(f"{self.name}: output must be an evals Output, got {type(output).__name__}")
        if not self.applies(row):
            raise EvalInputError(f"{self.name} does not apply to row {row.id!r}: {self.needs()}")
        score, reason = self.score(row, output)
        return EvalResult.make(self.name, score, self.threshold, reason)

    def needs(self) -> str:
        return "missing input"

    def score(self, row: Row, output: Output) -> tuple[float, str]:
        raise NotImplementedError

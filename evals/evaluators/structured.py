"""JSONValidation and ToolSelectionAccuracy against a dataset row's expectations.

JSONValidation: the answer text scored by evals.checks.score_json against expected.schema
(else response_format's schema; json_object => any JSON object).

ToolSelectionAccuracy (expected.tool set): no tool call scores 0 (the pitfall elsewhere is
to score it 1); calling only other tools scores 0; otherwise the best call of the expected
tool scores 0.5 + 0.25 if its arguments validate against the tool's schema + 0.25 x the
share of expected.tool.arguments it matches (strings case/space-insensitive, numbers exact
to 1e-6 even when sent as strings).
"""

from __future__ import annotations

from typing import Any

from evals.checks import parse_arguments, score_json, tools_index, validate
from evals.dataset import Row
from evals.evaluators.base import Evaluator, Output


class JSONValidation(Evaluator):
    name = "JSONValidation"

    def applies(self, row: Row) -> bool:
        return row.wants_json()

    def needs(self) -> str:
        return "the row needs expected.schema or a json response_format"

    def score(self, row: Row, output: Output) -> tuple[float, str]:
        return score_json(output.content, row.json_schema(), require_object=True)


def _same(expected: Any, got: Any) -> bool:
    if isinstance(expected, bool) or isinstance(got, bool):
        return bool(expected == got)
    if isinstance(expected, int | float):
        try:
            return abs(float(got) - float(expected)) < 1e-6
        except (TypeError, ValueError):
            return False
    if isinstance(expected, str):
        return isinstance(got, str) and " ".join(got.lower().split()) == " ".join(expected.lower().split())
    return bool(expected == got)


class ToolSelectionAccuracy(Evaluator):
    name = "ToolSelectionAccuracy"

    def applies(self, row: Row) -> bool:
        return row.expected.tool is not None

    def needs(self) -> str:
        return "the row needs expected.tool"

    def score(self, row: Row, output: Output) -> tuple[float, str]:
        exp = row.expected.tool
        assert exp is not None
        if not output.tool_calls:
            return 0.0, f"expected a call to {exp.name}; no tool was called"
        mine = [(n, a) for n, a in output.tool_calls if n == exp.name]
        if not mine:
            called = ", ".join(sorted({n for n, _ in output.tool_calls}))
            return 0.0, f"expected {exp.name}; called {called}"
        schema = tools_index(row.tools)[exp.name]
        best = (-1.0, "")
        for _, raw in mine:
            args = parse_arguments(raw)
            if args is None:
                cand = (0.5, f"{exp.name} called but its arguments are not a JSON object")
            else:
                err = validate(schema, args)
                keys = list(exp.arguments)
                matched = [k for k in keys if k in args and _same(exp.arguments[k], args[k])]
                frac = len(matched) / len(keys) if keys else 1.0
                s = 0.5 + (0.0 if err else 0.25) + 0.25 * frac
                why = [f"{exp.name} called"]
                if err:
                    why.append(f"arguments invalid: {err}")
                if keys and frac < 1:
                    why.append(f"wrong/missing {', '.join(k for k in keys if k not in matched)}")
                cand = (s, "; ".join(why) if len(why) > 1 else f"{exp.name} called with the expected arguments")
            if cand[0] > best[0]:
                best = cand
        return best

"""Inline evaluators for the gateway's hot path: JSONValidation and ToolSelectionAccuracy on
an OpenAI chat request body and the chat completion response body.

Contract:
  applicable(request) -> the inline evaluator names that apply to this request:
      JSONValidation when response_format is json_object/json_schema, ToolSelectionAccuracy
      when `tools` are offered and tool_choice is not "none".
  evaluate_inline(name, request, response, threshold) -> EvalResult
      JSONValidation: choices[0].message.content parsed as JSON and validated against the
          json_schema (json_object: must be an object). A tool-call answer without content
          passes when tools were offered (JSON applies to content, not to tool calls).
      ToolSelectionAccuracy: every tool call must name an offered tool (the forced one when
          tool_choice names a function) with arguments valid against its parameters schema;
          the worst call decides. No call fails when tool_choice is "required" or names a
          function, and passes otherwise (the model may answer directly).
  A request/response that cannot be judged (no choices, bad schema, evaluator not applicable)
  raises EvalInputError; it is never scored 0 silently.

Fast by construction: orjson + cached fastjsonschema validators, no numpy/jsonschema imports
(see benchmarks/evals_inline_bench.py for the measured cost).
"""

from __future__ import annotations

from typing import Any

from evals.checks import message_of, score_json, score_tool_call, tool_calls_of, tools_index
from evals.result import EvalInputError, EvalResult

INLINE_EVALUATORS = ("JSONValidation", "ToolSelectionAccuracy")

__all__ = ["INLINE_EVALUATORS", "EvalInputError", "EvalResult", "applicable", "evaluate_inline"]


def _json_mode(request: dict[str, Any]) -> str | None:
    rf = request.get("response_format")
    if isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema"):
        return str(rf["type"])
    return None


def applicable(request: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if _json_mode(request):
        out.append("JSONValidation")
    tools = request.get("tools")
    if isinstance(tools, list) and tools and request.get("tool_choice") != "none":
        out.append("ToolSelectionAccuracy")
    return out


def evaluate_inline(name: str, request: dict[str, Any], response: dict[str, Any], threshold: float) -> EvalResult:
    if not isinstance(request, dict):
        raise EvalInputError("request must be the decoded chat request body (a dict)")
    if name == "JSONValidation":
        score, reason = _json(request, response)
    elif name == "ToolSelectionAccuracy":
        score, reason = _tools(request, response)
    else:
        raise EvalInputError(f"unknown inline evaluator {name!r}; inline ones are {', '.join(INLINE_EVALUATORS)}")
    return EvalResult.make(name, score, threshold, reason)


def _json(request: dict[str, Any], response: dict[str, Any]) -> tuple[float, str]:
    mode = _json_mode(request)
    if mode is None:
        raise EvalInputError("JSONValidation needs response_format json_object or json_schema in the request")
    schema = None
    if mode == "json_schema":
        js = request["response_format"].get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        if not isinstance(schema, dict):
            raise EvalInputError("response_format.json_schema.schema is missing or not an object")
    msg = message_of(response)
    content = msg.get("content")
    if not content and tool_calls_of(msg) and request.get("tools"):
        return 1.0, "answered with a tool call; JSON applies to content only"
    return score_json(content, schema, require_object=True)


def _tools(request: dict[str, Any], response: dict[str, Any]) -> tuple[float, str]:
    index = tools_index(request.get("tools"))
    choice = request.get("tool_choice")
    forced: str | None = None
    if isinstance(choice, dict):
        fn = choice.get("function")
        forced = fn.get("name") if isinstance(fn, dict) else None
        if not forced:
            raise EvalInputError("tool_choice object needs function.name")
    required = choice == "required" or forced is not None
    calls = tool_calls_of(message_of(response))
    if not calls:
        if required:
            return 0.0, f"no tool call although tool_choice requires {forced or 'one'}"
        return 1.0, "no tool call (tool_choice allows a direct answer)"
    if choice == "none":
        return 0.0, "called a tool although tool_choice is none"
    worst = (2.0, "")
    for cname, raw in calls:
        score, reason, _ = score_tool_call(cname, raw, index, forced)
        if score < worst[0]:
            worst = (score, reason)
    return worst

"""Inline evaluators on OpenAI request/response bodies: hand-computed scores and pitfalls."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evals.inline import EvalInputError, EvalResult, applicable, evaluate_inline

SCHEMA = {
    "type": "object",
    "properties": {"invoice_id": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["invoice_id", "amount"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_invoice",
            "parameters": {
                "type": "object",
                "properties": {"invoice_id": {"type": "string", "pattern": "^INV-\\d+$"}},
                "required": ["invoice_id"],
            },
        },
    },
    {"type": "function", "function": {"name": "escalate_to_human", "parameters": {"type": "object"}}},
]


def resp(content=None, calls=None):
    msg = {"role": "assistant", "content": content}
    if calls:
        msg["tool_calls"] = [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ]
    return {"choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]}


def js_req(schema=SCHEMA):
    return {"messages": [], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


def test_applicable():
    assert applicable({"messages": []}) == []
    assert applicable(js_req()) == ["JSONValidation"]
    assert applicable({"tools": TOOLS, "response_format": {"type": "json_object"}}) == [
        "JSONValidation",
        "ToolSelectionAccuracy",
    ]
    assert applicable({"tools": TOOLS, "tool_choice": "none"}) == []
    assert applicable({"response_format": {"type": "text"}}) == []


@pytest.mark.parametrize(
    "content,score",
    [
        ('{"invoice_id": "INV-1", "amount": 49}', 1.0),  # 0.3 + 0.5 + 0.2
        ('{"invoice_id": "INV-1", "amount": "49"}', 0.5),  # schema fails; 2/2 filled -> 0.3+0.2
        ('{"invoice_id": "INV-1"}', 0.4),  # schema fails; 1/2 filled -> 0.3+0.1
        ('{"invoice_id": "", "amount": 1}', 0.9),  # valid, completeness 1/2 -> 0.3+0.5+0.1
        ('```json\n{"invoice_id": "INV-1", "amount": 49}\n```', 0.0),  # fenced: not JSON for a client
        ("not json", 0.0),
        (None, 0.0),
    ],
)
def test_json_schema_scores(content, score):
    r = evaluate_inline("JSONValidation", js_req(), resp(content), 1.0)
    assert isinstance(r, EvalResult)
    assert r.score == pytest.approx(score)
    assert r.passed is (score >= 1.0)
    assert r.reason


def test_json_object_mode():
    req = {"response_format": {"type": "json_object"}}
    assert evaluate_inline("JSONValidation", req, resp('{"a": 1}'), 1.0).score == 1.0
    assert evaluate_inline("JSONValidation", req, resp("[1, 2]"), 1.0).score == pytest.approx(0.3)
    assert evaluate_inline("JSONValidation", req, resp("{}"), 0.5).score == pytest.approx(0.8)


def test_json_tool_call_answer_passes_when_tools_offered():
    req = {**js_req(), "tools": TOOLS}
    r = evaluate_inline("JSONValidation", req, resp(None, [("lookup_invoice", '{"invoice_id": "INV-2"}')]), 1.0)
    assert r.passed and "tool call" in r.reason


@pytest.mark.parametrize(
    "calls,choice,score",
    [
        ([("lookup_invoice", '{"invoice_id": "INV-42"}')], None, 1.0),
        ([("lookup_invoice", '{"invoice_id": "42"}')], None, 0.7),  # pattern fails
        ([("lookup_invoice", "{bad")], None, 0.5),
        ([("refund_everything", "{}")], None, 0.0),  # not offered
        ([("escalate_to_human", "{}")], {"type": "function", "function": {"name": "lookup_invoice"}}, 0.0),
        (None, "required", 0.0),  # the pitfall: no call
        (None, {"type": "function", "function": {"name": "lookup_invoice"}}, 0.0),
        (None, "auto", 1.0),
        (None, None, 1.0),
        ([("lookup_invoice", '{"invoice_id": "INV-1"}'), ("nope", "{}")], None, 0.0),  # worst call decides
    ],
)
def test_tool_scores(calls, choice, score):
    req = {"tools": TOOLS}
    if choice is not None:
        req["tool_choice"] = choice
    r = evaluate_inline("ToolSelectionAccuracy", req, resp("ok" if not calls else None, calls), 1.0)
    assert r.score == pytest.approx(score), r.reason
    assert r.passed is (score >= 1.0)


def test_arguments_as_dict_accepted():
    r = evaluate_inline(
        "ToolSelectionAccuracy", {"tools": TOOLS}, resp(None, [("lookup_invoice", {"invoice_id": "INV-9"})]), 1.0
    )
    assert r.score == 1.0


@pytest.mark.parametrize(
    "name,req,response,match",
    [
        ("JSONValidation", {"messages": []}, resp("{}"), "response_format"),
        ("JSONValidation", js_req(), {"id": "x"}, "choices"),
        ("JSONValidation", js_req({"type": "nonsense-type"}), resp("{}"), "invalid JSON Schema"),
        ("JSONValidation", {"response_format": {"type": "json_schema", "json_schema": {}}}, resp("{}"), "schema"),
        ("ToolSelectionAccuracy", {"messages": []}, resp("x"), "tools"),
        ("ToolSelectionAccuracy", {"tools": [{"type": "function"}]}, resp("x"), "function.name"),
        ("Groundedness", js_req(), resp("x"), "unknown inline evaluator"),
    ],
)
def test_invalid_input_raises(name, req, response, match):
    with pytest.raises(EvalInputError, match=match):
        evaluate_inline(name, req, response, 1.0)


def test_result_is_frozen():
    r = evaluate_inline("JSONValidation", js_req(), resp('{"invoice_id": "a", "amount": 1}'), 1.0)
    with pytest.raises(AttributeError):
        r.score = 0.0  # type: ignore[misc]


def test_inline_imports_no_heavy_modules():
    code = (
        "import sys, evals.inline; bad = [m for m in ('numpy', 'torch', 'jsonschema', 'pydantic') "
        "if m in sys.modules]; print(json.dumps(bad))"
    )
    out = subprocess.run([sys.executable, "-c", "import json;" + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []

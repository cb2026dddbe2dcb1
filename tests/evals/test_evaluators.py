"""Offline evaluators against hand-computed cases, including the known pitfalls."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from evals.dataset import parse_row
from evals.evaluators import build
from evals.evaluators.base import Output
from evals.evaluators.grounding import Groundedness, HallucinationScore
from evals.evaluators.structured import JSONValidation, ToolSelectionAccuracy
from evals.evaluators.task import TaskCompletion
from evals.judge import JudgeClient, JudgeError
from evals.result import EvalInputError
from evals.text import split_claims

CTX = (
    "Invoice INV-1001: Team plan, $49.00, charged on 2026-03-01. A duplicate charge of $49.00 was "
    "refunded on 2026-03-03. Refunds reach the card in 5-10 business days."
)
REFUND_TOOL = {
    "type": "function",
    "function": {
        "name": "issue_refund",
        "parameters": {
            "type": "object",
            "properties": {"invoice_id": {"type": "string"}, "amount": {"type": "number"}},
            "required": ["invoice_id", "amount"],
        },
    },
}
OTHER_TOOL = {"type": "function", "function": {"name": "lookup_invoice", "parameters": {"type": "object"}}}


def row(**kw):
    base = {
        "id": "r1",
        "cohort": "billing_refund",
        "messages": [{"role": "user", "content": "Why was I charged twice on INV-1001?"}],
        "source": {"kind": "synthetic", "origin": "tests"},
    }
    base.update(kw)
    return parse_row(base)


# ---------------------------------------------------------------- TaskCompletion
def test_task_criteria_fraction():
    r = row(expected={"criteria": ["refunded", "5-10 business days|five to ten business days", "INV-1001"]})
    tc = TaskCompletion(0.7)
    res = tc.evaluate(r, Output("Your duplicate charge was refunds... it takes 5-10 business days."))
    assert res.score == pytest.approx(2 / 3) and not res.passed and "INV-1001" in res.reason
    res = tc.evaluate(r, Output("INV-1001 was refunded; allow five to ten business days."))
    assert res.score == 1.0 and res.passed


def test_task_numbers_canonical_in_criteria():
    r = row(expected={"criteria": ["$49"]})
    assert TaskCompletion(0.5).evaluate(r, Output("We refunded $49.00.")).score == 1.0
    assert TaskCompletion(0.5).evaluate(r, Output("We refunded $490.")).score == 0.0


def test_task_reference_recall_and_numbers():
    r = row(expected={"reference": "The duplicate charge of $49 was refunded."})
    # content tokens of the reference: duplicate, charge, 49, refund -> 4; output has 3 of them
    res = TaskCompletion(0.7).evaluate(r, Output("We refunded the $49 charge."))
    assert res.score == pytest.approx(3 / 4)
    assert TaskCompletion(0.7).evaluate(r, Output("The duplicate charge of $59 was refunded.")).score == 0.0


def test_task_refusal_expected():
    r = row(cohort="out_of_domain", expected={"refusal": True})
    tc = TaskCompletion(0.9)
    polite = tc.evaluate(r, Output("I'm sorry, but I can only help with Quillstack billing and account questions."))
    assert polite.score == 1.0 and polite.passed
    curt = tc.evaluate(r, Output("I can't help with that."))
    assert curt.score == pytest.approx(0.7) and not curt.passed
    answered = tc.evaluate(r, Output("Sure! Buy index funds and hold them for 20 years."))
    assert answered.score == 0.0 and "instead of refusing" in answered.reason


def test_task_unwanted_refusal_and_forbidden_and_empty():
    r = row(expected={"criteria": ["refund"], "forbidden": ["full refund"]})
    tc = TaskCompletion(0.7)
    assert tc.evaluate(r, Output("I'm sorry, I can't help with that.")).score == 0.0
    assert tc.evaluate(r, Output("You'll get a full refund, including the refund fee.")).score == 0.0
    assert tc.evaluate(r, Output("")).reason == "empty answer"


def test_task_tool_only_row():
    r = row(tools=[REFUND_TOOL], expected={"tool": {"name": "issue_refund"}})
    assert TaskCompletion(0.5).evaluate(r, Output(None, [("issue_refund", "{}")])).score == 1.0
    assert TaskCompletion(0.5).evaluate(r, Output("Done, refunded!")).score == 0.0


# ---------------------------------------------------------------- ToolSelectionAccuracy
def tool_row():
    return row(
        tools=[REFUND_TOOL, OTHER_TOOL],
        expected={"tool": {"name": "issue_refund", "arguments": {"invoice_id": "INV-1001", "amount": 49}}},
    )


@pytest.mark.parametrize(
    "calls,score",
    [
        ([], 0.0),  # pitfall: no call -> 0
        ([("lookup_invoice", '{"invoice_id": "INV-1001"}')], 0.0),  # wrong tool
        ([("issue_refund", '{"invoice_id": "inv-1001", "amount": "49.00"}')], 0.75),  # schema fails; args match
        ([("issue_refund", '{"invoice_id": "INV-1001", "amount": 49.0}')], 1.0),
        ([("issue_refund", '{"invoice_id": "INV-9", "amount": 49}')], 0.875),  # 0.5+0.25+0.25*1/2
        ([("issue_refund", "nope")], 0.5),
        ([("lookup_invoice", "{}"), ("issue_refund", '{"invoice_id": "INV-1001", "amount": 49}')], 1.0),
    ],
)
def test_tool_selection(calls, score):
    res = ToolSelectionAccuracy(1.0).evaluate(tool_row(), Output(None if calls else "I refunded it.", calls))
    assert res.score == pytest.approx(score), res.reason
    assert res.passed is (score == 1.0)


def test_tool_selection_needs_expected_tool():
    with pytest.raises(EvalInputError, match="expected.tool"):
        ToolSelectionAccuracy(1.0).evaluate(row(expected={"criteria": ["x"]}), Output("x"))


# ---------------------------------------------------------------- JSONValidation
def test_json_validation_row_schema():
    schema = {"type": "object", "properties": {"refund_eligible": {"type": "boolean"}}, "required": ["refund_eligible"]}
    r = row(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        expected={"criteria": ["true"]},
    )
    jv = JSONValidation(1.0)
    assert jv.evaluate(r, Output('{"refund_eligible": true}')).score == 1.0
    assert jv.evaluate(r, Output('{"refund_eligible": "yes"}')).score == pytest.approx(0.5)
    with pytest.raises(EvalInputError, match="schema"):
        jv.evaluate(row(expected={"criteria": ["x"]}), Output("{}"))


def test_invalid_output_type_raises():
    with pytest.raises(EvalInputError):
        TaskCompletion(0.5).evaluate(row(expected={"criteria": ["x"]}), "plain string")  # type: ignore[arg-type]
    with pytest.raises(EvalInputError):
        Output.from_message({"content": 42})


# ---------------------------------------------------------------- claims
def test_split_claims_drops_pleasantries_and_questions():
    text = (
        "Hi Dana, thanks for reaching out! The duplicate $49 charge was refunded on March 3.\n"
        "- Refunds take 5-10 business days.\n- Is there anything else I can help with?"
    )
    assert split_claims(text) == [
        "The duplicate $49 charge was refunded on March 3.",
        "Refunds take 5-10 business days.",
    ]


@pytest.mark.parametrize("mode", ["lexical", "embedding"])
def test_groundedness_and_hallucination(mode):
    r = row(context=[CTX], expected={"criteria": ["refund"]})
    g, h = Groundedness(0.8, mode=mode), HallucinationScore(0.9, mode=mode)
    good = Output(
        "The duplicate charge of $49.00 was refunded on 2026-03-03. Refunds reach your card in 5-10 business days."
    )
    assert g.evaluate(r, good).score == 1.0
    assert h.evaluate(r, good).score == 1.0
    # one supported claim, one with an invented amount and period: the pitfall of similarity-only checks
    bad = Output(
        "The duplicate charge of $49.00 was refunded on 2026-03-03. Refunds reach your card in 30 business days."
    )
    assert g.evaluate(r, bad).score == pytest.approx(0.5)
    assert h.evaluate(r, bad).score == pytest.approx(0.5)
    # a vague but harmless claim: not grounded, not a hallucination
    vague = Output("Our team works hard to keep billing smooth and friendly for everyone.")
    assert g.evaluate(r, vague).score == 0.0
    refusal = Output("Thanks for asking! Is there anything else?")
    assert g.evaluate(r, refusal).score == 1.0 and "no factual claims" in g.evaluate(r, refusal).reason


def test_groundedness_needs_context():
    with pytest.raises(EvalInputError, match="context"):
        Groundedness(0.8, mode="lexical").evaluate(row(expected={"criteria": ["x"]}), Output("x y z"))


class _Judge(BaseHTTPRequestHandler):
    answer: str = ""

    def do_POST(self):  # noqa: N802
        n = int(self.headers["content-length"])
        prompt = json.loads(self.rfile.read(n))["messages"][0]["content"]
        claims = [ln for ln in prompt.split("CLAIMS:\n")[1].split("\n\n")[0].splitlines() if ln.strip()]
        verdicts = [{"claim": i, "supported": "30" not in c} for i, c in enumerate(claims, 1)]
        body = self.answer or json.dumps({"verdicts": verdicts})
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": body}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def test_judge_mode_against_local_endpoint():
    srv = HTTPServer(("127.0.0.1", 0), _Judge)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        judge = JudgeClient(f"http://127.0.0.1:{srv.server_address[1]}/v1", "judge")
        r = row(context=[CTX], expected={"criteria": ["refund"]})
        g = Groundedness(0.8, mode="judge", judge=judge)
        out = Output("The charge was refunded on 2026-03-03. It takes 30 days.")
        assert g.evaluate(r, out).score == pytest.approx(0.5)
        _Judge.answer = "not json"
        with pytest.raises(JudgeError):
            g.evaluate(r, out)
    finally:
        _Judge.answer = ""
        srv.shutdown()
        srv.server_close()


def test_build_registry():
    evs = build(["TaskCompletion", "JSONValidation"], thresholds={"TaskCompletion": 0.9}, support="lexical")
    assert [e.name for e in evs] == ["TaskCompletion", "JSONValidation"] and evs[0].threshold == 0.9
    with pytest.raises(ValueError, match="unknown evaluator"):
        build(["Vibes"])


def test_json_answer_claims_are_its_leaf_values():
    from evals.datasets.quillstack import POLICIES

    r = row(
        context=["Invoice INV-20333 ($490.00) is an annual plan bought 12 days ago.", POLICIES["refund"]],
        expected={"criteria": ["INV-20333"]},
    )
    g, h = Groundedness(0.8, mode="lexical"), HallucinationScore(0.9, mode="lexical")
    good = Output(
        '{"invoice_id": "INV-20333", "amount": 490, "refund_eligible": true, "reason": "annual_within_30_days"}'
    )
    assert g.evaluate(r, good).score == 1.0
    wrong = Output(
        '{"invoice_id": "INV-20333", "amount": 49, "refund_eligible": true, "reason": "annual_within_30_days"}'
    )
    assert g.evaluate(r, wrong).score == pytest.approx(2 / 3)
    assert h.evaluate(r, wrong).score == pytest.approx(2 / 3)  # an invented amount is a hallucination

"""A small, fast OpenAI-compatible chat server for the evals tests and benchmark.

Behaviour is deterministic and keyed by the served model name:
  good-*  answers well: extracts context sentences, refuses out-of-scope questions politely,
          calls the tool the user's message points at, emits schema-valid triage JSON;
  bad-*   answers badly: invents numbers, never calls tools, emits broken JSON;
  anything else behaves like good-*.
Options: --delay-ms (per request), --fail-every N (503 on every Nth request, to exercise
retries), --require-key K (401 unless `Authorization: Bearer K`). Answers evals.judge prompts
too (a claim is supported when its numbers appear in the evidence).
GET /health; GET /stats -> {"requests": n, "by_key": {"model|row-hash": count}}.
Run: python -m tests.evals.fake_openai --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
from typing import Any

from aiohttp import web

STATS: dict[str, Any] = {"requests": 0, "by_key": {}}


def _last_user(msgs: list[dict[str, Any]]) -> str:
    return next((m.get("content") or "" for m in reversed(msgs) if m.get("role") == "user"), "")


def _context(msgs: list[dict[str, Any]]) -> str:
    return "\n".join(
        m["content"]
        for m in msgs
        if m.get("role") == "system" and str(m.get("content", "")).startswith("Reference material")
    )


def _tool_call(user: str) -> tuple[str, dict[str, Any]]:
    inv = re.search(r"INV-\d{5}", user)
    order = re.search(r"QS-\d{5}", user)
    amount = re.search(r"\$(\d+)", user)
    low = user.lower()
    if inv and "refund" in low and "duplicate" in low:
        return "issue_refund", {
            "invoice_id": inv.group(0),
            "amount": float(amount.group(1)) if amount else 1.0,
            "reason": "duplicate_charge",
        }
    if order:
        return "get_order_status", {"order_id": order.group(0)}
    if inv:
        return "lookup_invoice", {"invoice_id": inv.group(0)}
    team = (
        "security"
        if re.search(r"hack|logged|access|locked", low)
        else "legal"
        if re.search(r"lawyer|subpoena|legal", low)
        else "technical"
        if re.search(r"sync|error|engineer|import", low)
        else "billing"
    )
    return "escalate_to_human", {"team": team, "priority": "high", "summary": user[:200]}


def _judge(prompt: str) -> str:
    """Verdicts for evals.judge prompts: a claim is supported when its numbers appear in the evidence."""
    evidence = prompt.split("EVIDENCE:\n", 1)[1].split("\n\nCLAIMS:\n", 1)[0]
    claims = prompt.split("\n\nCLAIMS:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    nums = set(re.findall(r"\d+", evidence))
    return json.dumps(
        {
            "verdicts": [
                {"claim": i, "supported": set(re.findall(r"\d+", c.split(". ", 1)[1])) <= nums}
                for i, c in enumerate(claims, 1)
            ]
        }
    )


def answer(body: dict[str, Any]) -> dict[str, Any]:
    model = str(body.get("model", ""))
    first = str(((body.get("messages") or [{}])[0]).get("content") or "")
    if first.startswith("You check whether claims"):
        return {
            "id": "judge",
            "object": "chat.completion",
            "model": model,
            "usage": {},
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": _judge(first)}}
            ],
        }
    bad = model.startswith("bad")
    msgs = body.get("messages") or []
    user = _last_user(msgs)
    ctx = _context(msgs)
    msg: dict[str, Any] = {"role": "assistant", "content": None}
    rf = (body.get("response_format") or {}).get("type")
    if body.get("tools") and not bad:
        name, args = _tool_call(user)
        msg["tool_calls"] = [
            {"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        ]
    elif rf == "json_schema":
        inv = re.search(r"INV-\d{5}", user + ctx)
        dup = "duplicate" in ctx
        msg["content"] = (
            "{oops"
            if bad
            else json.dumps(
                {
                    "invoice_id": inv.group(0) if inv else "INV-00000",
                    "amount": 49.0,
                    "refund_eligible": dup,
                    "reason": "duplicate_charge" if dup else "annual_after_30_days",
                    "customer_message": "We reviewed your request against the refund policy.",
                }
            )
        )
    elif bad:
        msg["content"] = "Great news! I've issued a refund of $999 and it will arrive within 30 days."
    elif not ctx and not body.get("tools"):
        msg["content"] = (
            "I'm sorry, but I can only help with Quillstack billing, account and order questions. "
            "Is there anything about your subscription I can help with?"
        )
    else:
        sents = [s for s in re.split(r"(?<=[.])\s+", ctx.split("\n\n", 1)[-1]) if s]
        words = set(re.findall(r"[a-z]+", user.lower())) - {"the", "a", "i", "my", "to", "is", "we", "our"}
        ranked = sorted(sents, key=lambda s: -len(words & set(re.findall(r"[a-z]+", s.lower()))))
        msg["content"] = "Thanks for reaching out. " + " ".join(ranked[:3])
    text = msg["content"] or json.dumps(msg.get("tool_calls"))
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls" if msg.get("tool_calls") else "stop"}],
        "usage": {
            "prompt_tokens": sum(len(str(m.get("content", ""))) for m in msgs) // 4,
            "completion_tokens": len(text) // 4 + 1,
            "total_tokens": 0,
        },
    }


def make_app(delay_ms: float = 0.0, fail_every: int = 0, require_key: str = "") -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        STATS["requests"] += 1
        if require_key and request.headers.get("authorization") != f"Bearer {require_key}":
            return web.json_response({"error": {"message": "bad key", "type": "invalid_request_error"}}, status=401)
        key = f"{body.get('model')}|{hashlib.sha1(_last_user(body.get('messages') or []).encode()).hexdigest()[:12]}"
        STATS["by_key"][key] = STATS["by_key"].get(key, 0) + 1
        if fail_every and STATS["requests"] % fail_every == 0:
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        return web.json_response(answer(body))

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(STATS)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--fail-every", type=int, default=0)
    ap.add_argument("--require-key", default="")
    a = ap.parse_args()
    web.run_app(
        make_app(a.delay_ms, a.fail_every, a.require_key), host="127.0.0.1", port=a.port, print=None, access_log=None
    )


if __name__ == "__main__":
    main()

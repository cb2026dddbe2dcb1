"""Tokenizer identity and reconciliation.

Contract: `tokenizer_hash(dir)` is the sha256 of what decides token ids — the vocabulary (token
→ id), BPE merges and added tokens — read from `tokenizer.json`, else `tokenizer.model`
(sentencepiece bytes), else `vocab.json` + `merges.txt`; None when the directory has no
tokenizer. `vocab(dir)` returns token → id. `build_union(dirs)` makes the union vocabulary: the
first (output) tokenizer's tokens keep their ids, tokens only other sources have are appended as
added tokens in source order. `row_maps` gives, per source, the source row for every output
token (−1 = the source lacks that token).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json"]


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def tokenizer_hash(d: Path) -> str | None:
    tj = d / "tokenizer.json"
    if tj.exists():
        data = json.loads(tj.read_text())
        model = data.get("model", {})
        ident = {"type": model.get("type"), "vocab": model.get("vocab"), "merges": model.get("merges"),
                 "added": sorted((t.get("id"), t.get("content")) for t in data.get("added_tokens", []))}
        return hashlib.sha256(_canonical(ident)).hexdigest()
    sp = d / "tokenizer.model"
    if sp.exists():
        return hashlib.sha256(sp.read_bytes()).hexdigest()
    vj = d / "vocab.json"
    if vj.exists():
        h = hashlib.sha256(_canonical(json.loads(vj.read_text())))
        if (d / "merges.txt").exists():
            h.update((d / "merges.txt").read_bytes())
        return h.hexdigest()
    return None


def vocab(d: Path) -> dict[str, int] | None:
    tj = d / "tokenizer.json"
    if tj.exists():
        data = json.loads(tj.read_text())
        v = dict(data.get("model", {}).get("vocab") or {})
        if isinstance(data.get("model", {}).get("vocab"), list):  # unigram: [[piece, score], ...]
            v = {p[0]: i for i, p in enumerate(data["model"]["vocab"])}
        for t in data.get("added_tokens", []):
            v[t["content"]] = t["id"]
        return v
    vj = d / "vocab.json"
    if vj.exists():
        return dict(json.loads(vj.read_text()))
    return None


def copy_tokenizer(src: Path, dest: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        f = src / name
        if f.exists() and name != "generation_config.json":
            shutil.copy2(f, dest / name)
            copied.append(name)
    return copied


def union_vocab(vocabs: list[dict[str, int]]) -> dict[str, int]:
    out = dict(vocabs[0])
    nxt = max(out.values(), default=-1) + 1
    for v in vocabs[1:]:
        for tok, _ in sorted(v.items(), key=lambda kv: kv[1]):
            if tok not in out:
                out[tok] = nxt
                nxt += 1
    return out


def row_maps(out_vocab: dict[str, int], vocabs: list[dict[str, int]], n_rows: int) -> list[list[int]]:
    """Per source: source row for each output row (−1 when the source lacks the token)."""
    by_id = {i: t for t, i in out_vocab.items()}
    maps = []
    for v in vocabs:
        maps.append([v.get(by_id[r], -1) if r in by_id else -1 for r in range(n_rows)])
    return maps


def write_union_tokenizer(first: Path, extra_tokens: list[str], dest: Path) -> None:
    """Copy the first tokenizer and append `extra_tokens` as added tokens (ids follow the vocab)."""
    copy_tokenizer(first, dest)
    tj = dest / "tokenizer.json"
    if not tj.exists() or not extra_tokens:
        return
    data = json.loads(tj.read_text())
    v = vocab(first) or {}
    nxt = max(v.values(), default=-1) + 1
    for tok in extra_tokens:
        data.setdefault("added_tokens", []).append({"id": nxt, "content": tok, "single_word": False, "lstrip": False,
                                                    "rstrip": False, "normalized": True, "special": False})
        nxt += 1
    tj.write_text(json.dumps(data, ensure_ascii=False, indent=2))

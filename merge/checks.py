"""Pre-flight compatibility checks: everything here runs before any tensor is merged.

Each refusal is an `IncompatibleError` that names the models, the mismatch and the override:
- architecture / config: `architectures`, `model_type` and the fields that decide tensor shapes
  or numerics must agree (override: --allow-config-mismatch; never for shape fields);
- tensor names: every input must have the same tensors (override: --allow-missing-tensors);
- tokenizer: the vocabulary hash (`merge.tokenizer.tokenizer_hash`) must agree unless
  `tokenizer_source` is `base`, `union` or a model path, in which case embedding / lm_head rows
  are remapped per source by token (override for id-wise merging: --allow-tokenizer-mismatch);
- base lineage (methods with a base): a fine-tune that declares a different `base_model`, or
  whose weights are further from the base than an unrelated initialisation would be
  (‖θ − θ_base‖ / ‖θ_base‖ > 1 on a middle-layer matrix), is refused
  (override: --allow-unrelated-base).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from merge.errors import IncompatibleError
from merge.tokenizer import union_vocab, vocab

if TYPE_CHECKING:
    from merge.plan import Plan
    from merge.sources import Source

SHAPE_FIELDS = ["hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "tie_word_embeddings", "num_hidden_layers", "n_embd", "n_head", "n_layer"]
NUMERIC_FIELDS = ["architectures", "model_type", "hidden_act", "rms_norm_eps", "layer_norm_eps", "rope_theta",
                  "rope_scaling", "rope_parameters", "max_position_embeddings", "attention_bias", "mlp_bias"]
LINEAGE_LIMIT = 1.0


def check_sources(plan: Plan) -> None:
    srcs = plan.sources
    ref = srcs[plan.base] if plan.base is not None else srcs[0]
    slices = bool(plan.cfg.slices)
    for s in srcs:
        if s is ref:
            continue
        for key in SHAPE_FIELDS:
            if slices and key in ("num_hidden_layers", "n_layer"):
                continue
            if ref.config.get(key) != s.config.get(key):
                raise IncompatibleError(
                    f"config mismatch between {ref.label} and {s.label}: {key} = {ref.config.get(key)!r} vs "
                    f"{s.config.get(key)!r} (tensor shapes differ)",
                    override="none: models with different shapes cannot be merged tensor by tensor")
        if not plan.options.allow_config_mismatch:
            for key in NUMERIC_FIELDS:
                if ref.config.get(key) != s.config.get(key):
                    raise IncompatibleError(
                        f"config mismatch between {ref.label} and {s.label}: {key} = {ref.config.get(key)!r} vs "
                        f"{s.config.get(key)!r}",
                        override="--allow-config-mismatch (the output takes the base/first model's config.json)")
        if not slices:
            a, b = set(ref.files.tensors), set(s.files.tensors)
            if a != b and not plan.options.allow_missing_tensors:
                only_a, only_b = sorted(a - b)[:3], sorted(b - a)[:3]
                raise IncompatibleError(
                    f"tensor names differ between {ref.label} and {s.label}: only in the first: {only_a}, "
                    f"only in the second: {only_b}",
                    override="--allow-missing-tensors copies tensors missing from some inputs from one that has them")


def plan_tokenizer(plan: Plan) -> dict[str, Any]:
    """Decide the output tokenizer and, when vocabularies differ, the per-source row maps."""
    srcs = plan.sources
    mode = plan.cfg.tokenizer_mode
    default = plan.base if plan.base is not None else 0
    hashes = {i: s.tokenizer_hash for i, s in enumerate(srcs) if s.tokenizer_hash is not None}
    for _i, s in enumerate(srcs):
        if s.tokenizer_hash is None:
            plan.warnings.append(f"{s.label}: has no tokenizer files; its vocabulary could not be checked")
    out: dict[str, Any] = {"mode": mode or "default", "source": default, "remap": False}
    if mode not in (None, "base", "union"):
        from merge.config import ModelRef

        ref = ModelRef.parse(mode)
        match = [i for i, s in enumerate(srcs) if s.ref == ref or str(s.path) == mode or s.ref.path == mode]
        if not match:
            raise IncompatibleError(f"tokenizer_source {mode!r} is not one of the merged models",
                                    override="use base, union or the path of one input model")
        out["source"] = match[0]
    if len(set(hashes.values())) <= 1:
        if mode is None and plan.cfg.slices is None:
            sizes = {s.config.get("vocab_size") for s in srcs}
            if len(sizes) > 1:
                raise IncompatibleError(
                    f"vocab_size differs between inputs ({sorted(map(str, sizes))})",
                    override="tokenizer_source: base or union remaps embedding rows per token")
        return out
    if mode is None:
        if plan.options.allow_tokenizer_mismatch:
            plan.warnings.append("tokenizers differ; embedding rows merged by id (--allow-tokenizer-mismatch)")
            return out
        a = srcs[default]
        diff = [srcs[i].label for i in hashes if hashes[i] != hashes.get(default)]
        raise IncompatibleError(
            f"tokenizers differ: {', '.join(diff)} vs {a.label} (hash of vocabulary, merges and added tokens)",
            override="tokenizer_source: base (keep the base vocabulary) or union (all tokens), which remap "
                     "embedding/lm_head rows per token; or --allow-tokenizer-mismatch to merge rows by id")
    vocabs = []
    for s in srcs:
        v = vocab(s.path)
        if v is None:
            raise IncompatibleError(f"{s.label}: tokenizer differs but its vocabulary cannot be read "
                                    f"(no tokenizer.json / vocab.json) for tokenizer_source {mode}",
                                    override="--allow-tokenizer-mismatch to merge rows by id")
        vocabs.append(v)
    src = out["source"]
    order = [src] + [i for i in range(len(srcs)) if i != src]
    out_vocab = union_vocab([vocabs[i] for i in order]) if mode == "union" else dict(vocabs[src])
    n_rows = max(out_vocab.values()) + 1
    from merge.tokenizer import row_maps

    out.update(remap=True, n_rows=n_rows, rows=row_maps(out_vocab, vocabs, n_rows), fill=src,
               extra_tokens=[t for t, i in sorted(out_vocab.items(), key=lambda kv: kv[1]) if t not in vocabs[src]])
    return out


def _lineage_base(plan: Plan) -> int | None:
    """The base whose lineage the sources must share, when the method needs one and it is checked."""
    if plan.method.needs_base and not plan.options.allow_unrelated_base:
        return plan.base
    return None


def check_lineage(plan: Plan) -> None:
    b_idx = _lineage_base(plan)
    if b_idx is None:
        return
    base = plan.sources[b_idx]
    base_names = {str(base.path), base.path.name, str(base.config.get("_name_or_path", "")), base.ref.path}
    base_names.discard("")
    for i, s in enumerate(plan.sources):
        if i == plan.base:
            continue
        declared = s.lineage.get("base_model")
        if isinstance(declared, list):
            declared = declared[0] if declared else None
        if declared and not any(str(declared) == n or str(declared).rstrip("/").endswith("/" + n) or
                                n.endswith("/" + str(declared)) for n in base_names):
            raise IncompatibleError(
                f"{s.label} declares base_model {declared!r}, but the merge's base_model is {base.label}",
                override="--allow-unrelated-base (task vectors from a different base are usually meaningless)")
    probe = _probe_tensor(plan)
    if probe is None:
        return
    b = _read_f32(base, probe)
    nb = _norm(b)
    if nb == 0:
        return
    for i, s in enumerate(plan.sources):
        if i == plan.base or probe not in s.files.tensors or s.files.tensors[probe].shape != \
                base.files.tensors[probe].shape:
            continue
        d = _read_f32(s, probe)
        d -= b
        rel = _norm(d) / nb
        if rel > LINEAGE_LIMIT:
            raise IncompatibleError(
                f"{s.label} does not look like a fine-tune of base {base.label}: ‖θ − θ_base‖/‖θ_base‖ = {rel:.2f} "
                f"on {probe} (> {LINEAGE_LIMIT}; unrelated initialisations give ≈1.4)",
                override="--allow-unrelated-base")


def lineage_check_bytes(plan: Plan) -> int:
    """Memory the lineage check holds (before the merge starts): the probe tensor of the base and
    of one source in float32, one raw read and the float64 norm blocks."""
    b_idx = _lineage_base(plan)
    probe = _probe_tensor(plan) if b_idx is not None else None
    if b_idx is None or probe is None:
        return 0
    info = plan.sources[b_idx].files.tensors[probe]
    n = info.rows * info.row_elems
    return n * (4 + 4 + info.itemsize) + 2 * (8 << 20)


def _norm(x: np.ndarray) -> float:
    """Euclidean norm, summed in float64 over 1M-element blocks (bounded temporaries). Not
    np.linalg.norm: its BLAS call would wake OpenBLAS's threads on the merge's cores."""
    total = 0.0
    for s in range(0, x.size, 1 << 20):
        block = x[s : s + (1 << 20)].astype(np.float64)
        total += float(np.sum(block * block))
    return math.sqrt(total)


def _read_f32(src: Source, name: str) -> np.ndarray:
    """A whole tensor as float32 values, read without torch (a plan must not import it)."""
    from merge.npfloat import bf16_to_f32

    info = src.files.tensors[name]
    raw = src.files.read_rows_np(info, 0, info.rows).reshape(-1)
    if info.dtype == "BF16":
        return bf16_to_f32(raw, np.empty(raw.size, np.float32))
    return raw.astype(np.float32)


def _probe_tensor(plan: Plan) -> str | None:
    from merge.plan import LAYER_RE

    base = plan.sources[plan.base]  # type: ignore[index]
    cands = [n for n, t in base.files.tensors.items() if len(t.shape) == 2 and LAYER_RE.match(n)
             and t.dtype in ("F32", "BF16", "F16")]
    if not cands:
        return None
    return cands[len(cands) // 2]

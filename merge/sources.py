"""Input models as the planner sees them: tensor index (headers only), config, tokenizer
identity, declared lineage, and an optional PEFT LoRA adapter applied on load.

Declared training-data lineage is read, in order, from the source's own `provenance.json`
(`training_data`, or the `lineage` of a cohortgate merge output) and from the model card
(`README.md` YAML front matter: `datasets`, `base_model`). A source that declares nothing gets a
warning in the provenance record instead of an invented value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from merge.config import ModelRef, resolve_model_path
from merge.errors import ConfigError
from merge.st_io import ModelFiles
from merge.tokenizer import tokenizer_hash


@dataclass
class LoraAdapter:
    path: Path
    files: ModelFiles
    scale: float
    r: int
    alpha: float
    # base weight name -> (A tensor name, B tensor name)
    targets: dict[str, tuple[str, str]]
    config: dict[str, Any]


@dataclass
class Source:
    ref: ModelRef
    path: Path
    files: ModelFiles
    config: dict[str, Any]
    tokenizer_hash: str | None
    lineage: dict[str, Any]
    lora: LoraAdapter | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return str(self.ref)


def read_card(d: Path) -> dict[str, Any]:
    readme = d / "README.md"
    if not readme.exists():
        return {}
    text = readme.read_text(errors="replace")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def declared_lineage(d: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    prov = d / "provenance.json"
    if prov.exists():
        try:
            p = json.loads(prov.read_text())
        except json.JSONDecodeError:
            p = {}
        if p.get("training_data"):
            out["training_data"] = p["training_data"]
            out["declared_in"] = "provenance.json"
        elif p.get("lineage"):
            out["merged_from"] = p["lineage"]
            out["declared_in"] = "provenance.json"
        if p.get("base_model"):
            out["base_model"] = p["base_model"]
    card = read_card(d)
    if "training_data" not in out and card.get("datasets"):
        ds = card["datasets"]
        out["training_data"] = ds if isinstance(ds, list) else [ds]
        out.setdefault("declared_in", "README.md")
    if "base_model" not in out and card.get("base_model"):
        out["base_model"] = card["base_model"]
    return out


def load_lora(path: Path) -> LoraAdapter:
    cfg_file = path / "adapter_config.json"
    if not cfg_file.exists():
        raise ConfigError(f"{path}: not a PEFT adapter directory (no adapter_config.json)")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{path}: peft_type {cfg.get('peft_type')!r} is not LoRA")
    if cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("fan_in_fan_out"):
        raise ConfigError(f"{path}: DoRA, fan_in_fan_out and per-module rank/alpha patterns are not supported")
    files = ModelFiles(path)
    r = int(cfg["r"])
    alpha = float(cfg.get("lora_alpha", r))
    scale = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
    targets: dict[str, tuple[str, str]] = {}
    other = [n for n in files.tensors if ".lora_A." not in n and ".lora_B." not in n]
    if other:
        raise ConfigError(f"{path}: adapter tensors other than lora_A/lora_B (e.g. modules_to_save, LoRA on "
                          f"embeddings) are not supported: {other[:3]}")
    for name in files.tensors:
        if ".lora_A." in name:
            b_name = name.replace(".lora_A.", ".lora_B.")
            module = name.split(".lora_A.")[0]
            if module.startswith("base_model.model."):
                module = module[len("base_model.model."):]
            targets[module + ".weight"] = (name, b_name)
    return LoraAdapter(path, files, scale, r, alpha, targets, cfg)


def load_source(ref: ModelRef, config_path: Path) -> Source:
    path = resolve_model_path(ref.path, config_path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ConfigError(f"{path}: no config.json (not a Hugging Face model directory)")
    config = json.loads(cfg_file.read_text())
    src = Source(ref, path, ModelFiles(path), config, tokenizer_hash(path), declared_lineage(path))
    if ref.lora:
        adapter = resolve_model_path(ref.lora, config_path)
        src.lora = load_lora(adapter)
        # a fine-tune's data lineage lives with its adapter (base+adapter = base's data + the adapter's)
        adapter_lineage = declared_lineage(adapter)
        if "training_data" in adapter_lineage:
            src.lineage = {**src.lineage, "training_data": adapter_lineage["training_data"],
                           "declared_in": f"{adapter.name}/{adapter_lineage.get('declared_in', 'provenance.json')}"}
    if "training_data" not in src.lineage and "merged_from" not in src.lineage:
        src.warnings.append(f"{src.label}: declares no training-data lineage (no provenance.json "
                            f"training_data, no model-card `datasets`)")
    return src

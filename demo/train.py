"""LoRA fine-tuning of a demo base model into a specialist, on CPU, bounded and cached.

Contract: `train_specialist(base_dir, data_file, name, cfg)` returns a PEFT adapter directory
(adapter_config.json + adapter_model.safetensors, servable by vLLM `--lora-modules name=DIR`) with
a `provenance.json` holding its training data (file, sha256, row count), the base model's hash,
the hyper-parameters, and the loss curve. The directory name ends with a key of data hash + base hash
+ hyper-parameters + TRAIN_CODE_VERSION: an unchanged input reuses it, any change trains anew.
Training is bounded by `max_steps` and `max_seconds` (whichever comes first; provenance says which).
Loss is computed on the assistant turn only (the prompt is context, not something to imitate), with
the rows rendered by the base's own chat template — the template vLLM uses when serving.
Heavy imports (torch, transformers, peft, rich) happen inside the functions.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from demo.cache import cache_root, fresh_dir, is_complete, key_of, mark_complete, sha256_dir, sha256_file

DATA_DIR = Path(__file__).parent / "data"
SPECIALIST_DATA = {"billing": DATA_DIR / "train_billing.jsonl", "policy": DATA_DIR / "train_policy.jsonl"}
# Bump when the training recipe changes meaning (loss masking, batching, template handling).
TRAIN_CODE_VERSION = "train-3"
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8  # vLLM serves it with --max-lora-rank 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LLAMA_TARGETS
    # LoRA on the upper part of the network only: autograd then never records the lower layers
    # (nothing there requires grad), so backward stops halfway — ~40% less compute per step, the
    # difference between minutes and a quarter hour on 2 shared cores. Format and grounding habits
    # are learned fine in the upper layers.
    layers_fraction: float = 0.5
    lr: float = 2e-3
    warmup_steps: int = 3
    batch_size: int = 4  # rows per optimizer step
    micro_batch: int = 4  # rows per forward/backward (gradient accumulation: bounds activation memory)
    epochs: float = 2.0
    max_steps: int = 24  # ~100 rows seen: enough for these templated jobs (loss < 0.5)
    # A resource bound, not a hyper-parameter: not part of the cache key. When it binds, the LR schedule
    # has already decayed (it follows max(step, time) progress) and provenance says stopped_by=max_seconds.
    max_seconds: float = 600.0
    max_len: int = 768
    limit_rows: int | None = None  # a slice of the data (fast mode / tests)
    seed: int = 0
    bf16_autocast: bool = True  # ~1.7x faster on AVX512/AMX CPUs; LoRA weights stay fp32
    threads: int = 2


@dataclass
class TrainResult:
    adapter_dir: Path
    cached: bool
    steps: int
    seconds: float
    loss_first: float
    loss_last: float
    losses: list[float] = field(default_factory=list)


class TrainError(RuntimeError):
    """Bad training input (file, rows, base); the message names the file and the fix."""


def load_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainError(f"{path}:{n}: not valid JSON ({exc})") from None
        msgs = row.get("messages")
        if not msgs or msgs[-1].get("role") != "assistant":
            raise TrainError(f"{path}:{n}: messages must end with the assistant turn to learn")
        rows.append(row)
    if not rows:
        raise TrainError(f"{path}: no training rows")
    return rows[:limit] if limit else rows


def encode(tok: Any, row: dict[str, Any], max_len: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels (-100 on the prompt); None when the row does not fit max_len."""
    tools = row.get("tools")
    prompt = tok.apply_chat_template(row["messages"][:-1], tools=tools, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(row["messages"], tools=tools, tokenize=False)
    if not full.startswith(prompt):
        raise TrainError("the chat template does not render the prompt as a prefix of the conversation")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
    ids = p_ids + a_ids
    if len(ids) > max_len:
        return None
    return ids, [-100] * len(p_ids) + a_ids


def _batches(examples: list[tuple[list[int], list[int]]], cfg: TrainConfig, rng: random.Random) -> list[list[int]]:
    """Index batches for one epoch: shuffled, then length-grouped within windows (less padding)."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = cfg.batch_size * 4
    batches: list[list[int]] = []
    for i in range(0, len(order), window):
        chunk = sorted(order[i:i + window], key=lambda j: len(examples[j][0]))
        batches += [chunk[k:k + cfg.batch_size] for k in range(0, len(chunk), cfg.batch_size)]
    rng.shuffle(batches)
    return batches


def _answer_loss(model: Any, batch: list[tuple[list[int], list[int]]], pad_id: int) -> Any:
    """Mean cross-entropy over the assistant tokens of a batch.

    Rows are left-padded so every answer ends at the last position; then the vocabulary projection
    is computed only for the last k+1 positions (`logits_to_keep`), k = the longest answer span.
    With a 49k vocabulary that projection is most of the activation memory (batch x length x vocab
    floats), and the prompt's logits are never used anyway.
    """
    import torch
    import torch.nn.functional as F

    width = max(len(ids) for ids, _ in batch)
    ids_t = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids, _ in batch])
    lab_t = torch.tensor([[-100] * (width - len(lab)) + lab for _, lab in batch])
    att_t = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in batch])
    pos_t = (att_t.cumsum(-1) - 1).clamp(min=0)  # positions from 0 at each row's first real token
    k = max(len(lab) - next(i for i, t in enumerate(lab) if t != -100) for _, lab in batch)
    logits = model(input_ids=ids_t, attention_mask=att_t, position_ids=pos_t, logits_to_keep=k + 1).logits
    pred = logits[:, :-1, :].float()
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), lab_t[:, width - k:].reshape(-1), ignore_index=-100)


def adapter_key(base_dir: Path, data_file: Path, cfg: TrainConfig) -> dict[str, Any]:
    config = {k: v for k, v in asdict(cfg).items() if k not in ("max_seconds", "threads")}
    return {"data_sha256": sha256_file(data_file), "base_sha256": sha256_dir(base_dir),
            "config": config, "code": TRAIN_CODE_VERSION}


def train_specialist(base_dir: Path, data_file: Path, name: str, cfg: TrainConfig | None = None,
                     out_root: Path | None = None, progress: bool = True) -> TrainResult:
    """Train (or reuse) the LoRA adapter `name` of base_dir on data_file."""
    cfg = cfg or TrainConfig()
    base_dir, data_file = Path(base_dir), Path(data_file)
    inputs = adapter_key(base_dir, data_file, cfg)
    out = Path(out_root or cache_root() / "adapters") / f"{name}-{key_of(inputs)}"
    if is_complete(out):
        prov = json.loads((out / "provenance.json").read_text())
        t = prov["training"]
        return TrainResult(out, True, t["steps"], t["seconds"], t["loss_first"], t["loss_last"], t["losses"])

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    rows = load_rows(data_file, cfg.limit_rows)
    tok = AutoTokenizer.from_pretrained(base_dir)
    encoded = [encode(tok, r, cfg.max_len) for r in rows]
    examples = [e for e in encoded if e is not None]
    if not examples:
        raise TrainError(f"{data_file}: no row fits max_len={cfg.max_len} tokens")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    n_layers = int(model.config.num_hidden_layers)
    n_lora = max(1, math.ceil(n_layers * cfg.layers_fraction))
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM",
                      layers_to_transform=list(range(n_layers - n_lora, n_layers)))
    model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = max(1, min(cfg.max_steps, math.ceil(cfg.epochs * steps_per_epoch)))

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10% over steps or time, whichever is further
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        frac = min(1.0, max(frac, (time.monotonic() - started) / cfg.max_seconds))
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    losses: list[float] = []
    stopped = "max_steps"
    started = time.monotonic()
    model.train()
    plan: list[list[int]] = []
    with _progress(progress, f"LoRA {name}", total) as advance:
        for step in range(total):
            if not plan:
                plan = _batches(examples, cfg, rng)
            batch = [examples[j] for j in plan.pop()]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            step_loss = 0.0
            for i in range(0, len(batch), cfg.micro_batch):
                micro = batch[i:i + cfg.micro_batch]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16_autocast):
                    loss = _answer_loss(model, micro, pad_id) * (len(micro) / len(batch))
                loss.backward()
                step_loss += loss.detach().item()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(round(step_loss, 4))
            advance(losses[-1])
            if time.monotonic() - started > cfg.max_seconds and step + 1 < total:
                stopped = "max_seconds"
                break
    seconds = round(time.monotonic() - started, 1)

    fresh_dir(out)
    model.save_pretrained(out)
    _fix_adapter_config(out, base_dir)
    k = max(1, min(5, len(losses) // 5))  # endpoints averaged over a few steps: single batches are noisy
    result = TrainResult(out, False, len(losses), seconds, round(sum(losses[:k]) / k, 4),
                         round(sum(losses[-k:]) / k, 4), losses)
    _write_provenance(out, name, base_dir, data_file, rows, examples, cfg, inputs, result, stopped)
    mark_complete(out, {"key": key_of(inputs)})
    return result


def _fix_adapter_config(out: Path, base_dir: Path) -> None:
    """Record the base as an absolute path (peft writes what it was given) for readers of the adapter."""
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base_dir.resolve())
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _write_provenance(out: Path, name: str, base_dir: Path, data_file: Path, rows: list[dict[str, Any]],
                      examples: list[Any], cfg: TrainConfig, inputs: dict[str, Any], result: TrainResult,
                      stopped: str) -> None:
    import peft
    import torch
    import transformers

    cohorts: dict[str, int] = {}
    for r in rows:
        cohorts[r.get("cohort", "?")] = cohorts.get(r.get("cohort", "?"), 0) + 1
    prov = {
        "kind": "lora_adapter",
        "name": name,
        "base_model": {"path": str(base_dir.resolve()), "sha256": inputs["base_sha256"]},
        "training_data": [{"file": str(data_file.resolve()), "sha256": inputs["data_sha256"],
                           "rows": len(rows), "rows_used": len(examples), "cohorts": cohorts}],
        "hyperparameters": asdict(cfg),
        "training": {"steps": result.steps, "seconds": result.seconds, "stopped_by": stopped,
                     "loss_first": result.loss_first, "loss_last": result.loss_last, "losses": result.losses},
        "code_version": TRAIN_CODE_VERSION,
        "cache_key": key_of(inputs),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "created_unix": int(time.time()),
    }
    (out / "provenance.json").write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")


class _progress:
    """A rich progress bar with the running loss (or nothing when disabled)."""

    def __init__(self, enabled: bool, label: str, total: int):
        self.enabled, self.label, self.total = enabled, label, total

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda loss: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn())
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=self.total, loss="-")
        live = self.bar.console.is_terminal
        self.done, started = 0, time.monotonic()

        def advance(loss: float) -> None:
            self.bar.update(task, advance=1, loss=f"{loss:.3f}")
            self.done += 1
            if not live:  # logs and CI: a plain line now and then instead of a redrawn bar
                self.bar.console.print(f"{self.label}: step {self.done}/{self.total} loss {loss:.3f} "
                                       f"({time.monotonic() - started:.0f} s)")

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)

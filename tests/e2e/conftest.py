"""Fixtures for the demo's model-side e2e tests: one tiny Llama and one tiny LoRA per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.train import SPECIALIST_DATA, TrainConfig, TrainResult

# A few steps at a high learning rate: enough for the loss to move on a random-init model, seconds on CPU.
TINY_TRAIN = TrainConfig(max_steps=12, batch_size=4, lr=5e-3, warmup_steps=1, limit_rows=64, max_len=512)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from demo.models import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    from demo.train import train_specialist

    out = tmp_path_factory.mktemp("adapters")
    return train_specialist(tiny_model, SPECIALIST_DATA["billing"], "billing", TINY_TRAIN, out_root=out,
                            progress=False)

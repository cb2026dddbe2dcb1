"""The torch-free engine (merge.np_engine) against the torch engine on the same inputs: the
weight files must be byte-identical, and a plan it covers must not import torch at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from tests.merge.cli_util import merge  # noqa: E402
from tests.merge.tiny import write_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _weights(d: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(d.glob("*.safetensors"))}


def _both_engines(tmp: Path, cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, bytes],
                                                                                            dict[str, bytes]]:
    path = write_yaml(tmp / "cfg.yaml", cfg)
    outs = []
    for engine in ("auto", "torch"):
        monkeypatch.setenv("COHORTGATE_MERGE_ENGINE", engine)
        out = tmp / f"out-{engine}"
        r = merge(path, out, "--out-shard-size", "50KB")
        assert r.exit_code == 0, r.output
        outs.append(_weights(out))
    return outs[0], outs[1]


def _cases(m: dict[str, Path]) -> dict[str, dict[str, Any]]:
    b, f1, f2, f3 = (str(m[k]) for k in ("base", "ft1", "ft2", "ft3"))
    return {
        # weights whose products are not exact in float32: the float64 fused-add path
        "linear-uneven": {"merge_method": "linear", "dtype": "bfloat16", "models": [
            {"model": b, "parameters": {"weight": 1.0}}, {"model": f1, "parameters": {"weight": 1 / 3}},
            {"model": f2, "parameters": {"weight": 0.7}}]},
        "linear-raw-gradient": {"merge_method": "linear", "dtype": "bfloat16", "parameters": {"normalize": False},
                                "models": [{"model": f1, "parameters": {"weight": [0.25, 1.0]}},
                                           {"model": f2, "parameters": {"weight": 0.5}}]},
        "task-arithmetic": {"merge_method": "task_arithmetic", "base_model": b, "dtype": "bfloat16",
                            "parameters": {"lambda": 0.9},
                            "models": [{"model": f1, "parameters": {"weight": 0.5}},
                                       {"model": f2, "parameters": {"weight": 0.3}},
                                       {"model": f3, "parameters": {"weight": 1.0}}]},
        "task-arithmetic-normalized": {"merge_method": "task_arithmetic", "base_model": b, "dtype": "bfloat16",
                                       "parameters": {"normalize": True},
                                       "models": [{"model": f1, "parameters": {"weight": 0.5}},
                                                  {"model": str(m["bf16"]), "parameters": {"weight": 0.25}}]},
        # float32 inputs rounded to float16 at load, written as bfloat16
        "f16-load": {"merge_method": "linear", "dtype": "float16", "out_dtype": "bfloat16",
                     "models": [{"model": f1, "parameters": {"weight": 1.0}},
                                {"model": f2, "parameters": {"weight": 1 / 7}}]},
    }


@pytest.mark.parametrize("case", ["linear-uneven", "linear-raw-gradient", "task-arithmetic",
                                  "task-arithmetic-normalized", "f16-load"])
def test_numpy_engine_is_byte_identical_to_torch_engine(case: str, tmp_path: Path, models: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fast, ref = _both_engines(tmp_path, _cases(models)[case], monkeypatch)
    assert fast.keys() == ref.keys() and len(fast) > 1
    assert [k for k in fast if fast[k] != ref[k]] == []


def test_plans_the_numpy_engine_covers(tmp_path: Path, models: dict[str, Path]) -> None:
    from merge import np_engine
    from merge.config import load_config
    from merge.plan import Options, build_plan

    def plan(cfg: dict[str, Any]) -> Any:
        p = write_yaml(tmp_path / "p.yaml", cfg)
        return build_plan(load_config(p), p, Options())

    cases = _cases(models)
    assert np_engine.supports(plan(cases["linear-uneven"]))
    # float32 output (NaN payloads could differ), a method with global statistics, LoRA: torch
    assert not np_engine.supports(plan({**cases["linear-uneven"], "dtype": "float32"}))
    ties = {**cases["task-arithmetic"], "merge_method": "ties"}
    assert not np_engine.supports(plan(ties))


def test_numpy_engine_merge_never_imports_torch(tmp_path: Path, models: dict[str, Path]) -> None:
    cfg = write_yaml(tmp_path / "lin.yaml", _cases(models)["linear-uneven"])
    code = ("import sys; from merge.cli import command\n"
            f"command.main([{str(cfg)!r}, {str(tmp_path / 'out')!r}, '--no-progress'], standalone_mode=False)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "provenance.json").exists()

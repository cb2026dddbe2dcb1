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


def _both_engines(tmp: Path, cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                  *extra: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    path = write_yaml(tmp / "cfg.yaml", cfg)
    outs = []
    for engine in ("auto", "torch"):
        monkeypatch.setenv("COHORTGATE_MERGE_ENGINE", engine)
        out = tmp / f"out-{engine}"
        r = merge(path, out, "--out-shard-size", "50KB", *extra)
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
        "dare-ties": {"merge_method": "dare_ties", "base_model": b, "dtype": "bfloat16",
                      "parameters": {"normalize": True},
                      "models": [{"model": f1, "parameters": {"weight": 1.0, "density": 0.5}},
                                 {"model": f2, "parameters": {"weight": 0.6, "density": 0.7}},
                                 {"model": f3, "parameters": {"weight": 1.0, "density": 1.0}}]},
        # a negative weight: the divisor is not clamped but has [divisor = 0] added
        "dare-ties-negative": {"merge_method": "dare_ties", "base_model": b, "dtype": "bfloat16",
                               "parameters": {"normalize": True, "lambda": 1.5},
                               "models": [{"model": f1, "parameters": {"weight": 1.0, "density": 0.3}},
                                          {"model": f2, "parameters": {"weight": -0.5, "density": 0.6}}]},
        "dare-linear": {"merge_method": "dare_linear", "base_model": b, "dtype": "bfloat16",
                        "parameters": {"rescale": False, "lambda": 0.8},
                        "models": [{"model": f1, "parameters": {"weight": 0.7, "density": 0.5}},
                                   {"model": f2, "parameters": {"weight": 0.3, "density": 0.0}}]},
        "ties": {"merge_method": "ties", "base_model": b, "dtype": "bfloat16",
                 "models": [{"model": f1, "parameters": {"weight": 1.0, "density": 0.5}},
                            {"model": f2, "parameters": {"weight": 0.5, "density": 0.7}}]},
        "ties-edges": {"merge_method": "ties", "base_model": b, "dtype": "bfloat16",
                       "parameters": {"normalize": False, "lambda": 0.7},
                       "models": [{"model": f1, "parameters": {"weight": 1.0, "density": 1.0}},
                                  {"model": f2, "parameters": {"weight": -0.4, "density": 0.2}},
                                  {"model": f3, "parameters": {"weight": 0.9, "density": 0.0}}]},
        # float32 inputs rounded to float16 at load, written as bfloat16
        "f16-load": {"merge_method": "linear", "dtype": "float16", "out_dtype": "bfloat16",
                     "models": [{"model": f1, "parameters": {"weight": 1.0}},
                                {"model": f2, "parameters": {"weight": 1 / 7}}]},
    }


@pytest.mark.parametrize("case", ["linear-uneven", "linear-raw-gradient", "task-arithmetic",
                                  "task-arithmetic-normalized", "f16-load", "dare-ties", "dare-ties-negative",
                                  "dare-linear", "ties", "ties-edges"])
def test_numpy_engine_is_byte_identical_to_torch_engine(case: str, tmp_path: Path, models: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fast, ref = _both_engines(tmp_path, _cases(models)[case], monkeypatch)
    assert fast.keys() == ref.keys() and len(fast) > 1
    assert [k for k in fast if fast[k] != ref[k]] == []


@pytest.mark.parametrize("keep_raw", [True, False])
def test_numpy_engine_ties_in_many_chunks(keep_raw: bool, tmp_path: Path, models: dict[str, Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Thresholds streamed over many chunks, from raw bytes kept in memory or read twice."""
    from merge import np_engine

    if not keep_raw:
        monkeypatch.setattr(np_engine, "KEEP_RAW_ELEMS", 0)
    fast, ref = _both_engines(tmp_path, _cases(models)["ties"], monkeypatch, "--chunk-elems", "512")
    assert [k for k in fast if fast[k] != ref[k]] == []


def test_kth_largest_on_numpy_chunks_streaming_path() -> None:
    import numpy as np

    from merge.methods import base as mb

    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal(300_000).astype(np.float32))
    x[:50_000] = 0.5  # a long run of ties
    srt = np.sort(x)[::-1]
    held = [mb._take_select_buffers() for _ in range(mb.WHOLE_SELECT_SLOTS)]  # force the streaming path
    try:
        for k in (1, 7, 1000, 60_000, 150_000, 300_000):
            assert mb.kth_largest(lambda: iter([x[:123_457], x[123_457:]]), x.size, k) == float(srt[k - 1])
    finally:
        for h in held:
            if h is not None:
                mb._give_select_buffers(h)


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
    assert np_engine.supports(plan(cases["ties"])) and np_engine.supports(plan(cases["dare-ties"]))
    breadcrumbs = {**cases["ties"], "merge_method": "breadcrumbs_ties"}
    assert not np_engine.supports(plan(breadcrumbs))


@pytest.mark.parametrize("case", ["linear-uneven", "ties", "dare-ties"])
def test_numpy_engine_merge_never_imports_torch(case: str, tmp_path: Path, models: dict[str, Path]) -> None:
    cfg = write_yaml(tmp_path / "cfg.yaml", _cases(models)[case])
    code = ("import sys; from merge.cli import command\n"
            f"command.main([{str(cfg)!r}, {str(tmp_path / 'out')!r}, '--no-progress'], standalone_mode=False)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "provenance.json").exists()


@pytest.mark.parametrize("consensus", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.7, 1 / 3), (1.0, -0.5)])
def test_combine_np_matches_combine_on_special_values(consensus: bool, normalize: bool,
                                                      weights: tuple[float, float]) -> None:
    """Elementwise, including ±0, ±inf, NaN and subnormal deltas: equal bits where torch's result
    is not NaN, NaN where it is."""
    import numpy as np
    import torch

    from merge.methods._deltas import combine, combine_np

    if normalize and not consensus and abs(sum(weights)) < 1e-8:
        pytest.skip("refused at plan time")
    rng = np.random.default_rng(7)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 1.0, -1.0], np.float32)
    n = 1 << 14
    base = rng.standard_normal(n).astype(np.float32)
    deltas = [rng.standard_normal(n).astype(np.float32) * 0.01 for _ in weights]
    for d in deltas:  # every pair of special values, and specials against ordinary values
        d[: specials.size**2] = np.repeat(specials, specials.size) if d is deltas[0] else np.tile(specials,
                                                                                                    specials.size)
        d[rng.integers(0, n, 64)] = rng.choice(specials, 64)
    want = combine(torch.from_numpy(base), [torch.from_numpy(d.copy()) for d in deltas], weights,
                   consensus=consensus, normalize=normalize, lambda_=0.9).numpy()
    with np.errstate(all="ignore"):
        got = combine_np(base, [d.copy() for d in deltas], weights, consensus=consensus, normalize=normalize,
                         lambda_=0.9, out=np.empty(n, np.float32))
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("threshold", [None, 0.0, 0.5, 1e-40, float("inf")])
def test_trim_np_is_hardshrink_bit_for_bit(threshold: float | None) -> None:
    import numpy as np
    import torch

    from merge.methods.ties import trim, trim_np

    rng = np.random.default_rng(9)
    d = rng.standard_normal(4096).astype(np.float32)
    d[:10] = [0.0, -0.0, np.inf, -np.inf, np.nan, 0.5, -0.5, 1e-40, -1e-40, -0.25]
    want = trim(torch.from_numpy(d.copy()), threshold).numpy()
    got = trim_np(d.copy(), threshold)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_uniform_draws_are_numpys_float32_stream() -> None:
    """DARE's documented random stream: block b of key K is Generator(PCG64(seed(K, b)))
    .random(dtype=float32); the faster raw-output path must give exactly those numbers."""
    import numpy as np

    from merge.methods.base import RNG_BLOCK, _block_seed, _uniform_prefix, uniform_np

    for seed in range(20):
        for skip, take in [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (3, 7), (0, 65536), (12345, 53191), (65535, 1)]:
            want = np.random.Generator(np.random.PCG64(seed)).random(skip + take, dtype=np.float32)[skip:]
            got = np.empty(take, np.float32)
            _uniform_prefix(np.random.PCG64(seed), skip, take, got)
            assert np.array_equal(want.view(np.uint32), got.view(np.uint32)), (seed, skip, take)
    key = (3, "model.layers.0.mlp.up_proj.weight", 1)
    offset, count = RNG_BLOCK - 5, RNG_BLOCK + 17  # spans three blocks, starting mid-block
    want = np.concatenate([np.random.Generator(np.random.PCG64(_block_seed(key, b))).random(RNG_BLOCK, np.float32)
                           for b in range(3)])[offset - 0 : offset + count]
    assert np.array_equal(uniform_np(key, offset, count), want)


def test_processing_order_moves_an_outsized_last_tensor_earlier() -> None:
    from merge.workers import processing_order

    sizes = [100] * 300 + [5000] + [100] * 3  # embeddings-like tensor near the end
    order = processing_order(sizes, workers=3)
    assert sorted(order) == list(range(len(sizes)))
    pos = order.index(300)
    assert sum(sizes[k] for k in order[pos + 1 :]) == 2 * 2 * 5000  # just enough left for the others
    others = [k for k in order if k != 300]
    assert others == sorted(others)  # everything else keeps the plan's (disk) order
    assert processing_order([100] * 5, workers=3) == list(range(5))
    assert processing_order([], workers=3) == []
    # too big to ever have enough after it: it goes first
    assert processing_order([10, 10, 10, 1000], workers=2)[0] == 3

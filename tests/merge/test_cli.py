"""End-to-end merges of tiny Llama checkpoints through the CLI: outputs, refusals, atomicity,
provenance and verification, loading the result in transformers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.merge.cli_util import cg, merge, subprocess_cli  # noqa: E402
from tests.merge.tiny import make_llama, read_all, write_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def ties_cfg(tmp: Path, models: dict[str, Path], **extra: object) -> Path:
    cfg = {"merge_method": "ties", "base_model": str(models["base"]),
           "models": [{"model": str(models["ft1"]), "parameters": {"weight": 1.0, "density": 0.5}},
                      {"model": str(models["ft2"]), "parameters": {"weight": 0.5, "density": 0.7}}],
           "dtype": "float32", **extra}
    return write_yaml(tmp / "ties.yaml", cfg)


def test_importing_cli_does_not_import_torch() -> None:
    code = "import sys, merge.cli; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(ROOT), timeout=60)


def test_cohortgate_entry_point_dispatches_to_merge(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cohortgate.cli", "merge", "--help"], capture_output=True, text=True,
                       cwd=str(ROOT), timeout=60)
    assert r.returncode == 0 and "verify" in r.stdout


def test_dry_run_prints_plan_and_writes_nothing(tmp_path: Path, models: dict[str, Path]) -> None:
    out = tmp_path / "out"
    r = cg(ties_cfg(tmp_path, models), out, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "bytes to read" in r.output and "peak memory" in r.output and "output tensors: 21" in r.output
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    r = cg(ties_cfg(tmp_path, models), out, "--dry-run", "--json")
    plan = json.loads(r.output)
    assert plan["read_bytes"] > plan["write_bytes"] > 0 and plan["peak_memory_bytes_estimate"] > 0


def test_ties_merge_loads_in_transformers_and_generates(tmp_path: Path, models: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    r = merge(ties_cfg(tmp_path, models), out, "--out-shard-size", "100KB")
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors.index.json" in names and "config.json" in names and "README.md" in names
    assert "tokenizer.json" in names and "provenance.json" in names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("w1 w2 w3", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert gen.shape[1] == ids.shape[1] + 5
    merged = read_all(out)
    assert set(merged) == set(read_all(models["base"]))


def test_provenance_records_sources_lineage_and_outputs(tmp_path: Path, models: dict[str, Path]) -> None:
    from merge.provenance import sha256_file

    out = tmp_path / "merged"
    assert merge(ties_cfg(tmp_path, models), out, "--seed", "5").exit_code == 0
    rec = json.loads((out / "provenance.json").read_text())
    assert rec["method"]["name"] == "ties" and rec["method"]["seed"] == 5
    assert rec["tool"]["version"] and rec["started_at"] <= rec["finished_at"]
    by_path = {s["path"]: s for s in rec["sources"]}
    ft1 = by_path[str(models["ft1"].resolve())]
    for name, h in ft1["shards"].items():
        assert sha256_file(models["ft1"] / name) == h
    assert ft1["lineage"]["training_data"] == ["cohort-support-v1"]
    ft2 = by_path[str(models["ft2"].resolve())]
    assert ft2["lineage"]["training_data"] == ["cohort-code-v2"] and ft2["config_sha256"] and ft2["tokenizer_sha256"]
    assert any("base: declares no training-data lineage" in w for w in rec["warnings"])
    assert rec["lineage"] == ["cohort-support-v1", "cohort-code-v2"]
    for name, h in rec["output"]["files"].items():
        assert sha256_file(out / name) == h
    assert rec["config"]["merge_method"] == "ties"
    card = (out / "README.md").read_text()
    assert "cohort-code-v2" in card and "merge_method: ties" in card


def test_verify_detects_a_modified_shard(tmp_path: Path, models: dict[str, Path]) -> None:
    out = tmp_path / "merged"
    assert merge(ties_cfg(tmp_path, models), out, "--out-shard-size", "100KB").exit_code == 0
    assert cg("verify", out).exit_code == 0
    shard = sorted(out.glob("model-*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = cg("verify", out)
    assert r.exit_code == 3 and shard.name in r.output
    r = cg("verify", tmp_path)
    assert r.exit_code == 3 and "no provenance.json" in r.output


def test_existing_destination_needs_force(tmp_path: Path, models: dict[str, Path]) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    r = merge(ties_cfg(tmp_path, models), out)
    assert r.exit_code == 2 and "--force" in r.output
    assert (out / "keep.txt").exists()
    r = merge(ties_cfg(tmp_path, models), out, "--force")
    assert r.exit_code == 0, r.output
    assert not (out / "keep.txt").exists() and (out / "provenance.json").exists()
    assert not list(tmp_path.glob(".merged.*"))


def _refusal(tmp_path: Path, cfg: dict[str, object], *extra: str) -> str:
    r = merge(write_yaml(tmp_path / "c.yaml", cfg), tmp_path / "out", *extra)
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "out").exists()
    assert "Traceback" not in r.output
    return r.output


def _two(models: dict[str, Path], other: str, method: str = "ties") -> dict[str, object]:
    return {"merge_method": method, "base_model": str(models["base"]),
            "models": [{"model": str(models["ft1"]), "parameters": {"weight": 1.0, "density": 0.5}},
                       {"model": str(models[other]), "parameters": {"weight": 1.0, "density": 0.5}}]}


def test_refuses_config_mismatch_with_override(tmp_path: Path, models: dict[str, Path]) -> None:
    msg = _refusal(tmp_path, _two(models, "rope"))
    assert "rope_theta" in msg and "rope" in msg and "--allow-config-mismatch" in msg
    r = merge(tmp_path / "c.yaml", tmp_path / "out", "--allow-config-mismatch")
    assert r.exit_code == 0, r.output


def test_refuses_shape_mismatch(tmp_path: Path, models: dict[str, Path]) -> None:
    msg = _refusal(tmp_path, _two(models, "wide", "task_arithmetic"))
    assert "intermediate_size" in msg and "wide" in msg and "override" in msg


def test_refuses_tokenizer_mismatch_unless_reconciled(tmp_path: Path, models: dict[str, Path]) -> None:
    msg = _refusal(tmp_path, _two(models, "othertok"))
    assert "tokenizers differ" in msg and "othertok" in msg and "tokenizer_source" in msg
    cfg = {**_two(models, "othertok"), "tokenizer_source": "base"}
    r = merge(write_yaml(tmp_path / "c2.yaml", cfg), tmp_path / "out2")
    assert r.exit_code == 0, r.output
    r = merge(tmp_path / "c.yaml", tmp_path / "out3", "--allow-tokenizer-mismatch")
    assert r.exit_code == 0, r.output


def test_refuses_unrelated_base(tmp_path: Path, models: dict[str, Path]) -> None:
    msg = _refusal(tmp_path, _two(models, "unrelated"))
    assert "does not look like a fine-tune" in msg and "--allow-unrelated-base" in msg
    assert merge(tmp_path / "c.yaml", tmp_path / "out", "--allow-unrelated-base").exit_code == 0


def test_refuses_declared_other_base(tmp_path: Path, models: dict[str, Path]) -> None:
    msg = _refusal(tmp_path, _two(models, "declares_other_base"))
    assert "meta-llama/Llama-3.2-1B" in msg and "--allow-unrelated-base" in msg


def test_refuses_missing_tensors(tmp_path: Path, models: dict[str, Path]) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "pruned"
    shutil.copytree(models["ft3"], d)
    sd = {}
    for f in sorted(d.glob("*.safetensors")):
        sd.update(load_file(str(f)))
        f.unlink()
    (d / "model.safetensors.index.json").unlink()
    del sd["model.norm.weight"]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    models = {**models, "pruned": d}
    msg = _refusal(tmp_path, _two(models, "pruned"))
    assert "model.norm.weight" in msg and "--allow-missing-tensors" in msg
    r = merge(tmp_path / "c.yaml", tmp_path / "out", "--allow-missing-tensors")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("cfg_patch,needle", [
    ({"merge_method": "linear", "models": "zero"}, "sum to 0"),
    ({"merge_method": "frobnicate"}, "unknown method"),
    ({"modules": {"x": {}}}, "modules"),
    ({"base_model": None}, "needs `base_model`"),
    ({"merge_method": "della", "parameters": {"epsilon": 0.6}}, "epsilon"),
    ({"merge_method": "slerp"}, "t"),
])
def test_config_errors_exit_2(tmp_path: Path, models: dict[str, Path], cfg_patch: dict[str, object],
                              needle: str) -> None:
    cfg = _two(models, "ft2")
    for k, v in cfg_patch.items():
        if v == "zero":
            cfg["models"] = [{"model": str(models["ft1"]), "parameters": {"weight": 1.0}},
                             {"model": str(models["ft2"]), "parameters": {"weight": -1.0}}]
        elif v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    msg = _refusal(tmp_path, cfg)
    assert needle in msg


def test_dare_is_reproducible_by_seed(tmp_path: Path, models: dict[str, Path]) -> None:
    cfg = write_yaml(tmp_path / "d.yaml", {**_two(models, "ft2", "dare_ties"), "dtype": "float32"})
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert merge(cfg, tmp_path / name, "--seed", seed).exit_code == 0
    a, b, c = (read_all(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_small_chunks_give_identical_output(tmp_path: Path, models: dict[str, Path]) -> None:
    for method in ("ties", "dare_ties", "slerp", "breadcrumbs", "della", "model_stock"):
        cfg = _two(models, "ft2", method)
        if method == "slerp":
            cfg = {"merge_method": "slerp", "base_model": str(models["base"]), "parameters": {"t": [0.1, 0.9]},
                   "models": [{"model": str(models["base"])}, {"model": str(models["ft1"])}]}
        y = write_yaml(tmp_path / f"{method}.yaml", cfg)
        assert merge(y, tmp_path / f"{method}-big").exit_code == 0
        assert merge(y, tmp_path / f"{method}-small", "--chunk-elems", "100").exit_code == 0
        a, b = read_all(tmp_path / f"{method}-big"), read_all(tmp_path / f"{method}-small")
        assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) <= 1e-6, method


def test_passthrough_slices_frankenmerge_loads(tmp_path: Path, models: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    cfg = {"merge_method": "passthrough", "dtype": "float32",
           "slices": [{"sources": [{"model": str(models["ft1"]), "layer_range": [0, 2]}]},
                      {"sources": [{"model": str(models["ft2"]), "layer_range": [1, 2]}]}]}
    out = tmp_path / "franken"
    assert merge(write_yaml(tmp_path / "p.yaml", cfg), out).exit_code == 0
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    merged, ft2 = read_all(out), read_all(models["ft2"])
    assert torch.equal(merged["model.layers.2.mlp.up_proj.weight"], ft2["model.layers.1.mlp.up_proj.weight"])
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.num_hidden_layers == 3


def test_out_dtype_and_bf16_inputs(tmp_path: Path, models: dict[str, Path]) -> None:
    cfg = {"merge_method": "linear", "out_dtype": "bfloat16",
           "models": [{"model": str(models["base"]), "parameters": {"weight": 1.0}},
                      {"model": str(models["bf16"]), "parameters": {"weight": 1.0}}]}
    out = tmp_path / "o"
    assert merge(write_yaml(tmp_path / "l.yaml", cfg), out).exit_code == 0
    merged, base, b16 = read_all(out), read_all(models["base"]), read_all(models["bf16"])
    k = "model.layers.0.mlp.down_proj.weight"
    assert merged[k].dtype == torch.bfloat16
    assert torch.equal(merged[k], ((base[k] + b16[k].float()) / 2).to(torch.bfloat16))
    assert json.loads((out / "config.json").read_text()).get("dtype", "bfloat16") in ("bfloat16",)


def test_union_tokenizer_remaps_embedding_rows(tmp_path: Path, models: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = {"merge_method": "linear", "base_model": str(models["base"]), "tokenizer_source": "union",
           "models": [{"model": str(models["base"]), "parameters": {"weight": 1.0}},
                      {"model": str(models["bigvocab"]), "parameters": {"weight": 1.0}}]}
    out = tmp_path / "u"
    r = merge(write_yaml(tmp_path / "u.yaml", cfg), out)
    assert r.exit_code == 0, r.output
    merged, base, big = read_all(out), read_all(models["base"]), read_all(models["bigvocab"])
    emb = merged["model.embed_tokens.weight"]
    assert emb.shape[0] == 100
    assert torch.allclose(emb[5], (base["model.embed_tokens.weight"][5] + big["model.embed_tokens.weight"][5]) / 2)
    assert torch.equal(emb[97], big["model.embed_tokens.weight"][97])  # only bigvocab has "new1"
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.convert_tokens_to_ids("new1") == 97
    AutoModelForCausalLM.from_pretrained(str(out))
    # vocabularies of different sizes without a tokenizer_source are refused
    cfg.pop("tokenizer_source")
    msg = _refusal(tmp_path, cfg)
    assert "tokenizer" in msg


def test_kill_mid_merge_leaves_no_destination(tmp_path: Path) -> None:
    src = tmp_path / "m"
    big_base = make_llama(src / "base", 0, hidden_size=256, intermediate_size=512, shard="2MB")  # type: ignore[arg-type]
    big_ft = make_llama(src / "ft", 1, base_of=big_base, hidden_size=256, intermediate_size=512, shard="2MB")  # type: ignore[arg-type]
    cfg = write_yaml(tmp_path / "k.yaml", {"merge_method": "ties", "base_model": str(big_base),
                                           "models": [{"model": str(big_ft), "parameters": {"weight": 1.0,
                                                                                              "density": 0.5}}]})
    out = tmp_path / "out"
    for sig in (signal.SIGKILL, signal.SIGTERM):
        p = subprocess.Popen([sys.executable, "-m", "merge.cli", str(cfg), str(out), "--no-progress",
                              "--chunk-elems", "64"], cwd=str(ROOT), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            partial = None
            while time.monotonic() < deadline and p.poll() is None:
                found = [f for f in tmp_path.glob(f".out.partial-{p.pid}/*.safetensors") if f.stat().st_size > 0]
                if found:
                    partial = found[0]
                    break
                time.sleep(0.02)
            assert partial is not None and p.poll() is None, "merge finished before it could be interrupted"
            time.sleep(0.2)
            p.send_signal(sig)
            p.wait(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert not out.exists()
        if sig == signal.SIGTERM:
            assert p.returncode == 130, (p.returncode, (p.stdout.read() if p.stdout else b"")[-1500:])
            assert not list(tmp_path.glob(".out.partial-*")), "SIGTERM must clean the temp dir"
    # the next run removes the stale temp dir of the killed one and completes
    r = subprocess_cli(cfg, out, "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_python_m_merge_cli_run_alias(tmp_path: Path, models: dict[str, Path]) -> None:
    r = subprocess_cli("run", ties_cfg(tmp_path, models), tmp_path / "o", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = subprocess_cli("verify", tmp_path / "o")
    assert r.returncode == 0 and "ok" in r.stdout
    assert os.path.exists(tmp_path / "o" / "provenance.json")


def test_verify_sources_detects_a_changed_source(tmp_path: Path, models: dict[str, Path]) -> None:
    import shutil

    src = tmp_path / "ft"
    shutil.copytree(models["ft3"], src)
    cfg = write_yaml(tmp_path / "v.yaml", {"merge_method": "task_arithmetic", "base_model": str(models["base"]),
                                           "models": [{"model": str(src), "parameters": {"weight": 0.5}}]})
    out = tmp_path / "o"
    assert merge(cfg, out).exit_code == 0
    assert cg("verify", out, "--sources").exit_code == 0
    shard = sorted(src.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    r = cg("verify", out, "--sources")
    assert r.exit_code == 3 and "source" in r.output and shard.name in r.output
    assert cg("verify", out).exit_code == 0  # the output itself is intact
    # a re-merge does not trust the stale hash cache: the changed shard gets a new hash
    out2 = tmp_path / "o2"
    assert merge(cfg, out2).exit_code == 0
    rec = json.loads((out2 / "provenance.json").read_text())
    from merge.provenance import sha256_file

    entry = next(s for s in rec["sources"] if s["path"] == str(src.resolve()))
    assert entry["shards"][shard.name] == sha256_file(shard)


def test_tokenizer_source_model_path(tmp_path: Path, models: dict[str, Path]) -> None:
    """tokenizer_source: <model> keeps that model's vocabulary; rows the other models lack come
    from it, shared tokens are merged row by row."""
    cfg = {"merge_method": "linear", "tokenizer_source": str(models["othertok"]),
           "models": [{"model": str(models["base"]), "parameters": {"weight": 1.0}},
                      {"model": str(models["othertok"]), "parameters": {"weight": 1.0}}]}
    out = tmp_path / "t"
    r = merge(write_yaml(tmp_path / "t.yaml", cfg), out)
    assert r.exit_code == 0, r.output
    merged, base, other = read_all(out), read_all(models["base"]), read_all(models["othertok"])
    emb = merged["model.embed_tokens.weight"]
    k = "model.embed_tokens.weight"
    assert torch.allclose(emb[1], (base[k][1] + other[k][1]) / 2)  # "<s>" is in both vocabularies
    assert torch.equal(emb[10], other[k][10])  # "x7" only in othertok
    assert json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]["x7"] == 10


def test_bin_checkpoints_are_refused_then_converted_safely(tmp_path: Path, models: dict[str, Path]) -> None:
    import shutil

    from merge.st_io import convert_bin

    d = tmp_path / "binmodel"
    shutil.copytree(models["ft3"], d)
    sd = read_all(d)
    for f in d.glob("*.safetensors*"):
        f.unlink()
    torch.save(sd, d / "pytorch_model.bin")
    cfg = _two({**models, "binmodel": d}, "binmodel", "task_arithmetic")
    msg = _refusal(tmp_path, cfg)
    assert ".bin" in msg and "merge.st_io" in msg
    convert_bin(d)  # torch.load(weights_only=True): no arbitrary pickle code runs
    assert merge(tmp_path / "c.yaml", tmp_path / "out").exit_code == 0


@pytest.mark.parametrize("engine", ["auto", "torch"])
def test_dry_run_peak_memory_estimate_bounds_the_measured_peak(tmp_path: Path, engine: str) -> None:
    """`--dry-run`'s estimate knows which engine will run (the torch-free one needs no torch
    runtime) and is not below the peak RSS the merge then has."""
    base = make_llama(tmp_path / "base", 0, dtype="bfloat16")
    fts = [make_llama(tmp_path / f"ft{i}", i, base_of=base, dtype="bfloat16") for i in (1, 2)]
    cfg = write_yaml(tmp_path / "ties.yaml", {
        "merge_method": "ties", "base_model": str(base), "dtype": "bfloat16",
        "models": [{"model": str(f), "parameters": {"weight": 1.0, "density": 0.5}} for f in fts]})
    env = {**os.environ, "COHORTGATE_MERGE_ENGINE": engine}
    dry = subprocess.run([sys.executable, "-m", "merge.cli", str(cfg), str(tmp_path / "x"), "--dry-run", "--json"],
                         capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=120)
    assert dry.returncode == 0, dry.stderr
    estimate = json.loads(dry.stdout)["peak_memory_bytes_estimate"]
    # the merge as the only child of a fresh interpreter: RUSAGE_CHILDREN is then its own peak
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
            " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)")
    r = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "merge.cli", str(cfg),
                        str(tmp_path / f"out-{engine}"), "--no-progress"],
                       capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    peak = int(r.stdout.split()[-1])
    assert peak <= estimate, (peak, estimate)
    if engine == "auto":
        assert estimate < 150e6  # no torch runtime in it
    else:
        assert estimate > 200e6  # torch's runtime, measured by the dry run itself

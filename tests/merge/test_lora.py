"""LoRA: merging a PEFT adapter into its base (against PEFT's own merge_and_unload) and combining
adapters (cat exact, svd, ties/dare on ΔW, PEFT-style linear)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from tests.merge.cli_util import cg, merge  # noqa: E402
from tests.merge.tiny import read_all, write_yaml  # noqa: E402


def make_adapter(base: Path, d: Path, seed: int, r: int = 4, alpha: int = 8,
                 targets: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    pm.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def adapters(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"a": make_adapter(models["base"], root / "a", 1),
            "b": make_adapter(models["base"], root / "b", 2, r=4, alpha=4, targets=("q_proj", "o_proj")),
            "c": make_adapter(models["base"], root / "c", 3, r=2, alpha=16)}


def peft_merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter))
    return {k: v.detach() for k, v in m.merge_and_unload().state_dict().items()}


def lora_parts(adapter: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    sd = load_file(str(adapter / "adapter_model.safetensors"))
    out = {}
    for k in sd:
        if ".lora_A." in k:
            mod = k.split(".lora_A.")[0].removeprefix("base_model.model.") + ".weight"
            out[mod] = (sd[k], sd[k.replace("lora_A", "lora_B")])
    return out, cfg["lora_alpha"] / cfg["r"]


def test_lora_merge_equals_peft_merge_and_unload(tmp_path: Path, models: dict[str, Path],
                                                 adapters: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    r = cg("lora-merge", models["base"], adapters["a"], out, "--no-progress")
    assert r.exit_code == 0, r.output
    ours, ref = read_all(out), peft_merged(models["base"], adapters["a"])
    assert set(ours) == set(ref)
    assert max(float((ours[k] - ref[k]).abs().max()) for k in ours) <= 1e-6
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"],
                           read_all(models["base"])["model.layers.0.self_attn.q_proj.weight"])
    rec = json.loads((out / "provenance.json").read_text())
    assert rec["sources"][0]["lora"]["scale"] == 2.0 and rec["sources"][0]["lora"]["shards"]
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=3, do_sample=False).shape[1] == 6


def test_lora_in_mergekit_config_syntax(tmp_path: Path, models: dict[str, Path], adapters: dict[str, Path]) -> None:
    cfg = {"merge_method": "linear", "models": [
        {"model": f"{models['base']}+{adapters['a']}", "parameters": {"weight": 1.0}},
        {"model": str(models["ft1"]), "parameters": {"weight": 1.0}}]}
    out = tmp_path / "o"
    r = merge(write_yaml(tmp_path / "c.yaml", cfg), out)
    assert r.exit_code == 0, r.output
    ours, lora_full, ft1 = read_all(out), peft_merged(models["base"], adapters["a"]), read_all(models["ft1"])
    k = "model.layers.1.self_attn.v_proj.weight"
    assert torch.allclose(ours[k], (lora_full[k] + ft1[k]) / 2, atol=1e-6)


def test_lora_refused_on_wrong_base(tmp_path: Path, models: dict[str, Path], adapters: dict[str, Path]) -> None:
    r = cg("lora-merge", models["wide"], adapters["b"], tmp_path / "o", "--no-progress")
    assert r.exit_code == 0  # q_proj/o_proj shapes are the same in `wide` (only the MLP differs)
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(adapters["a"], bad)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(bad / "adapter_model.safetensors"))
    k = next(k for k in sd if "lora_B" in k)
    sd[k] = torch.zeros(sd[k].shape[0] + 1, sd[k].shape[1])
    save_file(sd, str(bad / "adapter_model.safetensors"))
    r = cg("lora-merge", models["base"], bad, tmp_path / "o2", "--no-progress")
    assert r.exit_code == 2 and "shape" in r.output and not (tmp_path / "o2").exists()


def delta_of(parts: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float, mod: str) -> torch.Tensor:
    a, b = parts[mod]
    return (b @ a) * scale


def test_combine_cat_is_exact(tmp_path: Path, adapters: dict[str, Path]) -> None:
    out = tmp_path / "cat"
    r = cg("lora-combine", adapters["a"], adapters["b"], adapters["c"], "--out", out, "--method", "cat",
           "--weights", "0.5,1.0,-0.7")
    assert r.exit_code == 0, r.output
    got, gs = lora_parts(out)
    assert gs == 1.0
    srcs = [lora_parts(adapters[k]) for k in "abc"]
    for mod in got:
        want = sum(w * delta_of(p, s, mod) for (p, s), w in zip(srcs, [0.5, 1.0, -0.7], strict=False) if mod in p)
        assert torch.allclose(delta_of(got, 1.0, mod), want, atol=1e-6)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 10
    assert (out / "provenance.json").exists()


def test_combine_svd_exact_at_full_rank_and_loads_in_peft(tmp_path: Path, models: dict[str, Path],
                                                         adapters: dict[str, Path]) -> None:
    out = tmp_path / "svd"
    r = cg("lora-combine", adapters["a"], adapters["c"], "--out", out, "--method", "svd", "--rank", "6",
           "--weights", "1,2")
    assert r.exit_code == 0, r.output
    got, _ = lora_parts(out)
    srcs = [lora_parts(adapters[k]) for k in "ac"]
    for mod in got:
        want = sum(w * delta_of(p, s, mod) for (p, s), w in zip(srcs, [1.0, 2.0], strict=False) if mod in p)
        assert torch.allclose(delta_of(got, 1.0, mod), want, atol=1e-5)
    merged = peft_merged(models["base"], out)  # PEFT itself loads the combined adapter
    base = read_all(models["base"])
    k = "model.layers.0.self_attn.q_proj.weight"
    want = sum(w * delta_of(p, s, k) for (p, s), w in zip(srcs, [1.0, 2.0], strict=False))
    assert torch.allclose(merged[k] - base[k], want, atol=1e-5)


def test_combine_svd_truncates_rank(tmp_path: Path, adapters: dict[str, Path]) -> None:
    out = tmp_path / "svd2"
    r = cg("lora-combine", adapters["a"], adapters["c"], "--out", out, "--method", "svd", "--rank", "2")
    assert r.exit_code == 0, r.output
    got, _ = lora_parts(out)
    assert all(a.shape[0] == 2 for a, _ in got.values())


def test_combine_ties_on_delta_w(tmp_path: Path, adapters: dict[str, Path]) -> None:
    out = tmp_path / "ties"
    assert cg("lora-combine", adapters["a"], adapters["c"], "--out", out, "--method", "ties", "--density", "0.3",
              "--rank", "64").exit_code == 0
    got, _ = lora_parts(out)
    srcs = [lora_parts(adapters[k]) for k in "ac"]
    mod = "model.layers.1.self_attn.q_proj.weight"
    deltas = [delta_of(p, s, mod) for p, s in srcs]
    trimmed = []
    for d in deltas:
        k = int(0.3 * d.numel())
        thr = d.abs().reshape(-1).sort(descending=True).values[k - 1]
        trimmed.append(d * (d.abs() >= thr))
    total = trimmed[0] + trimmed[1]
    sign = torch.where(total >= 0, 1.0, -1.0)
    want = sum(t * ((t * sign) > 0) for t in trimmed)
    assert torch.allclose(delta_of(got, 1.0, mod), want, atol=1e-5)


def test_combine_linear_is_peft_formula_and_full_model_output(tmp_path: Path, models: dict[str, Path],
                                                              adapters: dict[str, Path]) -> None:
    out = tmp_path / "lin"
    assert cg("lora-combine", adapters["a"], adapters["b"], "--out", out, "--method", "linear",
              "--weights", "1,0.5").exit_code == 0
    got, _ = lora_parts(out)
    (pa, sa), (pb, sb) = lora_parts(adapters["a"]), lora_parts(adapters["b"])
    mod = "model.layers.0.self_attn.q_proj.weight"
    ca, cb = (1.0 * sa) ** 0.5, (0.5 * sb) ** 0.5
    assert torch.allclose(got[mod][0], ca * pa[mod][0] + cb * pb[mod][0], atol=1e-6)
    assert torch.allclose(got[mod][1], ca * pa[mod][1] + cb * pb[mod][1], atol=1e-6)
    full = tmp_path / "full"
    assert cg("lora-combine", adapters["a"], adapters["b"], "--out", full, "--method", "linear", "--weights", "1,0.5",
              "--base", models["base"]).exit_code == 0
    base = read_all(models["base"])
    assert torch.allclose(read_all(full)[mod] - base[mod], got[mod][1] @ got[mod][0], atol=1e-6)
    r = cg("lora-combine", adapters["a"], adapters["c"], "--out", tmp_path / "x", "--method", "linear")
    assert r.exit_code == 2 and "equal ranks" in r.output

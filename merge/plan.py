"""Planning: turn a mergekit config plus the input headers into one job per output tensor.

Contract: `build_plan(cfg, config_path, options)` loads only headers/configs (no tensor data),
runs every compatibility check (`merge.checks`) and resolves every parameter for every output
tensor (filters, gradients, defaults) and validates it against its method, so a bad value fails
before the first byte is read. Semantics follow mergekit's planner:
- `models:` — every tensor of the base (or first) model is merged across the inputs; a layer
  tensor `…layers.i…` gets gradient position t = i/(L−1), other tensors t = 0. Methods that need
  a base take it as their first input even when it is not listed under `models`.
- `slices:` — output layers are the concatenation of the slices; inside a slice with L layers,
  layer j has t = j/(L−1) (t = 1 when L = 1). Non-layer tensors come from the first slice's
  sources (embeddings) or the last slice's (final norm, lm_head).
Parameter precedence (highest first): the source's own `parameters`, the slice's, the top-level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merge.config import InputSlice, MergeConfig, ModelRef, OutputSlice, Parameters, dtype_name, resolve
from merge.errors import ConfigError, IncompatibleError
from merge.methods.base import Job, Method
from merge.methods.registry import get_method
from merge.sources import Source, load_source
from merge.st_io import ST_DTYPES, TORCH_TO_ST

LAYER_RE = re.compile(r"^(.*?\blayers\.)(\d+)(\..+)$")


@dataclass
class Options:
    seed: int = 0
    allow_config_mismatch: bool = False
    allow_tokenizer_mismatch: bool = False
    allow_unrelated_base: bool = False
    allow_missing_tensors: bool = False
    out_shard_bytes: int = 5 * 10**9
    chunk_elems: int = 1 << 18


@dataclass
class InputRef:
    source: int  # index into Plan.sources
    name: str  # tensor name in that source
    row_map: list[int] | None = None  # vocabulary remap (output row -> source row, -1 = fill)


@dataclass
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    out_dtype: str  # safetensors code
    method: Method
    job: Job
    inputs: list[InputRef]
    fill_from: list[int | None] = field(default_factory=list)  # per input: input index giving missing rows

    @property
    def out_nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * ST_DTYPES[self.out_dtype][1]


@dataclass
class Plan:
    cfg: MergeConfig
    config_path: Path
    method: Method
    sources: list[Source]
    base: int | None  # index of the base source
    tensors: list[TensorPlan]
    out_config: dict[str, Any]
    load_dtype: str | None
    options: Options
    tokenizer: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def read_bytes(self) -> int:
        seen: dict[tuple[int, str], int] = {}
        for t in self.tensors:
            for i in t.inputs:
                seen[(i.source, i.name)] = self.sources[i.source].files.tensors[i.name].nbytes
        return sum(seen.values())

    def write_bytes(self) -> int:
        return sum(t.out_nbytes for t in self.tensors)


def _source_index(sources: list[Source], ref: ModelRef) -> int:
    for i, s in enumerate(sources):
        if s.ref == ref:
            return i
    raise AssertionError(ref)


def _is_float(st: str) -> bool:
    return st in ("F32", "F16", "BF16", "F64")


def _resolve_params(method: Method, scopes_shared: list[Parameters | None],
                    scopes_models: list[list[Parameters | None]], name: str, t: float,
                    labels: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    shared = {k: resolve(k, p.kind, p.default, scopes_shared, name, t, "the merge") for k, p in
              method.shared_params.items()}
    per = [{k: resolve(k, p.kind, p.default, sc, name, t, label) for k, p in method.model_params.items()}
           for sc, label in zip(scopes_models, labels, strict=False)]
    return shared, per


def build_plan(cfg: MergeConfig, config_path: Path, options: Options) -> Plan:
    from merge import checks

    method = get_method(cfg.merge_method)
    refs = cfg.referenced_models()
    sources = [load_source(r, config_path) for r in refs]
    base = _source_index(sources, cfg.base_model) if cfg.base_model else None
    if method.needs_base and base is None:
        raise ConfigError(f"{config_path}: merge_method {method.name} needs `base_model`")
    load_dtype = dtype_name(cfg.dtype, "dtype")
    plan = Plan(cfg, config_path, method, sources, base, [], {}, load_dtype, options)
    for s in sources:
        plan.warnings.extend(s.warnings)
    checks.check_sources(plan)
    tok = checks.plan_tokenizer(plan)
    plan.tokenizer = tok
    if cfg.slices:
        _plan_slices(plan, tok)
    else:
        _plan_models(plan, tok)
    checks.check_lineage(plan)
    for tp in plan.tensors:
        try:
            tp.method.validate(tp.job)
        except ValueError as exc:
            raise ConfigError(f"{config_path}: {tp.name}: {exc}") from None
    return plan


def _out_dtype(plan: Plan, src_dtype: str) -> str:
    name = dtype_name(plan.cfg.out_dtype, "out_dtype") or plan.load_dtype
    if name is None or not _is_float(src_dtype):
        return src_dtype
    return TORCH_TO_ST[name]


def _make(plan: Plan, out_name: str, in_names: list[str], members: list[int], has_base: bool,
          scopes_shared: list[Parameters | None], scopes_models: list[list[Parameters | None]], t: float,
          tok: dict[str, Any]) -> TensorPlan:
    """One output tensor from `members` (source indices; base first when has_base)."""
    method = plan.method
    present = [i for i, (m, n) in enumerate(zip(members, in_names, strict=False)) if n in plan.sources[m].files.tensors]
    if len(present) < len(members):
        missing = [plan.sources[members[i]].label for i in range(len(members)) if i not in present]
        if not plan.options.allow_missing_tensors or not present:
            raise IncompatibleError(
                f"tensor {in_names[0]} is missing from {', '.join(missing)}",
                override="--allow-missing-tensors copies such tensors from the first input that has them")
    first = plan.sources[members[present[0]]].files.tensors[in_names[present[0]]]
    shape, st = first.shape, first.dtype
    labels = [plan.sources[m].label for m in members]
    if len(present) < len(members) or not _is_float(st):
        from merge.methods.passthrough import Passthrough

        m0 = present[0]
        job = Job(out_name, shape, False, {}, [{"scale": None}], plan.options.seed, [0])
        return TensorPlan(out_name, shape, _out_dtype(plan, st), Passthrough(), job,
                          [InputRef(members[m0], in_names[m0])])
    nb = 1 if has_base else 0
    shared, per = _resolve_params(method, scopes_shared, scopes_models[nb:], in_names[0], t, labels[nb:])
    vocab = tok.get("rows") if tok.get("remap") and _is_vocab(out_name, shape, plan) else None
    inputs = []
    for _k, (m, n) in enumerate(zip(members, in_names, strict=False)):
        info = plan.sources[m].files.tensors[n]
        ref = InputRef(m, n, vocab[m] if vocab is not None else None)
        if vocab is None and info.shape != shape:
            raise IncompatibleError(
                f"tensor {n}: shape {list(info.shape)} in {plan.sources[m].label} but {list(shape)} in "
                f"{plan.sources[members[0]].label}",
                override="none for weight matrices; for vocabulary rows set tokenizer_source: base or union")
        inputs.append(ref)
    if vocab is not None:
        shape = (tok["n_rows"],) + tuple(shape[1:])
    job = Job(out_name, tuple(shape), has_base, shared, per, plan.options.seed, list(range(len(members) - nb)))
    tp = TensorPlan(out_name, tuple(shape), _out_dtype(plan, st), method, job, inputs)
    if vocab is not None:
        tp.fill_from = [tok["fill"]] * len(inputs)
    return tp


def _is_vocab(name: str, shape: tuple[int, ...], plan: Plan) -> bool:
    return len(shape) == 2 and ("embed" in name or "lm_head" in name or name.endswith("wte.weight"))


def _members(plan: Plan, model_refs: list[ModelRef], base_ref: ModelRef | None) -> tuple[list[int], bool]:
    method = plan.method
    idx = [_source_index(plan.sources, r) for r in model_refs]
    use_base = base_ref is not None and (method.needs_base or (method.name == "nuslerp"))
    if not use_base:
        return idx, False
    b = _source_index(plan.sources, base_ref)  # type: ignore[arg-type]
    return [b] + [i for i in idx if i != b], True


def _check_counts(plan: Plan, n_models: int, where: str) -> None:
    m = plan.method
    if n_models < m.min_models or (m.max_models is not None and n_models > m.max_models):
        want = f"{m.min_models}" if m.max_models == m.min_models else \
            f"{m.min_models}..{m.max_models if m.max_models is not None else 'n'}"
        raise ConfigError(f"{plan.config_path}: {where}: {m.name} takes {want} model(s) besides the base, "
                          f"got {n_models}")


def _plan_models(plan: Plan, tok: dict[str, Any]) -> None:
    cfg = plan.cfg
    assert cfg.models is not None
    members, has_base = _members(plan, [m.model for m in cfg.models], cfg.base_model)
    _check_counts(plan, len(members) - (1 if has_base else 0), "models")
    params_by_src = {_source_index(plan.sources, m.model): m.parameters for m in cfg.models}
    scopes_models = [[params_by_src.get(m), cfg.parameters] for m in members]
    ref_src = plan.sources[members[0]]
    # file order, then byte offset: inputs are read sequentially, which the kernel reads ahead best
    order = {f: i for i, f in enumerate(ref_src.files.files)}
    names = sorted(ref_src.files.tensors, key=lambda n: (order[ref_src.files.tensors[n].file],
                                                         ref_src.files.tensors[n].offset))
    n_layers = _n_layers(ref_src)
    for name in names:
        mt = LAYER_RE.match(name)
        t = int(mt.group(2)) / (n_layers - 1) if (mt and n_layers > 1) else (1.0 if mt else 0.0)
        plan.tensors.append(_make(plan, name, [name] * len(members), members, has_base, [cfg.parameters],
                                  scopes_models, t, tok))
    plan.out_config = dict(ref_src.config)
    if tok.get("n_rows") and tok.get("remap"):
        plan.out_config["vocab_size"] = tok["n_rows"]


def _n_layers(src: Source) -> int:
    n = src.config.get("num_hidden_layers") or src.config.get("n_layer")
    if n:
        return int(n)
    idx = {int(m.group(2)) for name in src.files.tensors if (m := LAYER_RE.match(name))}
    return max(idx) + 1 if idx else 0


def _plan_slices(plan: Plan, tok: dict[str, Any]) -> None:
    cfg = plan.cfg
    assert cfg.slices is not None
    out_layer = 0
    pre: list[str] = []
    post: list[str] = []
    first = plan.sources[_source_index(plan.sources, cfg.slices[0].sources[0].model)]
    for name in first.files.tensors:
        if not LAYER_RE.match(name):
            (pre if ("embed" in name or name.endswith(("wte.weight", "wpe.weight"))) else post).append(name)

    def slice_ctx(sl: OutputSlice) -> tuple[list[int], bool, dict[int, InputSlice], list[list[Parameters | None]]]:
        base_ref = sl.base_model or cfg.base_model
        members, has_base = _members(plan, [s.model for s in sl.sources], base_ref)
        by = {_source_index(plan.sources, s.model): s for s in sl.sources}
        scopes = [[by[m].parameters if m in by else None, sl.parameters, cfg.parameters] for m in members]
        return members, has_base, by, scopes

    def non_layer(names: list[str], sl: OutputSlice) -> None:
        members, has_base, _, scopes = slice_ctx(sl)
        for name in names:
            plan.tensors.append(_make(plan, name, [name] * len(members), members, has_base,
                                      [sl.parameters, cfg.parameters], scopes, 0.0, tok))

    non_layer(pre, cfg.slices[0])
    layer_types: list[Any] = []
    for si, sl in enumerate(cfg.slices):
        lengths = {s.layer_range[1] - s.layer_range[0] for s in sl.sources}
        if len(lengths) != 1:
            raise ConfigError(f"{plan.config_path}: slices[{si}]: all sources must span the same number of layers")
        n = lengths.pop()
        members, has_base, by, scopes = slice_ctx(sl)
        _check_counts(plan, len(members) - (1 if has_base else 0), f"slices[{si}]")
        for s in sl.sources:
            src = plan.sources[_source_index(plan.sources, s.model)]
            if not 0 <= s.layer_range[0] < s.layer_range[1] <= _n_layers(src):
                raise ConfigError(f"{plan.config_path}: slices[{si}]: layer_range {list(s.layer_range)} is outside "
                                  f"{src.label}'s {_n_layers(src)} layers")
        lead = plan.sources[members[0]]
        for j in range(n):
            t = j / (n - 1) if n > 1 else 1.0
            in_layers = []
            for m in members:
                s = by.get(m) or sl.sources[0]
                in_layers.append(s.layer_range[0] + j)
            lt = lead.config.get("layer_types")
            if isinstance(lt, list) and in_layers[0] < len(lt):
                layer_types.append(lt[in_layers[0]])
            prefix = f"layers.{in_layers[0]}."
            for name in lead.files.tensors:
                mt = LAYER_RE.match(name)
                if not mt or int(mt.group(2)) != in_layers[0]:
                    continue
                assert prefix in name
                suffix = mt.group(3)
                in_names = [f"{mt.group(1)}{li}{suffix}" for li in in_layers]
                out_name = f"{mt.group(1)}{out_layer}{suffix}"
                plan.tensors.append(_make(plan, out_name, in_names, members, has_base,
                                          [sl.parameters, cfg.parameters], scopes, t, tok))
            out_layer += 1
    non_layer(post, cfg.slices[-1])
    plan.out_config = dict(first.config)
    plan.out_config["num_hidden_layers"] = out_layer
    if tok.get("n_rows") and tok.get("remap"):
        plan.out_config["vocab_size"] = tok["n_rows"]
    if layer_types:
        plan.out_config["layer_types"] = layer_types

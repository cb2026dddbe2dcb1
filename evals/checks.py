"""Cheap structural checks shared by the inline gates (gateway hot path) and the offline runner.

Contract: pure functions over plain JSON values; no numpy, no jsonschema (its import and
validation are far too slow for the hot path). JSON Schemas are compiled once with
fastjsonschema and cached by the schema's canonical JSON, so the same schema sent in every
request costs one dict lookup after the first call. A schema that does not compile is the
caller's error and raises `EvalInputError`.

Scoring (documented here because both callers rely on it):
  JSON  = 0.3 syntax + 0.5 schema conformance + 0.2 completeness, where completeness is the
          share of the schema's required (else declared) top-level keys present and non-empty.
          Unparseable text scores 0 whatever else holds.
  tool call = 0.5 offered name (and the forced one when tool_choice names a function)
              + 0.2 arguments parse as a JSON object + 0.3 arguments validate against the
              tool's `parameters` schema. An unknown tool name scores 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastjsonschema
import orjson

from evals.result import EvalInputError

_CACHE: dict[bytes, Callable[[Any], Any]] = {}
_CACHE_MAX = 2048


def compiled(schema: Any) -> Callable[[Any], Any]:
    """A validator for `schema` (raises fastjsonschema.JsonSchemaValueException on bad data)."""
    if not isinstance(schema, dict):
        raise EvalInputError(f"a JSON Schema must be an object, got {type(schema).__name__}")
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    fn = _CACHE.get(key)
    if fn is None:
        try:
            fn = fastjsonschema.compile(schema)
        except fastjsonschema.JsonSchemaDefinitionException as exc:
            raise EvalInputError(f"invalid JSON Schema: {exc}") from None
        if len(_CACHE) >= _CACHE_MAX:  # bounded: a client sending random schemas can't grow us
            _CACHE.clear()
        _CACHE[key] = fn
    return fn


def validate(schema: Any, value: Any) -> str | None:
    """None when `value` conforms to `schema`, else a short description of the first error."""
    try:
        compiled(schema)(value)
    except fastjsonschema.JsonSchemaValueException as exc:
        return str(exc.message)
    return None


def _empty(v: Any) -> bool:
    return v is None or v == "" or v == [] or v == {}


def completeness(schema: dict[str, Any] | None, value: Any) -> float:
    if not isinstance(value, dict):
        return 1.0 if schema is not None and schema.get("type") not in (None, "object") else 0.0
    if schema is None:
        return 0.0 if not value else 1.0
    keys = schema.get("required") or list((schema.get("properties") or {}).keys())
    if not keys:
        return 1.0
    return sum(1 for k in keys if k in value and not _empty(value[k])) / len(keys)


def score_json(text: Any, schema: dict[str, Any] | None, *, require_object: bool = False) -> tuple[float, str]:
    """Score a model's text as JSON against an optional schema. Returns (score, reason)."""
    if text is None or text == "":
        return 0.0, "no content to parse as JSON"
    if not isinstance(text, str):
        raise EvalInputError(f"JSON content must be a string, got {type(text).__name__}")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return 0.0, f"not valid JSON ({str(exc).split(':')[0]})"
    if schema is not None:
        err = validate(schema, value)
    elif require_object and not isinstance(value, dict):
        err = f"expected a JSON object, got {type(value).__name__}"
    else:
        err = None
    comp = completeness(schema, value)
    score = 0.3 + (0.0 if err else 0.5) + 0.2 * comp
    if err:
        return score, f"JSON does not match the schema: {err}"
    if comp < 1.0:
        return score, f"valid JSON but only {comp:.0%} of the expected fields are filled"
    return score, "valid JSON matching the schema" if schema is not None else "valid JSON object"


def tools_index(tools: Any) -> dict[str, dict[str, Any]]:
    """name -> parameters schema for an OpenAI `tools` list; malformed lists raise."""
    if not isinstance(tools, list) or not tools:
        raise EvalInputError("`tools` must be a non-empty list of {type: function, function: {name, parameters}}")
    out: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(fn, dict) or not isinstance(name, str) or not name:
            raise EvalInputError(f"tools[{i}] has no function.name")
        params = fn.get("parameters") or {"type": "object"}
        if not isinstance(params, dict):
            raise EvalInputError(f"tools[{i}] ({name}): function.parameters must be a JSON Schema object")
        out[name] = params
    return out


def message_of(response: Any) -> dict[str, Any]:
    """choices[0].message of an OpenAI chat completion body (raises when the body has none)."""
    try:
        msg = response["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise EvalInputError("response has no choices[0].message (not an OpenAI chat completion body)") from None
    if not isinstance(msg, dict):
        raise EvalInputError("choices[0].message must be an object")
    return msg


def tool_calls_of(message: dict[str, Any]) -> list[tuple[str, Any]]:
    """[(name, raw arguments)] from message.tool_calls (or the legacy function_call)."""
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise EvalInputError("message.tool_calls must be a list")
    out: list[tuple[str, Any]] = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict):
            raise EvalInputError("each tool call needs a `function` object")
        out.append((str(fn.get("name") or ""), fn.get("arguments")))
    legacy = message.get("function_call")
    if not out and isinstance(legacy, dict):
        out.append((str(legacy.get("name") or ""), legacy.get("arguments")))
    return out


def parse_arguments(raw: Any) -> dict[str, Any] | None:
    """Tool-call arguments as a dict, or None when they are not a JSON object."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str | bytes):
        return None
    try:
        value = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def score_tool_call(
    name: str, raw_args: Any, index: dict[str, dict[str, Any]], forced: str | None = None
) -> tuple[float, str, dict[str, Any] | None]:
    """Score one call against the offered tools. Returns (score, reason, parsed arguments)."""
    if name not in index:
        return 0.0, f"called {name!r}, which was not offered", None
    if forced is not None and name != forced:
        return 0.0, f"called {name!r} but tool_choice requires {forced!r}", None
    args = parse_arguments(raw_args)
    if args is None:
        return 0.5, f"{name}: arguments are not a JSON object", None
    err = validate(index[name], args)
    if err:
        return 0.7, f"{name}: arguments do not match its schema: {err}", args
    return 1.0, f"{name} called with valid arguments", args

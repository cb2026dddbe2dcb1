"""Load a policy file: YAML -> validated `Policy`, with errors that name the line and field.

`load_policy(path)` either returns a fully validated Policy or raises `PolicyError`, whose
message lists every problem as `FILE:LINE: field.path: what is wrong`. Nothing is half-loaded,
so a caller (hot reload) can keep its old policy when this raises.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.policy.schema import CallerKey, Policy

_ITEM_RE = re.compile(r"\b(routes|cohorts|models|upstreams)\[(\d+)\]")


class PolicyError(Exception):
    """A policy file could not be read, parsed or validated. `problems` holds one line each."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"invalid policy {path}:\n" + "\n".join(f"  {p}" for p in problems))


def _line_map(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), out)
            out[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out)


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    # pydantic locations may carry extra parts (union tags, model names): walk back to the
    # longest prefix that exists in the YAML.
    parts = tuple(loc)
    while parts:
        if parts in lines:
            return lines[parts]
        parts = parts[:-1]
    return lines.get((), None)


def parse_policy_text(text: str, source: str = "<policy>") -> Policy:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, [f"{where}: YAML syntax error: {problem}"]) from None
    if node is None or not isinstance(data, dict):
        raise PolicyError(source, [f"{source}:1: the policy must be a YAML mapping (upstreams, models, routes, ...)"])
    lines: dict[tuple[Any, ...], int] = {}
    _line_map(node, (), lines)
    data = _merge_keys_file(data, source)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "(top level)"
            line = _line_for(loc, lines)
            if not loc:
                # cross-field checks run on the whole policy; they name the item as `routes[2]`
                m = _ITEM_RE.search(err["msg"])
                if m:
                    line = lines.get((m.group(1), int(m.group(2))), line)
            where = f"{source}:{line}" if line else source
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling; see policies/schema.json)"
            elif err["type"] == "missing":
                msg = "required field is missing"
            problems.append(f"{where}: {field}: {msg}")
        raise PolicyError(source, problems) from None


def load_policy(path: str | os.PathLike[str]) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(p), [f"{p}: cannot read: {exc.strerror or exc}"]) from None
    return parse_policy_text(text, str(p))


def _merge_keys_file(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Append caller keys from the file named by auth.keys_file_env (e.g. a mounted Secret)."""
    auth = data.get("auth")
    if not isinstance(auth, dict) or not auth.get("keys_file_env"):
        return data
    env = str(auth["keys_file_env"])
    fname = os.environ.get(env)
    if not fname:
        raise PolicyError(source, [f"{source}: auth.keys_file_env: environment variable {env} is not set"])
    try:
        extra = yaml.safe_load(Path(fname).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(source, [f"{fname}: cannot read caller keys file ({env}): {exc}"]) from None
    keys = extra.get("keys", extra) if isinstance(extra, dict) else extra
    if not isinstance(keys, list):
        raise PolicyError(source, [f"{fname}: expected a list of keys (name, sha256, models, cohorts)"])
    problems = []
    for i, k in enumerate(keys):
        try:
            CallerKey.model_validate(k)
        except ValidationError as exc:
            problems.append(f"{fname}: keys[{i}]: {exc.errors(include_url=False)[0]['msg']}")
    if problems:
        raise PolicyError(source, problems)
    merged = dict(data)
    merged["auth"] = {**auth, "keys": list(auth.get("keys") or []) + keys}
    return merged

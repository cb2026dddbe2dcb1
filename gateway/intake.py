"""Turn a raw HTTP request into a `ClientRequest`: body limit, auth, JSON, field checks.

Everything here runs before any upstream is contacted and raises `ClientError`s with the
offending field named, so a bad request costs microseconds and never reaches a model server.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.auth import Caller
from gateway.errors import InvalidRequest, NotFound, PayloadTooLarge
from gateway.request import ClientRequest

_REQUIRED: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "chat": ("messages", list),
    "text_completion": ("prompt", (str, list)),
    "embeddings": ("input", (str, list)),
}


async def read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None:
        if length > limit:
            raise PayloadTooLarge(f"Request body is {length} bytes; the limit is {limit} bytes.")
        return await request.content.readexactly(length) if length else b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(raw: bytes, operation: str) -> dict[str, Any]:
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model")
    field, kind = _REQUIRED[operation]
    value = body.get(field)
    if value is None:
        raise InvalidRequest(f"'{field}' is required.", param=field)
    if not isinstance(value, kind):
        raise InvalidRequest(f"'{field}' has the wrong type.", param=field)
    if operation == "chat":
        messages: list[Any] = value  # type: ignore[assignment]  # checked by isinstance above
        if not messages:
            raise InvalidRequest("'messages' must not be empty.", param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise InvalidRequest(f"'messages[{i}]' must be an object with a 'role'.", param=f"messages[{i}]")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    if stream and operation == "embeddings":
        raise InvalidRequest("Embeddings cannot be streamed.", param="stream")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be a list.", param="tools")
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, dict) and isinstance(rf.get("type"), str)):
        raise InvalidRequest("'response_format' must be an object with a 'type'.", param="response_format")
    return body


def build_request(request: web.Request, path: str, operation: str, body: dict[str, Any], caller: Caller,
                  aliases: frozenset[str]) -> ClientRequest:
    alias = body["model"]
    if alias not in aliases or not caller.may_use_model(alias):
        raise NotFound(f"The model '{alias}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    return ClientRequest(path=path, operation=operation, body=body, headers=request.headers,
                         key_name=caller.name, alias=alias, stream=bool(body.get("stream", False)))

"""Hosted providers (Anthropic, Azure OpenAI, Bedrock, ...) as upstreams, through litellm.

litellm is an optional extra (`cohortgate[providers]`) imported lazily, in a worker thread at
start-up (its import takes seconds), and only when a policy has a `kind: litellm` upstream:
OpenAI-compatible upstreams never touch it. Requests and responses stay in OpenAI's shape on
both sides: litellm translates to the provider's own API and back. Its exceptions are mapped to
the gateway taxonomy here, so fallback behaves exactly as with HTTP upstreams.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import (
    GatewayError,
    UpstreamBadResponse,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    redact,
)
from gateway.health import Health
from gateway.policy.schema import Upstream
from gateway.upstream.base import UpstreamResponse

_DROP = {"model", "stream", "stream_options"}


def _import_litellm() -> Any:
    # No network at start-up: use the bundled model-cost map instead of fetching it.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    try:
        import litellm
    except ImportError as exc:
        raise RuntimeError("a `kind: litellm` upstream needs the providers extra: "
                           "pip install 'cohortgate[providers]'") from exc
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


class LiteLLMUpstream:
    def __init__(self, name: str, spec: Upstream) -> None:
        self.name = name
        self.spec = spec
        self.health = Health(spec.health)
        self._key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        self._lib: Any = None
        self.address = spec.base_url.split("//", 1)[-1].split("/", 1)[0].split(":")[0]

    def secrets(self) -> list[str]:
        return [self._key] if self._key else []

    async def start(self) -> None:
        if self._lib is None:
            self._lib = await asyncio.get_running_loop().run_in_executor(None, _import_litellm)

    async def close(self) -> None:
        return None

    def _kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        kw = {k: v for k, v in body.items() if k not in _DROP}
        kw.update(model=self.spec.model, api_base=self.spec.base_url, timeout=self.spec.timeouts.total,
                  num_retries=0, drop_params=True)
        if self._key:
            kw["api_key"] = self._key
        if self.spec.extra_headers:
            kw["extra_headers"] = dict(self.spec.extra_headers)
        return kw

    def _map(self, exc: BaseException) -> GatewayError:
        lib = self._lib
        status = getattr(exc, "status_code", None)
        text = redact(str(exc)[:300], self.secrets())
        if isinstance(exc, GatewayError):
            return exc
        if isinstance(exc, lib.exceptions.RateLimitError) or status == 429:
            return UpstreamRateLimited(f"upstream {self.name} is rate limiting: {text}")
        if isinstance(exc, lib.exceptions.Timeout | asyncio.TimeoutError | TimeoutError):
            return UpstreamTimeout(f"upstream {self.name}: timeout")
        if isinstance(exc, lib.exceptions.APIConnectionError):
            return UpstreamUnavailable(f"upstream {self.name}: connection failed: {text}")
        if isinstance(status, int) and 400 <= status < 500:
            body = orjson.dumps({"error": {"message": text, "type": "invalid_request_error", "param": None,
                                           "code": status}})
            return UpstreamRejected(status, body)
        if isinstance(status, int) and status >= 500:
            return UpstreamUnavailable(f"upstream {self.name} answered {status}: {text}", code=f"upstream_{status}")
        return UpstreamBadResponse(f"upstream {self.name}: {type(exc).__name__}: {text}")

    async def complete(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> UpstreamResponse:
        await self.start()
        try:
            if path == "/embeddings":
                resp = await self._lib.aembedding(**self._kwargs(body))
            elif path == "/chat/completions":
                resp = await self._lib.acompletion(**self._kwargs(body), stream=False)
            else:
                raise UpstreamRejected(400, orjson.dumps({"error": {
                    "message": f"{path} is not supported by the litellm upstream {self.name}",
                    "type": "invalid_request_error", "param": None, "code": "unsupported"}}))
            data = resp.model_dump(exclude_none=False)
        except Exception as exc:
            raise self._map(exc) from None
        return UpstreamResponse(200, orjson.dumps(data), data)

    async def open_stream(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> LiteLLMStream:
        await self.start()
        if path != "/chat/completions":
            raise UpstreamRejected(400, orjson.dumps({"error": {
                "message": f"streaming {path} is not supported by the litellm upstream {self.name}",
                "type": "invalid_request_error", "param": None, "code": "unsupported"}}))
        try:
            wrapper = await self._lib.acompletion(**self._kwargs(body), stream=True,
                                                  stream_options={"include_usage": True})
        except Exception as exc:
            raise self._map(exc) from None
        return LiteLLMStream(wrapper, self)


class LiteLLMStream:
    """litellm's chunk objects re-encoded as OpenAI SSE events, ending with [DONE]."""

    def __init__(self, wrapper: Any, owner: LiteLLMUpstream) -> None:
        self._wrapper = wrapper
        self._owner = owner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._wrapper:
                data = chunk.model_dump(exclude_none=True)
                if "choices" not in data:
                    data["choices"] = []
                yield b"data: " + orjson.dumps(data) + b"\n\n"
        except Exception as exc:
            raise self._owner._map(exc) from None
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        close = getattr(self._wrapper, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception:
                pass

"""OpenAI-compatible upstream over HTTP (vLLM and friends) with one keep-alive pool (h1.py).

Failures map to the gateway taxonomy here and in h1.py, nowhere else: connect/first-byte/total
timeouts -> UpstreamTimeout, refused/reset -> UpstreamUnavailable, 5xx -> UpstreamUnavailable,
429 -> UpstreamRateLimited (with Retry-After), other 4xx -> UpstreamRejected (passed through, no
fallback), a 200 whose body is not JSON or is cut short -> UpstreamBadResponse. Upstream error
text is redacted of the upstream key before it is quoted.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.errors import (
    GatewayError,
    UpstreamBadResponse,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
    redact,
)
from gateway.health import Health
from gateway.policy.schema import Upstream
from gateway.upstream.base import UpstreamResponse
from gateway.upstream.h1 import H1Pool, H1Response


def _retry_after(headers: dict[str, str]) -> float | None:
    v = headers.get("retry-after")
    if v is None:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        return None  # HTTP-date form: treat as "not soon"


class OpenAIHTTPUpstream:
    def __init__(self, name: str, spec: Upstream) -> None:
        self.name = name
        self.spec = spec
        self.health = Health(spec.health)
        self._key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        self._headers = {"content-type": "application/json", **spec.extra_headers}
        if self._key:
            self._headers["authorization"] = f"Bearer {self._key}"
        self._pool: H1Pool | None = None
        parts = urlsplit(spec.base_url)
        self._prefix = parts.path.rstrip("/")  # e.g. /v1; probe paths are origin-relative
        self.address = parts.hostname or ""  # server.address / server.port on spans
        self.port = parts.port or (443 if parts.scheme == "https" else 80)

    def secrets(self) -> list[str]:
        return [self._key] if self._key else []

    async def start(self) -> None:
        if self._pool is None:
            t = self.spec.timeouts
            self._pool = H1Pool(self.name, self.spec.base_url, self.spec.max_connections, t.connect, t.first_byte,
                                t.total, self._headers)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _started(self) -> H1Pool:
        if self._pool is None:
            raise UpstreamUnavailable(f"upstream {self.name} is not started")
        return self._pool

    async def _error_for(self, resp: H1Response) -> GatewayError:
        try:
            raw = await resp.read()
        except GatewayError:  # the error body itself may be cut; the status is what matters
            raw = b""
        text = redact(raw[:300].decode("utf-8", "replace"), self.secrets())
        if resp.status == 429:
            return UpstreamRateLimited(f"upstream {self.name} is rate limiting: {text}",
                                       retry_after=_retry_after(resp.headers))
        if resp.status >= 500:
            return UpstreamUnavailable(f"upstream {self.name} answered {resp.status}: {text}",
                                       code=f"upstream_{resp.status}")
        return UpstreamRejected(resp.status, redact(raw.decode("utf-8", "replace"), self.secrets()).encode()
                                if raw else orjson.dumps({"error": {"message": f"upstream status {resp.status}",
                                                                    "type": "invalid_request_error",
                                                                    "param": None, "code": None}}))

    async def complete(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> UpstreamResponse:
        resp = await self._started().request("POST", self._prefix + path, orjson.dumps(body), headers)
        if resp.status != 200:
            raise await self._error_for(resp)
        try:
            raw = await resp.read()
        except UpstreamUnavailable as exc:  # cut after the status line: a broken answer, not a refusal
            raise UpstreamBadResponse(f"upstream {self.name}: response body broken ({exc.message})") from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse(f"upstream {self.name} returned a body that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamBadResponse(f"upstream {self.name} returned JSON that is not an object")
        return UpstreamResponse(200, raw, data)

    async def open_stream(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> HTTPStream:
        resp = await self._started().request("POST", self._prefix + path, orjson.dumps(body), headers)
        if resp.status != 200:
            raise await self._error_for(resp)
        return HTTPStream(resp, self.name)

    async def probe(self) -> bool:
        if not self.spec.health.probe_path or self._pool is None:
            return True
        t = self.spec.health.probe_timeout_s
        try:
            resp = await self._pool.request("GET", self.spec.health.probe_path, read_timeout=t, total_timeout=t)
            await resp.read()
            return resp.status < 500
        except GatewayError:
            return False


class HTTPStream:
    """Raw SSE bytes from the upstream, as they arrive; a cut stream raises UpstreamBadResponse."""

    __slots__ = ("_resp", "_name")

    def __init__(self, resp: H1Response, name: str) -> None:
        self._resp = resp
        self._name = name

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp:
                yield chunk
        except UpstreamUnavailable as exc:
            raise UpstreamBadResponse(f"upstream {self._name}: stream broken ({exc.message})") from None

    async def aclose(self) -> None:
        self._resp.release()

"""OpenAI-compatible upstream over HTTP (vLLM and friends) with one pooled aiohttp session.

Transport errors are mapped to the gateway taxonomy here and nowhere else:
connect/first-byte/total timeouts -> UpstreamTimeout, refused/reset -> UpstreamUnavailable,
5xx -> UpstreamUnavailable, 429 -> UpstreamRateLimited (with Retry-After), other 4xx ->
UpstreamRejected (passed through, no fallback), a 200 with a body that is not JSON ->
UpstreamBadResponse. Upstream error text is redacted of the upstream key before it is quoted.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
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


def _retry_after(headers: Any) -> float | None:
    v = headers.get("retry-after")
    if v is None:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        return None  # HTTP-date form: treat as "not soon"


def map_transport_error(exc: BaseException, upstream: str) -> GatewayError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(f"upstream {upstream}: connect timeout", code="upstream_connect_timeout")
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return UpstreamTimeout(f"upstream {upstream}: no data within the first-byte timeout",
                               code="upstream_read_timeout")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return UpstreamTimeout(f"upstream {upstream}: total timeout exceeded", code="upstream_total_timeout")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamBadResponse(f"upstream {upstream}: response body broken ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamUnavailable(f"upstream {upstream}: connection failed ({type(exc).__name__})")
    return UpstreamBadResponse(f"upstream {upstream}: unexpected failure ({type(exc).__name__})")


class OpenAIHTTPUpstream:
    def __init__(self, name: str, spec: Upstream) -> None:
        self.name = name
        self.spec = spec
        self.health = Health(spec.health)
        self._key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        self._headers = {"content-type": "application/json", **spec.extra_headers}
        if self._key:
            self._headers["authorization"] = f"Bearer {self._key}"
        t = spec.timeouts
        self._timeout = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.first_byte)
        self._session: aiohttp.ClientSession | None = None
        parts = urlsplit(spec.base_url)
        self.address = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._origin = f"{parts.scheme}://{parts.netloc}"

    def secrets(self) -> list[str]:
        return [self._key] if self._key else []

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.spec.max_connections, limit_per_host=self.spec.max_connections,
                                             keepalive_timeout=60, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  skip_auto_headers=("User-Agent",),
                                                  json_serialize=lambda o: orjson.dumps(o).decode())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_or_start(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamUnavailable(f"upstream {self.name} is not started")
        return self._session

    def _merge_headers(self, extra: dict[str, str]) -> dict[str, str]:
        if not extra:
            return self._headers
        return {**self._headers, **extra}

    async def _error_for(self, resp: aiohttp.ClientResponse) -> GatewayError:
        try:
            raw = await resp.read()
        except Exception:  # the error body itself may be cut; the status is what matters
            raw = b""
        text = redact(raw[:300].decode("utf-8", "replace"), self.secrets())
        if resp.status == 429:
            return UpstreamRateLimited(f"upstream {self.name} is rate limiting: {text}",
                                       retry_after=_retry_after(resp.headers))
        if resp.status >= 500:
            err = UpstreamUnavailable(f"upstream {self.name} answered {resp.status}: {text}",
                                      code=f"upstream_{resp.status}")
            return err
        return UpstreamRejected(resp.status, redact(raw.decode("utf-8", "replace"), self.secrets()).encode()
                                if raw else orjson.dumps({"error": {"message": f"upstream status {resp.status}",
                                                                    "type": "invalid_request_error",
                                                                    "param": None, "code": None}}))

    async def complete(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> UpstreamResponse:
        session = self._session_or_start()
        url = self.spec.base_url + path
        try:
            async with session.post(url, data=orjson.dumps(body), headers=self._merge_headers(headers),
                                    timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise await self._error_for(resp)
                raw = await resp.read()
        except GatewayError:
            raise
        except Exception as exc:
            raise map_transport_error(exc, self.name) from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse(f"upstream {self.name} returned a body that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamBadResponse(f"upstream {self.name} returned JSON that is not an object")
        return UpstreamResponse(200, raw, data)

    async def open_stream(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> HTTPStream:
        session = self._session_or_start()
        url = self.spec.base_url + path
        cm = session.post(url, data=orjson.dumps(body), headers=self._merge_headers(headers), timeout=self._timeout)
        try:
            resp = await cm.__aenter__()
        except Exception as exc:
            raise map_transport_error(exc, self.name) from None
        if resp.status != 200:
            try:
                raise await self._error_for(resp)
            finally:
                resp.release()
        return HTTPStream(resp, self.name)

    async def probe(self) -> bool:
        if not self.spec.health.probe_path or self._session is None:
            return True
        try:
            async with self._session.get(self._origin + self.spec.health.probe_path,
                                         timeout=aiohttp.ClientTimeout(total=self.spec.health.probe_timeout_s)) as r:
                await r.read()
                return r.status < 500
        except Exception:
            return False


class HTTPStream:
    """Raw SSE bytes from the upstream, as they arrive. Errors are mapped like `complete`'s."""

    __slots__ = ("_resp", "_name")

    def __init__(self, resp: aiohttp.ClientResponse, name: str) -> None:
        self._resp = resp
        self._name = name

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except Exception as exc:
            raise map_transport_error(exc, self._name) from None

    async def aclose(self) -> None:
        self._resp.release()
        self._resp.close()

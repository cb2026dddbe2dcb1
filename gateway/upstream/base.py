"""The interface every upstream client implements.

`complete` returns a whole response or raises a `GatewayError` subclass; `open_stream` returns
once the upstream has accepted the stream (status 200), so a failure before that point is an
exception the caller can fall back on. Neither ever returns the upstream key to the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.health import Health
from gateway.policy.schema import Upstream


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    raw: bytes  # the body exactly as the upstream sent it
    data: dict[str, Any]  # parsed JSON


class UpstreamStream(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


class UpstreamClient(Protocol):
    name: str
    spec: Upstream
    health: Health

    async def complete(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> UpstreamResponse: ...
    async def open_stream(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> UpstreamStream: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def secrets(self) -> list[str]: ...

"""Fixtures: real fake upstreams and a real gateway, each on a free 127.0.0.1 port.

Servers run in one background event loop thread (uvloop) so tests can drive them over real
HTTP with the openai SDK, httpx or urllib while inspecting the fakes' state directly.
"""

from __future__ import annotations

import asyncio
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web

from gateway.app import make_app
from gateway.bootstrap import create_state
from gateway.fakeupstream import FakeState
from gateway.fakeupstream import make_app as make_fake_app
from gateway.state import AppState
from tests.helpers import free_port


class LoopThread:
    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@dataclass
class Fake:
    name: str
    port: int
    state: FakeState
    runner: web.AppRunner

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def set(self, fault: str = "none", rate: float = 1.0, **kw: Any) -> None:
        self.state.fault, self.state.rate = fault, rate
        for k, v in kw.items():
            setattr(self.state, k, v)

    def seen(self) -> list[dict[str, Any]]:
        return list(self.state.seen)


@dataclass
class Gateway:
    port: int
    state: AppState
    runner: web.AppRunner
    policy_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


async def _start(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.fixture
def fake(loop_thread: LoopThread) -> Iterator[Callable[..., Fake]]:
    started: list[Fake] = []

    def factory(name: str, fault: str = "none", rate: float = 1.0, **kw: Any) -> Fake:
        st = FakeState(name, fault, rate, **kw)
        port = free_port()
        runner = loop_thread.run(_start(make_fake_app(st), port))
        f = Fake(name, port, st, runner)
        started.append(f)
        return f

    yield factory
    for f in started:
        loop_thread.run(f.runner.cleanup())


@pytest.fixture
def gateway(loop_thread: LoopThread, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def factory(policy_yaml: str, watch: bool = True, configure: Callable[[AppState], None] | None = None) -> Gateway:
        path = tmp_path / f"policy-{len(started)}.yaml"
        path.write_text(textwrap.dedent(policy_yaml))

        async def boot() -> tuple[web.AppRunner, AppState, int]:
            state = create_state(str(path))
            if configure is not None:
                configure(state)
            app = make_app(state, watch_policy=watch)
            port = free_port()
            return await _start(app, port), state, port

        runner, state, port = loop_thread.run(boot())
        g = Gateway(port, state, runner, path)
        started.append(g)
        return g

    yield factory
    for g in started:
        loop_thread.run(g.runner.cleanup())


def policy(upstreams: dict[str, str], routes: str, cohorts: str = "", extra: str = "",
           upstream_opts: str = "timeouts: {connect: 1, first_byte: 2, total: 5}") -> str:
    """Build a policy YAML: upstreams name -> base_url (fake's url), with the given routes/cohorts."""
    ups = "\n".join(
        f"  {n}:\n    base_url: {u}\n    model: {n}-served\n    {upstream_opts}" for n, u in upstreams.items()
    )
    text = f"version: 1\nupstreams:\n{ups}\nmodels:\n  - name: m\n  - name: m2\n"
    if cohorts:
        text += "cohorts:\n" + textwrap.indent(textwrap.dedent(cohorts).strip("\n"), "  ") + "\n"
    text += "routes:\n" + textwrap.indent(textwrap.dedent(routes).strip("\n"), "  ") + "\n"
    if extra:
        text += textwrap.dedent(extra)
    return text

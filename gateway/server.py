"""Run the gateway: one process, or N worker processes sharing the port (SO_REUSEPORT).

With `workers > 1` the parent sets PROMETHEUS_MULTIPROC_DIR (a fresh temp dir) before any
worker imports prometheus_client, forks the workers, forwards SIGTERM/SIGINT/SIGHUP to them and
exits when they do. Each worker watches the policy file itself.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import signal
import sys
import tempfile
from typing import Any

log = logging.getLogger("cohortgate.server")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _use_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a core dependency on Linux/macOS
        pass


def run_worker(policy_path: str, host: str, port: int, reuse_port: bool, log_level: str) -> None:
    setup_logging(log_level)
    _use_uvloop()
    from aiohttp import web

    from gateway.app import make_app
    from gateway.bootstrap import create_state

    state = create_state(policy_path)
    app = make_app(state)
    web.run_app(app, host=host, port=port, access_log=None, backlog=4096, print=None,
                reuse_port=reuse_port, handle_signals=True, shutdown_timeout=10)


def serve(policy_path: str, host: str, port: int, workers: int, log_level: str = "INFO") -> int:
    if workers <= 1:
        run_worker(policy_path, host, port, False, log_level)
        return 0
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="cohortgate-prom-")
    ctx = mp.get_context("fork")
    procs: list[Any] = []
    for _ in range(workers):
        p = ctx.Process(target=run_worker, args=(policy_path, host, port, True, log_level), daemon=False)
        p.start()
        procs.append(p)

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.pid and p.is_alive():
                os.kill(p.pid, signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    code = 0
    for p in procs:
        p.join()
        code = code or (p.exitcode or 0)
    return code

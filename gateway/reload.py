"""Hot reload of the policy file: on change (polled mtime/size/inode) or SIGHUP.

The new file is parsed, validated and compiled completely before it replaces the running
runtime in one assignment; a bad file is rejected, logged with its line-numbered problems,
counted (`cohortgate_policy_reloads_total{result="rejected"}`), and the old policy keeps serving.
Upstream clients that did not change keep their connection pools and health state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

from gateway.policy.loader import PolicyError, load_policy
from gateway.runtime import build_runtime
from gateway.state import AppState

log = logging.getLogger("cohortgate.reload")


def _stamp(path: str) -> tuple[Any, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def reload_policy(state: AppState, semantic_factory: Any = None) -> bool:
    path = state.policy_path
    if path is None:
        return False
    loop = asyncio.get_running_loop()
    try:
        policy = await loop.run_in_executor(None, load_policy, path)
        semantic = (await loop.run_in_executor(None, semantic_factory, policy)
                    if semantic_factory is not None else None)
        new = build_runtime(policy, path, state.runtime, semantic)
        for c in new.new_clients:
            await c.start()
    except PolicyError as exc:
        state.metrics.reloads.inc(("rejected",))
        log.error("policy reload rejected; the previous policy keeps serving.\n%s", exc)
        return False
    except Exception as exc:  # e.g. a semantic classifier that cannot be built from the new examples
        state.metrics.reloads.inc(("rejected",))
        log.error("policy reload failed (%s: %s); the previous policy keeps serving.", type(exc).__name__, exc)
        return False
    state.runtime = new
    state.metrics.reloads.inc(("ok",))
    log.info("policy reloaded from %s: %d upstreams, %d cohorts, %d routes", path, len(policy.upstreams),
             len(policy.cohorts), len(policy.routes))
    if state.feedback is not None:  # the feedback table's bounds follow the policy too
        state.feedback.ttl_s = policy.server.feedback_ttl_s
        state.feedback.max_entries = policy.server.feedback_max_entries
    # in-flight requests hold their own snapshot; give them time before closing dropped pools
    if new.dropped_clients:
        async def close_later() -> None:
            await asyncio.sleep(max(c.spec.timeouts.total for c in new.dropped_clients))
            for c in new.dropped_clients:
                await c.close()

        state.spawn(close_later())
    return True


async def watch(state: AppState, interval: float = 1.0, semantic_factory: Any = None) -> None:
    """Poll the policy file; also reload on SIGHUP. Runs until cancelled."""
    path = state.policy_path
    if path is None:
        return
    loop = asyncio.get_running_loop()
    hup = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGHUP, hup.set)
    except (NotImplementedError, RuntimeError, ValueError):
        pass  # not the main thread / not supported: file polling still works
    last = _stamp(path)
    while True:
        try:
            await asyncio.wait_for(hup.wait(), timeout=interval)
        except TimeoutError:
            pass
        current = _stamp(path)
        if hup.is_set() or (current is not None and current != last):
            hup.clear()
            last = current
            await reload_policy(state, semantic_factory)

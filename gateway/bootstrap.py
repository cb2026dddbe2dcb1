"""Build the AppState for a policy file: load, compile, attach the optional features it uses."""

from __future__ import annotations

import logging

from gateway.circuits import Circuits
from gateway.gates import Gates
from gateway.policy.loader import load_policy
from gateway.runtime import build_runtime
from gateway.state import AppState

log = logging.getLogger("cohortgate")


def create_state(policy_path: str) -> AppState:
    policy = load_policy(policy_path)
    runtime = build_runtime(policy, policy_path)
    state = AppState(runtime, policy_path)
    state.gates = Gates()
    state.circuits = Circuits(state.metrics)
    if runtime.auth.open:
        log.warning("no caller API keys configured: the gateway accepts every caller (bind to loopback only)")
    return state

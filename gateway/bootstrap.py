"""Build the AppState for a policy file: load, compile, attach the optional features it uses."""

from __future__ import annotations

import logging

from gateway.circuits import Circuits
from gateway.feedback import FeedbackStore
from gateway.gates import Gates
from gateway.mirror import Mirror
from gateway.policy.loader import load_policy
from gateway.runtime import build_runtime
from gateway.semantic import build_semantic
from gateway.state import AppState
from gateway.tracing import Tracing

log = logging.getLogger("cohortgate")


def create_state(policy_path: str) -> AppState:
    policy = load_policy(policy_path)
    runtime = build_runtime(policy, policy_path, semantic=build_semantic(policy))
    state = AppState(runtime, policy_path)
    state.semantic_factory = build_semantic
    state.gates = Gates()
    state.circuits = Circuits(state.metrics)
    state.feedback = FeedbackStore(state.metrics, policy.server.feedback_ttl_s, policy.server.feedback_max_entries)
    state.mirror = Mirror(state)
    state.features.append(state.mirror)
    try:
        state.tracing = Tracing.from_env(state)  # None (zero cost) unless OTEL_EXPORTER_OTLP_* is set
    except RuntimeError as exc:  # a bad OTEL_* setting: serve without traces, say how to fix it
        log.error("tracing disabled: %s", exc)
    if state.tracing is not None:
        state.features.append(state.tracing)
    if runtime.auth.open:
        log.warning("no caller API keys configured: the gateway accepts every caller (bind to loopback only)")
    return state

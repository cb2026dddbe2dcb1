"""A policy compiled for serving: one immutable snapshot swapped atomically on reload.

`build_runtime(policy, previous)` constructs everything the request path needs (classifier,
route table, authenticator, upstream clients). Upstream clients whose spec did not change are
carried over from the previous runtime (keeping their pools and health state); new ones are
created; the caller starts the new ones and closes the dropped ones after the swap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.auth import Authenticator
from gateway.classify import Classifier, SemanticLike
from gateway.policy.schema import Policy, Upstream
from gateway.routing import RouteTable
from gateway.upstream.base import UpstreamClient


def make_upstream(name: str, spec: Upstream) -> UpstreamClient:
    if spec.kind == "litellm":
        from gateway.upstream.litellm_provider import LiteLLMUpstream

        return LiteLLMUpstream(name, spec)
    from gateway.upstream.openai_http import OpenAIHTTPUpstream

    return OpenAIHTTPUpstream(name, spec)


@dataclass(eq=False)
class Runtime:
    policy: Policy
    source: str
    classifier: Classifier
    routes: RouteTable
    auth: Authenticator
    upstreams: dict[str, UpstreamClient]
    aliases: frozenset[str]
    new_clients: list[UpstreamClient] = field(default_factory=list)
    dropped_clients: list[UpstreamClient] = field(default_factory=list)
    chains: dict[tuple[str, ...], tuple[UpstreamClient, ...]] = field(default_factory=dict)  # resolved chains


def build_runtime(policy: Policy, source: str, previous: Runtime | None = None,
                  semantic: SemanticLike | None = None) -> Runtime:
    old = previous.upstreams if previous else {}
    upstreams: dict[str, UpstreamClient] = {}
    new: list[UpstreamClient] = []
    for name, spec in policy.upstreams.items():
        prev = old.get(name)
        if prev is not None and prev.spec == spec:
            upstreams[name] = prev
        else:
            client = make_upstream(name, spec)
            upstreams[name] = client
            new.append(client)
    dropped = [c for n, c in old.items() if upstreams.get(n) is not c]
    return Runtime(
        policy=policy,
        source=source,
        classifier=Classifier(policy, semantic),
        routes=RouteTable(policy),
        auth=Authenticator(policy.auth),
        upstreams=upstreams,
        aliases=frozenset(m.name for m in policy.models),
        new_clients=new,
        dropped_clients=dropped,
    )

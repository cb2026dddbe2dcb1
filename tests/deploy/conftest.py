"""Shared fixtures for the deployment tests: the venv's validation tools, rendered Helm charts,
and a policy check that runs the gateway's own loader in a subprocess.

The tools (hadolint, docker-compose, kubernetes-validate, the Helm SDK) come from the `dev`
extra, so a missing one is an install problem (`scripts/bootstrap`), never a reason to skip.
System tools (promtool) go through tests.helpers.require_tool.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

CHART = ROOT / "helm" / "cohortgate"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
DOCKER = ROOT / "docker"
RELEASE = "rel"
NAMESPACE = "llm"

Manifest = dict[str, Any]


def venv_tool(name: str) -> str:
    """A console script installed next to the running interpreter by the dev extra."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(
            f"{name} is missing from {path.parent}: it comes with the dev extra (run scripts/bootstrap)"
        )
    return str(path)


def helm() -> Any:
    try:
        import helm_python
    except ImportError:
        pytest.fail("helm-python-sdk is not installed: it comes with the dev extra (run scripts/bootstrap)")
    return helm_python


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> dict[str, str]:
    """`helm template` (offline, as an install) -> {template path: rendered text}."""
    h = helm()
    return dict(h.Chart.load(str(chart)).render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))


def manifests(rendered: dict[str, str]) -> list[Manifest]:
    docs: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(docs, kind, name)
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def all_options_values() -> dict[str, Any]:
    data = yaml.safe_load(ALL_OPTIONS.read_text())
    assert isinstance(data, dict)
    return data


VALUE_SETS: dict[str, Callable[[], dict[str, Any] | None]] = {
    "default": lambda: None,
    "all-options": all_options_values,
}


@pytest.fixture(scope="session", params=sorted(VALUE_SETS))
def rendered_set(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any] | None, dict[str, str]]:
    """(name, values, rendered templates) for the default values and the all-options values."""
    values = VALUE_SETS[request.param]()
    return request.param, values, render(values)


@pytest.fixture(scope="session")
def default_docs() -> list[Manifest]:
    return manifests(render(None))


@pytest.fixture(scope="session")
def all_docs() -> list[Manifest]:
    return manifests(render(all_options_values()))


def check_policy(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Validate a policy file with the gateway's loader (gateway/policy/loader.py), out of process."""
    code = "import sys; from gateway.policy.loader import load_policy; load_policy(sys.argv[1])"
    return subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def pod_labels(workload: Manifest) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())

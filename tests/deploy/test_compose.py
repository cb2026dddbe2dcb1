"""docker/compose.yaml and the configs it mounts: `docker-compose config -q` for each profile,
`promtool check config` on the Prometheus config, and the cross-file wiring (policy hosts are
the vLLM services' aliases, Prometheus scrapes the gateway and every vLLM, Grafana reads the
dashboards folder that compose mounts, the collector sends OTLP traces to Jaeger).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.conftest import DOCKER, check_policy, venv_tool
from tests.helpers import require_tool

COMPOSE = DOCKER / "compose.yaml"
MODELS = ("base", "source", "candidate")


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Offline: `config` only reads and interpolates the file; no Docker engine is needed.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "VLLM_", "DOCKER_"))}
    return subprocess.run(
        [venv_tool("docker-compose"), "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DOCKER,
        env={**clean, **(env or {})},
    )


def resolved(profile: str | None, env: dict[str, str] | None = None) -> dict[str, Any]:
    args = (["--profile", profile] if profile else []) + ["config", "--format", "json"]
    proc = compose(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("profile", [None, "gpu", "cpu"])
def test_compose_config_quiet(profile: str | None) -> None:
    proc = compose(*(["--profile", profile] if profile else []), "config", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    # No warnings either (an unset variable, an obsolete key).
    assert proc.stderr == "", proc.stderr


def test_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    """Negative control: `config -q` does validate."""
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  x:\n    image: a\n    ports: {bad: mapping}\n    restart: sometimes\n")
    proc = subprocess.run(
        [venv_tool("docker-compose"), "-f", str(bad), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode != 0


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_one_vllm_server_per_model(profile: str) -> None:
    services = resolved(profile)["services"]
    vllm = {n: s for n, s in services.items() if n.startswith("vllm-")}
    assert sorted(vllm) == sorted(f"vllm-{m}-{profile}" for m in MODELS)
    for model in MODELS:
        s = vllm[f"vllm-{model}-{profile}"]
        assert s["entrypoint"] == ["vllm", "serve"]
        assert s["command"][1:3] == ["--served-model-name", model]
        assert s["networks"]["default"]["aliases"] == [f"vllm-{model}"]
        assert "--port" in s["command"] and s["command"][s["command"].index("--port") + 1] == "8000"
        assert "/health" in " ".join(s["healthcheck"]["test"])
        gpu = s.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if profile == "gpu":
            assert s["image"].startswith("vllm/vllm-openai:")
            assert gpu and gpu[0]["capabilities"] == ["gpu"]
        else:
            assert "cpu" in s["image"] and not gpu
    # The other profile's servers are not started.
    assert not any(n.endswith("-cpu" if profile == "gpu" else "-gpu") for n in services)


def test_vllm_image_and_models_from_env() -> None:
    env = {
        "VLLM_IMAGE": "vllm/vllm-openai:v9.9.9",
        "VLLM_CPU_IMAGE": "vllm/vllm-openai-cpu:v9.9.9",
        "CANDIDATE_MODEL": "/models/merged-7",
    }
    gpu = resolved("gpu", env)["services"]
    assert gpu["vllm-base-gpu"]["image"] == "vllm/vllm-openai:v9.9.9"
    assert gpu["vllm-candidate-gpu"]["command"][0] == "/models/merged-7"
    assert resolved("cpu", env)["services"]["vllm-base-cpu"]["image"] == "vllm/vllm-openai-cpu:v9.9.9"


def test_gateway_service() -> None:
    cfg = resolved("gpu")
    gw = cfg["services"]["gateway"]
    assert Path(gw["build"]["context"]).resolve() == DOCKER.parent.resolve()
    assert gw["build"]["dockerfile"] == "docker/Dockerfile"
    mounts = {m["target"]: m for m in gw["volumes"]}
    policy = mounts["/etc/cohortgate/policy.yaml"]
    assert Path(policy["source"]).resolve() == (DOCKER / "policy.compose.yaml").resolve()
    assert policy["read_only"] is True
    assert gw["ports"][0]["target"] == 8080 and gw["ports"][0]["host_ip"] == "127.0.0.1"
    env = gw["environment"]
    otlp = urlparse(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert otlp.hostname == "otel-collector" and otlp.port == 4318
    # The gateway sends the key the vLLM servers require.
    assert env["VLLM_API_KEY"] == cfg["services"]["vllm-base-gpu"]["environment"]["VLLM_API_KEY"]
    assert set(gw["depends_on"]) >= {f"vllm-{m}-gpu" for m in MODELS}


def test_compose_policy_is_valid_and_routes_to_the_vllm_services() -> None:
    path = DOCKER / "policy.compose.yaml"
    proc = check_policy(path)
    assert proc.returncode == 0, proc.stderr
    policy = yaml.safe_load(path.read_text())
    gw_env = resolved("gpu")["services"]["gateway"]["environment"]
    hosts = set()
    for name, up in policy["upstreams"].items():
        url = urlparse(up["base_url"])
        assert (url.hostname, url.port, url.path) == (f"vllm-{name}", 8000, "/v1")
        assert up["model"] == name, "the served model name set by --served-model-name"
        assert up["api_key_env"] in gw_env
        hosts.add(url.hostname)
    assert hosts == {f"vllm-{m}" for m in MODELS}


def _prometheus() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_promtool_check_config() -> None:
    promtool = require_tool("promtool", "Debian package prometheus")
    proc = subprocess.run(
        [promtool, "check", "config", str(DOCKER / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_gateway_and_every_vllm() -> None:
    targets: dict[str, str] = {}
    for job in _prometheus()["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                targets[t] = job.get("metrics_path", "/metrics")
    assert targets["gateway:8080"] == "/metrics"
    for m in MODELS:
        assert targets[f"vllm-{m}:8000"] == "/metrics"
    services = resolved("gpu")["services"]
    assert "gateway" in services and "otel-collector" in services
    mounts = {m["target"]: m for m in services["prometheus"]["volumes"]}
    assert Path(mounts["/etc/prometheus"]["source"]).resolve() == (DOCKER / "prometheus").resolve()


def test_grafana_provisioning() -> None:
    services = resolved(None)["services"]
    mounts = {
        m["target"]: Path(m["source"]).resolve()
        for m in services["grafana"]["volumes"]
        if "source" in m and m["type"] == "bind"
    }
    assert mounts["/etc/grafana/provisioning"] == (DOCKER / "grafana" / "provisioning").resolve()
    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/datasources.yaml").read_text())[
        "datasources"
    ]
    by_type = {d["type"]: d for d in ds}
    assert (
        urlparse(by_type["prometheus"]["url"]).hostname == "prometheus" and by_type["prometheus"]["isDefault"]
    )
    assert urlparse(by_type["jaeger"]["url"]).hostname == "jaeger"
    assert {d["uid"] for d in ds} == {"prometheus", "jaeger"}
    providers = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/dashboards.yaml").read_text())[
        "providers"
    ]
    path = providers[0]["options"]["path"]
    # Grafana reads the folder where compose mounts docker/grafana/dashboards.
    assert mounts[path] == (DOCKER / "grafana" / "dashboards").resolve()
    assert providers[0]["type"] == "file"


def test_otel_collector_otlp_in_jaeger_out() -> None:
    cfg = yaml.safe_load((DOCKER / "otel-collector.yaml").read_text())
    otlp = cfg["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"].endswith(":4317") and otlp["http"]["endpoint"].endswith(":4318")
    traces = cfg["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    for kind in ("receivers", "processors", "exporters"):
        for name in traces[kind]:
            assert name in cfg[kind], f"{kind} {name} is used but not defined"
    (exporter,) = traces["exporters"]
    host = re.match(r"(?:https?://)?([^:/]+)", cfg["exporters"][exporter]["endpoint"]).group(1)  # type: ignore[union-attr]
    services = resolved(None)["services"]
    assert host == "jaeger" and host in services
    assert services["jaeger"]["image"].startswith("jaegertracing/jaeger:")
    collector_mounts = {
        m["target"]: Path(m["source"]).resolve() for m in services["otel-collector"]["volumes"]
    }
    config_arg = next(a for a in services["otel-collector"]["command"] if a.startswith("--config="))
    assert collector_mounts[config_arg.split("=", 1)[1]] == (DOCKER / "otel-collector.yaml").resolve()

"""The Helm chart (helm/cohortgate): `helm lint`, `helm template` for the default values and for
ci/all-options-values.yaml, every rendered manifest checked by `kubernetes-validate --strict`,
and the wiring that makes the release work: the policy is valid for the gateway and rolls the
pods when it changes, keys reach the gateway the way the policy names them, only the gateway
reaches the model servers, probes hit /readyz and /healthz.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    ALL_OPTIONS,
    CHART,
    DOCKER,
    NAMESPACE,
    Manifest,
    all_options_values,
    check_policy,
    find,
    helm,
    manifests,
    one,
    pod_labels,
    render,
    selects,
    venv_tool,
)

# The current Kubernetes release, and the oldest one the chart claims (Chart.yaml kubeVersion).
KUBE_VERSIONS = ["1.37.0", "1.27.0"]
# Kinds that need a CRD: kubernetes-validate has no schema for them (checked by hand below).
CRD_KINDS = {"ServiceMonitor"}


def _base64(s: str) -> str:
    import base64

    return base64.b64decode(s).decode()


# ------------------------------------------------------------------ lint and validate
@pytest.mark.parametrize("values_name", ["default", "all-options"])
def test_helm_lint_strict(values_name: str) -> None:
    values = all_options_values() if values_name == "all-options" else None
    report = helm().lint(str(CHART), values, strict=True, kube_version="v1.37.0")
    assert report["errors"] == [], report
    # severity 1 = INFO (e.g. "icon is recommended"); warnings and errors fail.
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], serious
    assert report["total_charts_linted"] == 1


def test_kubernetes_validate_strict(rendered_set: tuple[str, Any, dict[str, str]], tmp_path: Path) -> None:
    name, _, rendered = rendered_set
    docs = manifests(rendered)
    assert len(docs) >= 8
    files = []
    for i, doc in enumerate(docs):
        f = tmp_path / f"{i:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
        f.write_text(yaml.safe_dump(doc))
        files.append(f)
    for version in KUBE_VERSIONS:
        proc = subprocess.run(
            [venv_tool("kubernetes-validate"), "--strict", "-k", version, *map(str, files)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{name} against {version}:\n{out}"
        for f, doc in zip(files, docs, strict=True):
            line = next((ln for ln in out.splitlines() if str(f) in ln), "")
            if doc["kind"] in CRD_KINDS:
                assert "Couldn't find schema" in line, line
            else:
                assert line.startswith("INFO") and "passed" in line, f"{name}/{version}: {line or out}"


def test_kubernetes_validate_catches_an_invalid_manifest(tmp_path: Path) -> None:
    """Negative control: the validator really rejects a bad field under --strict."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "x"},
                "spec": {"ports": [{"port": 80}], "selectr": {"a": "b"}},
            }
        )
    )
    proc = subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", "-k", KUBE_VERSIONS[0], str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0, proc.stdout


def test_every_value_is_exercised_by_all_options() -> None:
    """ci/all-options-values.yaml sets every key that values.yaml has (so CI renders every branch)."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    allopts = all_options_values()

    def keys(d: dict[str, Any], prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if (
                isinstance(v, dict)
                and v
                and k
                not in {
                    "resources",
                    "podSecurityContext",
                    "securityContext",
                    "requests",
                    "limits",
                    "values",
                    "labels",
                    "annotations",
                }
            ):
                out |= keys(v, prefix + k + ".")
        return out

    missing = keys(defaults) - keys(allopts)
    assert not missing, f"not set in {ALL_OPTIONS.name}: {sorted(missing)}"


# ------------------------------------------------------------------ values.schema.json
@pytest.mark.parametrize(
    "bad, message",
    [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"replicasCount": 2}, "replicasCount"),
        ({"modelServers": {"models": [{"name": "Base_Model", "model": "x"}]}}, "name"),
        ({"otel": {"enabled": True, "endpoint": "otel:4318"}}, "endpoint"),
        ({"callerKeys": {"keys": [{"name": "k", "sha256": "not-a-digest"}]}}, "sha256"),
        ({"service": {"type": "Ingress"}}, "type"),
    ],
)
def test_schema_rejects_bad_values(bad: dict[str, Any], message: str) -> None:
    h = helm()
    with pytest.raises(h.HelmValuesError) as exc:
        render(bad)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    "values, message",
    [
        # Caller keys need the policy to read the mounted file.
        ({"callerKeys": {"enabled": True, "keys": [{"name": "a", "sha256": "0" * 64}]}}, "keys_file_env"),
        # An upstream whose key no Secret provides would never authenticate.
        # (with model servers off, nothing generates the key the default policy names)
        ({"modelServers": {"enabled": False}}, "upstreamKeys.values.VLLM_API_KEY"),
        (
            {"upstreamKeys": {"values": {"VLLM_API_KEY": None}}, "modelServers": {"apiKeyEnv": ""}},
            "VLLM_API_KEY",
        ),
        ({"policy": {"content": "upstreams: [unclosed"}}, "not valid YAML"),
    ],
)
def test_render_refuses_setups_that_cannot_work(values: dict[str, Any], message: str) -> None:
    h = helm()
    with pytest.raises(h.HelmError) as exc:
        render(values)
    assert message in str(exc.value)


# ------------------------------------------------------------------ policy
def _policy_files(docs: list[Manifest], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Write the rendered policy (and the caller keys file, if any) like the pod sees them."""
    cm = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-policy")][0]
    policy = tmp_path / "policy.yaml"
    policy.write_text(cm["data"]["policy.yaml"])
    env: dict[str, str] = {}
    dep = _gateway(docs)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    for secret in find(docs, "Secret"):
        if secret["metadata"]["name"].endswith("-caller-keys"):
            ((key, text),) = secret["stringData"].items()
            keys_file = tmp_path / key
            keys_file.write_text(text)
            env_name = next(e["name"] for e in container["env"] if e.get("value", "").endswith("/" + key))
            env[env_name] = str(keys_file)
    return policy, env


def _gateway(docs: list[Manifest]) -> Manifest:
    return next(
        d
        for d in find(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
    )


def test_rendered_policy_is_valid_for_the_gateway(
    rendered_set: tuple[str, Any, dict[str, str]], tmp_path: Path
) -> None:
    name, _, rendered = rendered_set
    docs = manifests(rendered)
    policy, env = _policy_files(docs, tmp_path)
    proc = check_policy(policy, env)
    assert proc.returncode == 0, f"{name}: {proc.stderr}"
    data = yaml.safe_load(policy.read_text())
    # Upstreams on the chart's model servers point at Services the chart renders.
    services = {
        f"{s['metadata']['name']}.{NAMESPACE}.svc:{s['spec']['ports'][0]['port']}"
        for s in find(docs, "Service")
    }
    for up_name, up in data["upstreams"].items():
        host = re.match(r"https?://([^/]+)", up["base_url"]).group(1)  # type: ignore[union-attr]
        if host.endswith(".svc:8000"):
            assert host in services, f"{up_name}: {host} is not a rendered Service"


def test_policy_change_rolls_the_pods_and_keys_do_not(default_docs: list[Manifest]) -> None:
    before = _gateway(default_docs)["spec"]["template"]["metadata"]["annotations"]
    again = _gateway(manifests(render(None)))["spec"]["template"]["metadata"]["annotations"]
    # Stable across renders even though the model servers' key is generated.
    assert before == again
    content = yaml.safe_load((CHART / "values.yaml").read_text())["policy"]["content"]
    changed = _gateway(manifests(render({"policy": {"content": content.replace("routed by cohort", "v2")}})))
    after = changed["spec"]["template"]["metadata"]["annotations"]
    assert after["checksum/policy"] != before["checksum/policy"]
    assert after["checksum/secrets"] == before["checksum/secrets"]
    frozen = _gateway(manifests(render({"policy": {"rollOnChange": False}})))
    assert "checksum/policy" not in frozen["spec"]["template"]["metadata"]["annotations"]


def test_policy_is_mounted_for_hot_reload(rendered_set: tuple[str, Any, dict[str, str]]) -> None:
    docs = manifests(rendered_set[2])
    spec = _gateway(docs)["spec"]["template"]["spec"]
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "policy")
    # A subPath mount never sees ConfigMap updates; a directory mount does.
    assert mount["mountPath"] == "/etc/cohortgate" and "subPath" not in mount
    vol = next(v for v in spec["volumes"] if v["name"] == "policy")
    assert vol["configMap"]["items"] == [{"key": "policy.yaml", "path": "policy.yaml"}]


def test_gateway_command_is_the_image_command(rendered_set: tuple[str, Any, dict[str, str]]) -> None:
    from tests.deploy.test_dockerfile import dockerfile_cmd

    name, values, rendered = rendered_set
    c = _gateway(manifests(rendered))["spec"]["template"]["spec"]["containers"][0]
    argv = c["command"] + c["args"]
    port = str((values or {}).get("port", 8080))
    workers = str((values or {}).get("workers", 1))
    expected = [a if a != "8080" else port for a in dockerfile_cmd()] + ["--workers", workers]
    assert argv == expected
    assert c["ports"][0]["containerPort"] == int(port)


def test_probes(rendered_set: tuple[str, Any, dict[str, str]]) -> None:
    c = _gateway(manifests(rendered_set[2]))["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False


# ------------------------------------------------------------------ keys
def test_upstream_keys_reach_the_gateway_as_the_policy_names_them(
    rendered_set: tuple[str, Any, dict[str, str]],
) -> None:
    docs = manifests(rendered_set[2])
    c = _gateway(docs)["spec"]["template"]["spec"]["containers"][0]
    secret_name = c["envFrom"][0]["secretRef"]["name"]
    secret = one(docs, "Secret", secret_name)
    keys = {k: _base64(v) for k, v in secret["data"].items()}
    policy = yaml.safe_load(
        next(d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-policy"))["data"][
            "policy.yaml"
        ]
    )
    for up in policy["upstreams"].values():
        if up.get("api_key_env"):
            assert keys.get(up["api_key_env"]), f"{up['api_key_env']} missing or empty in {secret_name}"
    # Every model server requires the same key the gateway sends.
    for dep in find(docs, "Deployment"):
        if dep["metadata"]["labels"]["app.kubernetes.io/component"] != "model-server":
            continue
        env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        ref = env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret_name, "key": "VLLM_API_KEY"}


def test_caller_keys_secret_is_a_file_named_by_env(all_docs: list[Manifest]) -> None:
    spec = _gateway(all_docs)["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["COHORTGATE_KEYS_FILE"] == "/etc/cohortgate-keys/keys.yaml"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "caller-keys")
    assert mount["mountPath"] == "/etc/cohortgate-keys" and mount["readOnly"] is True
    vol = next(v for v in spec["volumes"] if v["name"] == "caller-keys")
    secret = one(all_docs, "Secret", vol["secret"]["secretName"])
    keys = yaml.safe_load(secret["stringData"]["keys.yaml"])["keys"]
    assert [k["name"] for k in keys] == ["support-bot", "billing-app"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", k["sha256"]) for k in keys)


# ------------------------------------------------------------------ scaling and disruption
def test_default_replicas_pdb_and_no_hpa(default_docs: list[Manifest]) -> None:
    dep = _gateway(default_docs)
    assert dep["spec"]["replicas"] == 2
    assert not find(default_docs, "HorizontalPodAutoscaler")
    pdb = one(default_docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(dep))


def test_hpa_owns_replicas_when_enabled(all_docs: list[Manifest]) -> None:
    dep = _gateway(all_docs)
    assert "replicas" not in dep["spec"]
    hpa = one(all_docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert one(all_docs, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]},
    }


# ------------------------------------------------------------------ model servers and network
def _model_servers(docs: list[Manifest]) -> list[Manifest]:
    return [
        d
        for d in find(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "model-server"
    ]


def test_model_servers(all_docs: list[Manifest]) -> None:
    servers = {d["metadata"]["labels"]["cohortgate.io/model"]: d for d in _model_servers(all_docs)}
    assert set(servers) == {"base", "source", "candidate", "small-cpu"}
    ctr = {k: d["spec"]["template"]["spec"]["containers"][0] for k, d in servers.items()}
    assert ctr["base"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert ctr["candidate"]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "nvidia.com/gpu" not in ctr["small-cpu"]["resources"]["limits"]
    assert ctr["base"]["image"].startswith("vllm/vllm-openai:")
    assert "cpu" in ctr["small-cpu"]["image"]
    assert ctr["candidate"]["args"][:3] == ["/models/candidate", "--served-model-name", "candidate"]
    assert (
        "--tensor-parallel-size" in ctr["candidate"]["args"]
        and "--enable-prefix-caching" in ctr["base"]["args"]
    )
    claim = {v["name"]: v for v in servers["candidate"]["spec"]["template"]["spec"]["volumes"]}["models"]
    assert claim["persistentVolumeClaim"] == {"claimName": "cohortgate-models", "readOnly": True}
    small_mount = {m["name"]: m for m in ctr["small-cpu"]["volumeMounts"]}["models"]
    assert small_mount["subPath"] == "small-v1" and small_mount["readOnly"] is False
    assert servers["base"]["spec"]["replicas"] == 2
    for name, dep in servers.items():
        svc = one(all_docs, "Service", dep["metadata"]["name"])
        assert selects(svc["spec"]["selector"], pod_labels(dep)), name
        # A model server's Service never selects another model's pods or the gateway's.
        others = [d for d in find(all_docs, "Deployment") if d is not dep]
        assert not any(selects(svc["spec"]["selector"], pod_labels(o)) for o in others), name


def test_services_select_their_pods(rendered_set: tuple[str, Any, dict[str, str]]) -> None:
    docs = manifests(rendered_set[2])
    gw = one(docs, "Service", _gateway(docs)["metadata"]["name"])
    assert selects(gw["spec"]["selector"], pod_labels(_gateway(docs)))
    assert not any(selects(gw["spec"]["selector"], pod_labels(d)) for d in _model_servers(docs))


def test_only_the_gateway_reaches_the_model_servers(rendered_set: tuple[str, Any, dict[str, str]]) -> None:
    name, values, rendered = rendered_set
    docs = manifests(rendered)
    gateway_pods = pod_labels(_gateway(docs))
    np = next(d for d in find(docs, "NetworkPolicy") if d["metadata"]["name"].endswith("-model-servers"))
    spec = np["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    for dep in _model_servers(docs):
        assert selects(spec["podSelector"]["matchLabels"], pod_labels(dep))
    assert not selects(spec["podSelector"]["matchLabels"], gateway_pods)
    first = spec["ingress"][0]["from"]
    assert len(first) == 1 and selects(first[0]["podSelector"]["matchLabels"], gateway_pods)
    # The gateway selector does not also admit model-server pods (they must not call each other).
    assert not any(
        selects(first[0]["podSelector"]["matchLabels"], pod_labels(d)) for d in _model_servers(docs)
    )
    metrics_from = (values or {}).get("networkPolicy", {}).get("metricsFrom", [])
    assert [r["from"] for r in spec["ingress"][1:]] == ([metrics_from] if metrics_from else [])


def test_gateway_network_policy_when_enabled(all_docs: list[Manifest]) -> None:
    np = next(d for d in find(all_docs, "NetworkPolicy") if d["metadata"]["name"].endswith("-gateway"))
    assert selects(np["spec"]["podSelector"]["matchLabels"], pod_labels(_gateway(all_docs)))
    peers = np["spec"]["ingress"][0]["from"]
    assert len(peers) == 4
    # The `helm test` pod may reach the gateway.
    test_pod = one(all_docs, "Pod")
    assert selects(peers[-1]["podSelector"]["matchLabels"], test_pod["metadata"]["labels"])


# ------------------------------------------------------------------ monitoring and telemetry
def test_service_monitors_select_the_services(all_docs: list[Manifest]) -> None:
    sms = find(all_docs, "ServiceMonitor")
    assert len(sms) == 2
    services = find(all_docs, "Service")
    for sm in sms:
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        matched = [
            s for s in services if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert matched, sm["metadata"]["name"]
        for ep in sm["spec"]["endpoints"]:
            assert ep["path"] == "/metrics" and ep["interval"] == "30s"
            for s in matched:
                assert ep["port"] in {p["name"] for p in s["spec"]["ports"]}
    gw_sm = next(s for s in sms if not s["metadata"]["name"].endswith("-model-servers"))
    matched = [
        s for s in services if selects(gw_sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in matched] == [_gateway(all_docs)["metadata"]["name"]]


def test_otel_env(default_docs: list[Manifest], all_docs: list[Manifest]) -> None:
    def env(docs: list[Manifest]) -> dict[str, str]:
        c = _gateway(docs)["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in c["env"]}

    assert not any(k.startswith("OTEL_") for k in env(default_docs))
    e = env(all_docs)
    assert e["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4317"
    assert e["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert e["OTEL_SERVICE_NAME"] == "cohortgate-prod"
    assert e["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
    assert e["OTEL_RESOURCE_ATTRIBUTES"] == (
        "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),deployment.environment=prod,service.namespace=llm"
    )


def test_dashboards_configmap_for_the_grafana_sidecar(tmp_path: Path) -> None:
    """Renders from a copy of the chart holding a dashboard, so this holds before any dashboard exists."""
    chart = tmp_path / "cohortgate"
    shutil.copytree(CHART, chart)
    for f in (chart / "dashboards").glob("*.json"):
        f.unlink()
    assert not find(manifests(render(None, chart)), "ConfigMap", f"{'rel-cohortgate'}-dashboards")
    board = {"title": "cohortgate overview", "uid": "cg-overview", "panels": [], "schemaVersion": 39}
    (chart / "dashboards" / "overview.json").write_text(json.dumps(board))
    values = all_options_values()
    cm = [
        d
        for d in find(manifests(render(values, chart)), "ConfigMap")
        if d["metadata"]["name"].endswith("-dashboards")
    ]
    assert len(cm) == 1
    meta = cm[0]["metadata"]
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["annotations"]["grafana_folder"] == "LLM"
    assert meta["namespace"] == "monitoring"
    assert json.loads(cm[0]["data"]["overview.json"]) == board
    off = manifests(render({"dashboards": {"enabled": False}}, chart))
    assert not [d for d in find(off, "ConfigMap") if d["metadata"]["name"].endswith("-dashboards")]


def test_chart_ships_the_synced_dashboards(default_docs: list[Manifest]) -> None:
    boards = sorted(p.name for p in (DOCKER / "grafana" / "dashboards").glob("*.json"))
    cms = [d for d in find(default_docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboards")]
    if not boards:
        assert not cms
        return
    assert len(cms) == 1 and sorted(cms[0]["data"]) == boards


def test_notes_show_the_openai_sdk_call(rendered_set: tuple[str, Any, dict[str, str]]) -> None:
    name, values, rendered = rendered_set
    notes = next(t for p, t in rendered.items() if p.endswith("NOTES.txt"))
    assert "from openai import OpenAI" in notes
    assert 'base_url="http://127.0.0.1:8080/v1"' in notes
    assert 'model="cohortgate"' in notes
    assert "port-forward service/" in notes
    if name == "all-options":
        assert "<your caller key>" in notes and "WARNING" not in notes
    else:
        assert "WARNING: no caller keys" in notes


def test_packaged_chart_renders(tmp_path: Path) -> None:
    """`helm package`: the archive holds the templates, schema and dashboards, not ci/, and renders."""
    import tarfile

    h = helm()
    archive = Path(h.package(str(CHART), destination=str(tmp_path)))
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "cohortgate/values.schema.json" in names and "cohortgate/templates/NOTES.txt" in names
    assert not any(n.startswith("cohortgate/ci/") for n in names)
    chart = h.Chart.load_archive(archive.read_bytes())
    docs = manifests(dict(chart.render(None, name="rel", namespace=NAMESPACE, is_install=True)))
    assert _gateway(docs)["metadata"]["name"] == "rel-cohortgate"

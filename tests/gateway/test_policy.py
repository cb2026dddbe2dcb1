"""Policy validation with line-numbered errors, the CLI, and hot reload (good file, bad file, SIGHUP)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import httpx
import pytest

from gateway.policy.loader import PolicyError, parse_policy_text
from gateway.policy.schema import Policy
from tests.gateway.conftest import policy
from tests.helpers import PYTHON, ROOT, free_port, running, wait_until

GOOD = """\
version: 1
upstreams:
  a:
    base_url: http://127.0.0.1:9/v1
    model: a
models:
  - name: m
routes:
  - id: r
    cohorts: ["*"]
    targets: [{upstream: a}]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as ei:
        parse_policy_text(text, "p.yaml")
    return ei.value.problems


def test_good_policy_and_shipped_policies_load():
    assert isinstance(parse_policy_text(GOOD), Policy)
    for f in (ROOT / "policies").glob("*.yaml"):
        from gateway.policy.loader import load_policy

        load_policy(f)


@pytest.mark.parametrize("mutate,line,field,words", [
    (lambda t: t.replace("    model: a\n", "    model: a\n    modle: x\n"), 6, "upstreams.a.modle", "unknown field"),
    (lambda t: t.replace("http://127.0.0.1:9/v1", "127.0.0.1:9"), 4, "upstreams.a.base_url", "http://"),
    (lambda t: t.replace("{upstream: a}", "{upstream: zz}"), 9, "routes[0]", "'zz' is not in upstreams"),
    (lambda t: t.replace("{upstream: a}", "{upstream: a, weight: 0}"), 9, "routes.0", "sum to 0"),
    (lambda t: t.replace('["*"]', "[billing]"), 9, "routes[0]", "not declared in cohorts"),
    (lambda t: t + "cohorts:\n  - name: c\n    rules: [{regex: '(unclosed'}]\n", 14, "cohorts.0.rules.0.regex",
     "invalid regex"),
    (lambda t: t.replace("models:\n  - name: m\n", "models: []\n"), 6, "models", "at least 1"),
    (lambda t: t.replace("version: 1", "version: 2"), 1, "version", ""),
], ids=["typo", "bad-url", "unknown-upstream", "zero-weights", "unknown-cohort", "bad-regex", "no-models",
        "version"])
def test_errors_name_line_and_field(mutate, line, field, words):
    out = problems(mutate(GOOD))
    text = "\n".join(out)
    assert field in text and words in text, text
    if line is not None:
        assert f"p.yaml:{line}:" in text, text


def test_yaml_syntax_error_has_line():
    out = problems(GOOD.replace("  - name: m", "  - name: [m"))
    assert out[0].startswith("p.yaml:") and "YAML syntax error" in out[0]


def test_cohort_without_route_is_refused():
    text = GOOD.replace('["*"]', "[c]") + "cohorts:\n  - name: c\n    rules: [{has_tools: true}]\n"
    assert any("no route serves cohort 'out_of_domain'" in p for p in problems(text))


def test_schema_json_is_current():
    shipped = json.loads((ROOT / "policies" / "schema.json").read_text())
    assert shipped == Policy.model_json_schema(), "run: cohortgate policy schema -o policies/schema.json"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "cohortgate", *args], capture_output=True, text=True, timeout=60)


def test_cli_check_ok_and_bad(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace("    model: a\n", "    model: a\n    modle: x\n"))
    r = cli("policy", "check", str(good))
    assert r.returncode == 0 and "ok" in r.stdout
    r = cli("policy", "check", str(bad))
    assert r.returncode == 2 and f"{bad}:6: upstreams.a.modle: unknown field" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_explain(tmp_path):
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"body": {"model": "support-assistant", "user": "u1", "messages": [
        {"role": "user", "content": "I was charged twice, refund please"}]}}))
    r = cli("policy", "explain", str(ROOT / "policies" / "default.yaml"), "--request", str(req))
    assert r.returncode == 0, r.stderr
    assert "cohort:    billing_refund" in r.stdout and "route:     billing" in r.stdout
    assert "fallback:  base" in r.stdout and "sticky key 'u1'" in r.stdout
    req.write_text(json.dumps({"model": "ghost", "messages": []}))
    r = cli("policy", "explain", str(ROOT / "policies" / "default.yaml"), "--request", str(req))
    assert r.returncode == 2 and "ghost" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- hot reload


def served_by(g) -> str:
    r = httpx.post(g.base_url + "/chat/completions", json={"model": "m", "messages": [
        {"role": "user", "content": "x"}]}, timeout=10)
    assert r.status_code == 200
    return r.headers["x-upstream"]


ROUTE_TO = """
- id: r
  cohorts: ["*"]
  targets: [{{upstream: {}}}]
"""


def test_hot_reload_good_then_bad_file(fake, gateway):
    a, b = fake("a"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTE_TO.format("a")))
    assert served_by(g) == "a"
    g.policy_path.write_text(policy({"a": a.url, "b": b.url}, ROUTE_TO.format("b")))
    assert wait_until(lambda: served_by(g) == "b")
    reloads = lambda result: g.state.metrics.reloads.value((result,))  # noqa: E731
    assert reloads("ok") == 1
    g.policy_path.write_text("upstreams: [this is not a policy")
    assert wait_until(lambda: reloads("rejected") == 1)
    for _ in range(5):
        assert served_by(g) == "b"  # the old policy keeps serving


def test_sighup_reload_in_real_server(fake, tmp_path):
    a, b = fake("a"), fake("b")
    path = tmp_path / "p.yaml"
    path.write_text(policy({"a": a.url, "b": b.url}, ROUTE_TO.format("a")))
    port = free_port()
    with running([PYTHON, "-m", "cohortgate", "serve", "--policy", str(path), "--port", str(port)],
                 ready_url=f"http://127.0.0.1:{port}/readyz", log=tmp_path / "gw.log") as proc:
        g = type("G", (), {"base_url": f"http://127.0.0.1:{port}/v1"})
        assert served_by(g) == "a"
        # same size, same mtime second: only SIGHUP can tell the server
        st = os.stat(path)
        path.write_text(policy({"a": a.url, "b": b.url}, ROUTE_TO.format("b")))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.kill(proc.pid, signal.SIGHUP)
        assert wait_until(lambda: served_by(g) == "b")
        log = (tmp_path / "gw.log").read_text()
        assert "policy reloaded" in log


def test_serve_refuses_bad_policy_with_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: {}\n")
    r = cli("serve", "--policy", str(bad), "--port", str(free_port()))
    assert r.returncode == 2 and "bad.yaml" in r.stderr and "Traceback" not in r.stderr


def test_workers_share_port_and_metrics(fake, tmp_path):
    a = fake("a")
    path = tmp_path / "p.yaml"
    path.write_text(policy({"a": a.url}, ROUTE_TO.format("a")))
    port = free_port()
    env = {"PROMETHEUS_MULTIPROC_DIR": ""}
    with running([PYTHON, "-m", "cohortgate", "serve", "--policy", str(path), "--port", str(port), "--workers", "2"],
                 ready_url=f"http://127.0.0.1:{port}/readyz", env=env, log=tmp_path / "gw.log"):
        with httpx.Client(timeout=10) as c:
            for _ in range(40):
                assert c.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "m", "messages": [
                    {"role": "user", "content": "x"}]}).status_code == 200
            text = c.get(f"http://127.0.0.1:{port}/metrics").text
    total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("cohortgate_requests_total{"))
    assert total == 40  # aggregated over both workers
    assert len({line for line in (tmp_path / "gw.log").read_text().splitlines() if "pid" in line}) >= 1

"""The image's entrypoint, outside Docker: build the project's wheel, install it with no extras
into a fresh virtualenv (what `pip install .` does in docker/Dockerfile), run the Dockerfile's
CMD with a policy pointing at a local OpenAI-compatible upstream, and check that /readyz answers
200, that the Dockerfile's HEALTHCHECK command passes against it, and that a request goes
through with the upstream key from the env var the policy names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_dockerfile import POLICY_PATH, dockerfile_cmd, dockerfile_healthcheck
from tests.helpers import ROOT, free_port, running

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "sk-upstream-test-key"
HEAVY = ("torch", "vllm", "litellm", "mergekit", "transformers", "numpy")


class _Upstream(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible model server: /health, /v1/models, /v1/chat/completions."""

    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            self._json(200, {})
        elif self.path == "/v1/models":
            self._json(
                200, {"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": "test"}]}
            )
        else:
            self._json(404, {"error": {"message": "not found", "type": "not_found"}})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        type(self).seen.append({"path": self.path, "auth": self.headers.get("authorization"), "body": body})
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": "not found", "type": "not_found"}})
            return
        self._json(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "hello from the upstream"},
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
            },
        )


@pytest.fixture()
def upstream() -> Iterator[str]:
    _Upstream.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Upstream)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _run(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the project's wheel with no extras."""
    tmp = tmp_path_factory.mktemp("image")
    wheels = tmp / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        timeout=300,
    )
    (wheel,) = wheels.glob("cohortgate-*.whl")
    venv = tmp / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run([base_python, "-m", "venv", str(venv)], timeout=120)
    _run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            str(wheel),
        ],
        timeout=540,
    )
    return venv


def _smoke(venv: Path) -> None:
    """The image build runs the same check (docker/Dockerfile): every module the CLI imports at
    start-up must come with the core dependencies."""
    smoke = subprocess.run(
        [str(venv / "bin" / "cohortgate"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert smoke.returncode == 0, (
        "`cohortgate --help` fails after a plain `pip install cohortgate` (what the image installs): "
        "a module it imports is missing from [project].dependencies in pyproject.toml:\n"
        + smoke.stderr[-2000:]
    )


def test_cli_starts_from_a_plain_install(image_venv: Path) -> None:
    _smoke(image_venv)


def test_wheel_install_has_no_heavy_dependencies(image_venv: Path) -> None:
    code = (
        "import importlib.util, json, sys; "
        "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m)]))"
    )
    out = _run([str(image_venv / "bin" / "python"), "-c", code, *HEAVY], timeout=60).stdout
    assert json.loads(out) == []


def test_wheel_carries_the_compiled_tracing_encoder(image_venv: Path) -> None:
    """The wheel is built with gateway/_spanenc_c/ compiled (the image's build stage has gcc too):
    without it, tracing every request costs about 15% of the gateway's CPU instead of under 10%."""
    code = "from gateway import tracing_export; print(tracing_export.compiled is not None)"
    out = _run([str(image_venv / "bin" / "python"), "-c", code], timeout=60, cwd="/").stdout
    assert out.split() == ["True"]


def test_dockerfile_cmd_serves_readyz_from_the_installed_wheel(
    image_venv: Path, upstream: str, tmp_path: Path
) -> None:
    _smoke(image_venv)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
version: 1
upstreams:
  local:
    base_url: {upstream}/v1
    model: tiny
    api_key_env: UPSTREAM_KEY
    health: {{probe_path: /health, probe_interval_s: 0.5}}
models:
  - name: cohortgate
routes:
  - id: default
    cohorts: ["*"]
    targets: [{{upstream: local}}]
""")
    port = free_port()
    cmd = dockerfile_cmd()
    # The same command line with the test's policy path, a free port, and loopback only.
    argv = [
        str(policy)
        if a == POLICY_PATH
        else str(port)
        if a == "8080"
        else "127.0.0.1"
        if a == "0.0.0.0"
        else a
        for a in cmd
    ]
    assert argv[0] == "cohortgate" and len(argv) == len(cmd)
    bindir = image_venv / "bin"
    env = {
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "UPSTREAM_KEY": UPSTREAM_KEY,
        "PYTHONUNBUFFERED": "1",
        "OTEL_SDK_DISABLED": "true",
        "VIRTUAL_ENV": str(image_venv),
    }
    env_clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    full_env = {**env_clean, **env}
    # cwd is not the repository: the installed wheel must be what runs (as in the image's /tmp).
    with running(
        [str(bindir / argv[0]), *argv[1:]],
        ready_url=f"{base}/readyz",
        env=full_env,
        timeout=90,
        log=log,
        cwd=tmp_path,
    ) as proc:
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200
        # The Dockerfile's HEALTHCHECK, run by the image's interpreter, passes...
        hc = dockerfile_healthcheck()
        hc_env = {**full_env, "COHORTGATE_HEALTH_URL": f"{base}/readyz"}
        ok = subprocess.run([str(bindir / hc[0]), *hc[1:]], env=hc_env, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        # ...and fails against a port where nothing listens.
        hc_env["COHORTGATE_HEALTH_URL"] = f"http://127.0.0.1:{free_port()}/readyz"
        bad = subprocess.run([str(bindir / hc[0]), *hc[1:]], env=hc_env, capture_output=True, timeout=30)
        assert bad.returncode != 0
        # A request goes through with the upstream key from the env var the policy names.
        req = urllib.request.Request(
            f"{base}/v1/chat/completions",
            method="POST",
            headers={"content-type": "application/json"},
            data=json.dumps(
                {"model": "cohortgate", "messages": [{"role": "user", "content": "hi"}]}
            ).encode(),
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            reply = json.loads(r.read())
        assert reply["choices"][0]["message"]["content"] == "hello from the upstream"
        chats = [s for s in _Upstream.seen if s["path"] == "/v1/chat/completions"]
        assert chats and chats[-1]["auth"] == f"Bearer {UPSTREAM_KEY}"
        assert chats[-1]["body"]["model"] == "tiny"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
            assert b"cohortgate_" in r.read()
        # `docker stop` sends SIGTERM: the gateway exits promptly on its own.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("the gateway did not exit within 15 s of SIGTERM")

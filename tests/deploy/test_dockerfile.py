"""docker/Dockerfile: lint-clean with hadolint, and the properties the deployment relies on
(multi-stage slim Python 3.11, non-root numeric user, no extras installed, HEALTHCHECK on /readyz
with the interpreter, the policy at /etc/cohortgate/policy.yaml, the default command).

`dockerfile_cmd()` and `dockerfile_healthcheck()` are shared with the entrypoint test, which
runs exactly these command lines from an installed wheel.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib

from tests.deploy.conftest import DOCKER, venv_tool
from tests.helpers import ROOT

DOCKERFILE = DOCKER / "Dockerfile"
POLICY_PATH = "/etc/cohortgate/policy.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), args
    return value


def dockerfile_cmd() -> list[str]:
    cmds = [a for i, a in instructions() if i == "CMD"]
    assert len(cmds) == 1
    return _exec_form(cmds[0])


def dockerfile_healthcheck() -> list[str]:
    """The HEALTHCHECK's exec-form command (after CMD)."""
    hc = [a for i, a in instructions() if i == "HEALTHCHECK"]
    assert len(hc) == 1
    _, _, cmd = hc[0].partition(" CMD ")
    return _exec_form(cmd.strip())


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for i, a in instructions():
        if i == "ENV":
            for k, v in re.findall(r"(\w+)=(\S+)", a):
                env[k] = v
    return env


def test_hadolint_clean() -> None:
    proc = subprocess.run(
        [venv_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_hadolint_is_not_a_no_op(tmp_path: object) -> None:
    """Negative control: hadolint flags a known problem, so a clean result means something."""
    from pathlib import Path

    bad = Path(str(tmp_path)) / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    proc = subprocess.run(
        [venv_tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def test_multi_stage_slim_python_311() -> None:
    froms = [a for i, a in instructions() if i == "FROM"]
    assert len(froms) >= 2
    args = {k: v for i, a in instructions() if i == "ARG" and "=" in a for k, v in [a.split("=", 1)]}
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?", base), base
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    # The runtime stage takes the virtualenv from the build stage, not the build tools.
    assert any(i == "COPY" and a.startswith("--from=build /opt/venv") for i, a in instructions())


def test_installs_only_the_proxy_dependencies() -> None:
    runs = " ".join(a for i, a in instructions() if i == "RUN")
    installs = re.findall(r"pip install ([^&]+)", runs)
    assert installs, runs
    for target in installs:
        words = target.split()
        assert "." in words, target
        assert not any("[" in w for w in words), f"extras must not be installed: {target}"
    for heavy in ("torch", "vllm", "litellm", "mergekit", "transformers"):
        assert heavy not in runs


def test_runs_as_non_root_numeric_user() -> None:
    users = [a for i, a in instructions() if i == "USER"]
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]
    # USER comes after the last RUN (nothing after it runs as root).
    kinds = [i for i, _ in instructions()]
    assert max(k for k, i in enumerate(kinds) if i == "RUN") < max(
        k for k, i in enumerate(kinds) if i == "USER"
    )


def test_healthcheck_probes_readyz_with_python() -> None:
    cmd = dockerfile_healthcheck()
    assert cmd[0] == "python" and "urllib.request" in cmd[-1]
    assert "curl" not in " ".join(cmd) and "wget" not in " ".join(cmd)
    url = dockerfile_env()["COHORTGATE_HEALTH_URL"]
    assert url == "http://127.0.0.1:8080/readyz"


def test_default_command_and_policy_volume() -> None:
    assert dockerfile_cmd() == [
        "cohortgate",
        "serve",
        "--policy",
        POLICY_PATH,
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
    ]
    volumes = [json.loads(a) for i, a in instructions() if i == "VOLUME"]
    assert volumes == [["/etc/cohortgate"]]
    assert ("EXPOSE", "8080") in instructions()
    assert dockerfile_env()["PATH"].startswith("/opt/venv/bin")


def test_build_context_keeps_every_packaged_directory() -> None:
    """docker/Dockerfile.dockerignore is an allow-list: it must let in each package that the
    distribution builds (pyproject's packages.find include), or the image's wheel lacks it."""
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = py["tool"]["setuptools"]["packages"]["find"]["include"]
    allowed = {
        ln.strip()[1:].rstrip("/")
        for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip().startswith("!")
    }
    for pattern in includes:
        assert pattern.rstrip("*") in allowed, f"{pattern} is not let into the build context"
    assert {"pyproject.toml", "README.md"} <= allowed

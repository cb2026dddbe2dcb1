"""The Helm chart ships the same Grafana dashboards as docker/grafana/dashboards (the files the
compose stack provisions and the observability tests query), copied by scripts/sync-dashboards.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

SRC = ROOT / "docker" / "grafana" / "dashboards"
DST = ROOT / "helm" / "cohortgate" / "dashboards"
SCRIPT = ROOT / "scripts" / "sync-dashboards"


def test_chart_dashboards_are_identical_to_docker_dashboards() -> None:
    src = {p.name: p.read_bytes() for p in SRC.glob("*.json")}
    dst = {p.name: p.read_bytes() for p in DST.glob("*.json")}
    if not src and not dst:
        pytest.skip("no dashboard in docker/grafana/dashboards yet")
    assert sorted(dst) == sorted(src), "run scripts/sync-dashboards"
    for name in src:
        assert dst[name] == src[name], (
            f"helm/cohortgate/dashboards/{name} differs: run scripts/sync-dashboards"
        )
    proc = subprocess.run([str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPT, root / "scripts" / "sync-dashboards")
    src = root / "docker" / "grafana" / "dashboards"
    dst = root / "helm" / "cohortgate" / "dashboards"
    src.mkdir(parents=True)
    dst.mkdir(parents=True)
    return root / "scripts" / "sync-dashboards", src, dst


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60)


def test_sync_script_copies_removes_and_checks(tmp_path: Path) -> None:
    script, src, dst = _tree(tmp_path)
    assert _run(script, "--check").returncode == 0
    (src / "gateway.json").write_text('{"title": "gateway"}\n')
    (dst / "old.json").write_text('{"title": "old"}\n')
    check = _run(script, "--check")
    assert check.returncode == 1 and "gateway.json" in check.stdout and "old.json" in check.stdout
    assert not (dst / "gateway.json").exists(), "--check must not write"
    assert _run(script).returncode == 0
    assert sorted(p.name for p in dst.iterdir()) == ["gateway.json"]
    assert (dst / "gateway.json").read_bytes() == (src / "gateway.json").read_bytes()
    assert _run(script, "--check").returncode == 0
    (src / "gateway.json").write_text('{"title": "gateway v2"}\n')
    assert _run(script, "--check").returncode == 1


def test_sync_script_refuses_invalid_json(tmp_path: Path) -> None:
    script, src, dst = _tree(tmp_path)
    (src / "broken.json").write_text("{not json")
    proc = _run(script)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr
    assert not (dst / "broken.json").exists()

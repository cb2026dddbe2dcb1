"""Fixtures for the evals tests: a fake OpenAI-compatible server on a free 127.0.0.1 port."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import PYTHON, ROOT, free_port, running

EXAMPLE = ROOT / "evals" / "datasets" / "support_cohorts.jsonl"
COHORTGATE = str(ROOT / ".venv" / "bin" / "cohortgate")


@contextmanager
def fake_server(tmp: Path, delay_ms: float = 0, fail_every: int = 0, require_key: str = "") -> Iterator[str]:
    port = free_port()
    cmd = [
        PYTHON,
        "-m",
        "tests.evals.fake_openai",
        "--port",
        str(port),
        "--delay-ms",
        str(delay_ms),
        "--fail-every",
        str(fail_every),
        "--require-key",
        require_key,
    ]
    with running(cmd, ready_url=f"http://127.0.0.1:{port}/health", log=tmp / f"fake-{port}.log", cwd=ROOT):
        yield f"http://127.0.0.1:{port}"


def stats(base: str) -> dict:
    with urllib.request.urlopen(base + "/stats", timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def small_dataset(tmp_path: Path) -> Callable[[int], Path]:
    def make(n_per_cohort: int) -> Path:
        rows, seen = [], {}
        for line in EXAMPLE.read_text().splitlines():
            c = json.loads(line)["cohort"]
            if seen.get(c, 0) < n_per_cohort:
                seen[c] = seen.get(c, 0) + 1
                rows.append(line)
        p = tmp_path / f"small-{n_per_cohort}.jsonl"
        p.write_text("\n".join(rows) + "\n")
        return p

    return make

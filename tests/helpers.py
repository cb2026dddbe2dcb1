"""Shared test helpers: free ports, managed subprocesses, readiness waits, tool requirements."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str, hint: str = "") -> str:
    """Path of a system tool; skip without it on a dev machine, fail in CI (never a silent skip)."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} is not installed{': ' + hint if hint else ''} (.ci/run installs it)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def wait_http(
    url: str, timeout: float = 30.0, ok: Sequence[int] = (200,), proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll url until it answers one of `ok` statuses; fail early if proc died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
                last = f"status {r.status}"
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return
            last = f"status {e.code}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s ({last})")


@contextmanager
def running(
    cmd: Sequence[str],
    *,
    ready_url: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    log: Path | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a process (in its own process group), wait for ready_url, always stop it."""
    full_env = {**os.environ, **(env or {})}
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        list(cmd),
        env=full_env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=str(cwd) if cwd else None,
    )
    try:
        if ready_url:
            try:
                wait_http(ready_url, timeout=timeout, proc=proc)
            except Exception:
                if log:
                    sys.stderr.write(Path(log).read_text(errors="replace")[-4000:])
                raise
        yield proc
    finally:
        stop(proc)
        if log:
            out.close()  # type: ignore[union-attr]


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll cond() until it is true or the timeout passes; returns whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return False

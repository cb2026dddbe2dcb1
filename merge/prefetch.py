"""Start reading the input checkpoints into the page cache while Python imports torch.

Contract: `start(cfg, config_path)` returns at once; a daemon thread asks the kernel
(`posix_fadvise(WILLNEED)`) to read the models' safetensors files, in the order the merge reads
them, up to half of the currently available memory, so a cold-cache merge does not wait for the
disk after its (seconds long) interpreter start-up. Purely advisory: failures are ignored, and
nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from merge.config import MergeConfig, resolve_model_path
from merge.errors import MergeError


def _available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _weight_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()), key=lambda f: (len(f), f))
            return [d / n for n in names]
        except (OSError, ValueError, KeyError):
            return []
    return sorted(d.glob("*.safetensors"))


def start(cfg: MergeConfig, config_path: Path) -> threading.Thread | None:
    if not hasattr(os, "posix_fadvise"):
        return None
    try:
        dirs = [resolve_model_path(r.path, config_path) for r in cfg.referenced_models()]
    except MergeError:
        return None  # the planner reports it properly
    per_model = [_weight_files(d) for d in dirs]
    # interleave the models file by file: the merge reads the same tensor of every model together
    files = [f for group in zip(*per_model, strict=False) for f in group]
    files += [f for fs in per_model for f in fs[len(min(per_model, key=len)):] if f not in files]
    budget = _available_bytes() // 2

    def run() -> None:
        left = budget
        for f in files:
            try:
                size = f.stat().st_size
                if size > left:
                    return
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
                finally:
                    os.close(fd)
                left -= size
            except OSError:
                continue

    th = threading.Thread(target=run, name="merge-prefetch", daemon=True)
    th.start()
    return th

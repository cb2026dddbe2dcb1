"""Run `cohortgate merge ...` in-process (click's CliRunner) or as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from merge.cli import command


def cg(*args: Any) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args] + ([] if args and str(args[0]) == "verify" else []),
                              catch_exceptions=False)


def merge(config: Path, out: Path, *extra: Any) -> Result:
    return cg(config, out, "--no-progress", *extra)


def subprocess_cli(*args: Any, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "merge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=str(Path(__file__).resolve().parents[2]))

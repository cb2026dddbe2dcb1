"""Error taxonomy of the merge package, mapped to CLI exit codes in one place (`merge.cli`).

    MergeError                 exit 1   base class; an unexpected failure during the merge
    ├── ConfigError            exit 2   the YAML config (or a CLI argument) is invalid
    ├── IncompatibleError      exit 2   the inputs cannot be merged as asked (a refusal)
    ├── DestinationError       exit 2   the output directory exists (no --force) or is unusable
    └── VerifyError            exit 3   `merge verify` found a mismatch with provenance.json

Every message names the file/field/model at fault and, for refusals, how to override.
"""

from __future__ import annotations


class MergeError(Exception):
    exit_code = 1


class ConfigError(MergeError):
    exit_code = 2


class IncompatibleError(MergeError):
    """A refusal found by the pre-flight checks. `override` names the flag or config key that
    lifts it (None when no override is possible)."""

    exit_code = 2

    def __init__(self, message: str, override: str | None = None) -> None:
        self.override = override
        full = message if override is None else f"{message}\n  override: {override}"
        super().__init__(full)


class DestinationError(MergeError):
    exit_code = 2


class VerifyError(MergeError):
    exit_code = 3

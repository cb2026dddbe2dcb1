"""Offline checkpoint merging for cohortgate.

Contract: `cohortgate merge CONFIG.yaml OUT_DIR` reads a mergekit YAML config unchanged, refuses
incompatible inputs before reading any tensor data, streams tensors through a method from
`merge.methods` (fp32 compute, bounded memory) and writes a Hugging Face model directory
atomically together with a `provenance.json` that `cohortgate merge verify` re-checks.

This package never imports `gateway/`; torch is imported only by the modules that do tensor work.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"

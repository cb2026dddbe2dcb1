"""Build of the optional compiled fast path of request tracing (gateway/_spanenc_c/).

Everything else is in pyproject.toml. The extension is optional: without a C compiler and the
Python headers the install still succeeds and tracing uses its pure-Python encoder (same bytes,
more CPU per traced request: docs/observability.md)."""

from pathlib import Path

from setuptools import Extension, setup

SRC = Path("gateway/_spanenc_c")

setup(ext_modules=[Extension(
    "gateway._spanenc",
    sources=[str(p) for p in sorted(SRC.glob("*.c"))],
    depends=[str(p) for p in sorted(SRC.glob("*.h"))],
    optional=True,
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-parameter"],
)])

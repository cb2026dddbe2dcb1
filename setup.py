"""Build of the optional compiled fast path of request tracing (gateway/_spanenc.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler and the
Python headers the install still succeeds and tracing uses its pure-Python encoder (same bytes,
more CPU per traced request: docs/observability.md)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("gateway._spanenc", ["gateway/_spanenc.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wno-unused-parameter"])])

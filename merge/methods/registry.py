"""The one explicit list of merge methods, by mergekit name.

A method's module is imported when the method is first looked up: most modules import torch at
the top, and a merge with a method the torch-free engine runs (linear, task arithmetic) must not
pay torch's ~1.5 s import just to build its plan.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from merge.methods.base import Method

# name -> (module under merge.methods, class, constructor keyword arguments)
_SPECS: dict[str, tuple[str, str, dict[str, bool]]] = {
    "linear": ("linear", "Linear", {}),
    "task_arithmetic": ("task_arithmetic", "TaskArithmetic", {}),
    "ties": ("ties", "Ties", {}),
    "dare_linear": ("dare", "Dare", {"consensus": False}),
    "dare_ties": ("dare", "Dare", {"consensus": True}),
    "breadcrumbs": ("breadcrumbs", "Breadcrumbs", {"consensus": False}),
    "breadcrumbs_ties": ("breadcrumbs", "Breadcrumbs", {"consensus": True}),
    "della": ("della", "Della", {"consensus": True}),
    "della_linear": ("della", "Della", {"consensus": False}),
    "slerp": ("slerp", "Slerp", {}),
    "nuslerp": ("nuslerp", "NuSlerp", {}),
    "model_stock": ("model_stock", "ModelStock", {}),
    "passthrough": ("passthrough", "Passthrough", {}),
}


class _Methods(Mapping[str, Method]):
    """name -> Method instance, each built (and its module imported) on first access."""

    def __init__(self) -> None:
        self._made: dict[str, Method] = {}

    def __getitem__(self, name: str) -> Method:
        if name not in self._made:
            module, cls, kwargs = _SPECS[name]
            method = getattr(importlib.import_module(f"merge.methods.{module}"), cls)(**kwargs)
            assert method.name == name, (method.name, name)
            self._made[name] = method
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_SPECS)

    def __len__(self) -> int:
        return len(_SPECS)


METHODS: Mapping[str, Method] = _Methods()


def get_method(name: str) -> Method:
    from merge.errors import ConfigError

    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"merge_method: unknown method {name!r}; supported: {', '.join(sorted(METHODS))}") from None

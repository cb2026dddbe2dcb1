"""The one explicit list of merge methods, by mergekit name."""

from __future__ import annotations

from merge.methods.base import Method
from merge.methods.breadcrumbs import Breadcrumbs
from merge.methods.dare import Dare
from merge.methods.della import Della
from merge.methods.linear import Linear
from merge.methods.model_stock import ModelStock
from merge.methods.nuslerp import NuSlerp
from merge.methods.passthrough import Passthrough
from merge.methods.slerp import Slerp
from merge.methods.task_arithmetic import TaskArithmetic
from merge.methods.ties import Ties

METHODS: dict[str, Method] = {m.name: m for m in [
    Linear(), TaskArithmetic(), Ties(), Dare(consensus=False), Dare(consensus=True),
    Breadcrumbs(consensus=False), Breadcrumbs(consensus=True), Della(consensus=True), Della(consensus=False),
    Slerp(), NuSlerp(), ModelStock(), Passthrough(),
]}


def get_method(name: str) -> Method:
    from merge.errors import ConfigError

    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"merge_method: unknown method {name!r}; supported: {', '.join(sorted(METHODS))}") from None

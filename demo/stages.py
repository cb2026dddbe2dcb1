"""A small progress view for the demo: numbered stages with timings and a final summary table.

Every stage prints what it is doing and how long it took, and the run ends with one table of
stage timings (cached stages say so), so a user sees where the minutes went.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    note: str = ""
    ok: bool = True


@dataclass
class StageView:
    total: int
    console: Console = field(default_factory=lambda: Console(highlight=False))
    stages: list[Stage] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        st = Stage(name)
        self.stages.append(st)
        self.console.rule(f"[bold][{len(self.stages)}/{self.total}] {name}")
        t0 = time.monotonic()
        try:
            yield st
        except BaseException:
            st.ok = False
            st.seconds = time.monotonic() - t0
            self.console.print(f"[red]stage '{name}' failed after {st.seconds:.1f}s")
            raise
        st.seconds = time.monotonic() - t0
        self.console.print(f"[green]done[/] in {st.seconds:.1f}s" + (f" ({st.note})" if st.note else ""))

    def say(self, text: str) -> None:
        self.console.print(text)

    def summary(self) -> Table:
        t = Table(title="cohortgate demo: stages")
        t.add_column("stage")
        t.add_column("seconds", justify="right")
        t.add_column("note")
        for s in self.stages:
            t.add_row(s.name if s.ok else f"[red]{s.name} (failed)", f"{s.seconds:.1f}", s.note)
        t.add_row("[bold]total", f"[bold]{sum(s.seconds for s in self.stages):.1f}", "")
        return t

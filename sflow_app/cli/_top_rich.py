"""``sflow-app top`` on a terminal with rich installed (the ``sflow-app[cli]`` extra)."""

from __future__ import annotations

from rich.console import Group
from rich.live import Live
from rich.table import Table

from ._top import Top


class RichView:
    def __init__(self, top: Top) -> None:
        self.top = top
        self.live = Live(auto_refresh=False, screen=False)
        self.live.start()

    def render(self, elapsed: float) -> Group:
        tables = []
        for title, cols, rows in self.top.tables(elapsed):
            table = Table(title=title, title_justify="left", expand=False)
            for i, col in enumerate(cols):
                table.add_column(col, justify="left" if i == len(cols) - 1 else "right")
            for row in rows:
                table.add_row(*row)
            tables.append(table)
        return Group(*tables)

    def __call__(self, elapsed: float) -> None:
        self.live.update(self.render(elapsed), refresh=True)

    def close(self) -> None:
        self.live.stop()

"""``sflow-app top`` on a terminal with rich installed (the ``sflow-app[cli]`` extra)."""

from __future__ import annotations

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._top import Top


class RichView:
    def __init__(self, top: Top) -> None:
        self.top = top
        self.live = Live(auto_refresh=False, screen=False)
        self.live.start()

    def render(self, elapsed: float) -> Group:
        head = self.top.plain(elapsed).splitlines()[0]
        parts: list[Text | Table] = [Text(head, style="bold")]
        for title, cols, rows in self.top.tables(elapsed):
            # The name (URI, key...) first: on a narrow terminal it folds, numbers do not.
            table = Table(title=title, title_justify="left")
            table.add_column(cols[-1], overflow="fold", ratio=1)
            for col in cols[:-1]:
                table.add_column(col, justify="right", no_wrap=True)
            for row in rows:
                # Text, not str: rich would read a URI's [link=...] as its own markup.
                table.add_row(Text(row[-1]), *row[:-1])
            parts.append(table)
        return Group(*parts)

    def __call__(self, elapsed: float) -> None:
        self.live.update(self.render(elapsed), refresh=True)

    def close(self) -> None:
        self.live.stop()

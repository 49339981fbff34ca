"""A paged view: one item at a time rendered as HTML, with Prev/Next and a position label."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as widgets

from nbkit.widgets.panel import Panel, css

ROLE_COLOURS = {"system": "#eeeeee", "user": "#e3f2fd", "assistant": "#e8f5e9"}


class Pager(Panel):
    def __init__(self, items: Sequence[Any], render: Callable[[Any], str], title: str = "", name: str = "pager"):
        self.items, self.render, self.index = items, render, 0
        self.prev = css(widgets.Button(description="◀ Prev", layout=widgets.Layout(width="90px")), f"nbkit-{name}-prev")
        self.next = css(widgets.Button(description="Next ▶", layout=widgets.Layout(width="90px")), f"nbkit-{name}-next")
        self.position = css(widgets.Label(""), f"nbkit-{name}-position")
        self.view = css(widgets.HTML(""), f"nbkit-{name}-view")
        self.prev.on_click(lambda _: self.go(self.index - 1))
        self.next.on_click(lambda _: self.go(self.index + 1))
        header = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        self.box = css(
            widgets.VBox(header + [widgets.HBox([self.prev, self.next, self.position]), self.view]), f"nbkit-{name}"
        )
        self.go(0)

    def go(self, index: int) -> None:
        if not self.items:
            self.position.value, self.view.value = "0 / 0", "<i>nothing to show</i>"
            return
        self.index = max(0, min(index, len(self.items) - 1))
        self.position.value = f"{self.index + 1} / {len(self.items)}"
        self.view.value = self.render(self.items[self.index])


def bubble_html(message: dict[str, Any], classes: str) -> str:
    """One message as a bubble coloured by its role (the previews and the playground's transcript)."""
    role = str(message["role"])
    return (
        f'<div class="{classes}" style="background:{ROLE_COLOURS.get(role, "#fff")};border-radius:8px;'
        f'padding:6px 10px;margin:4px 0;white-space:pre-wrap"><b>{html.escape(role)}</b><br>'
        f"{html.escape(message.get('content') or '')}</div>"
    )


def chat_html(row: dict[str, Any]) -> str:
    """A conversation as coloured bubbles, with its provenance underneath."""
    bubbles = [bubble_html(m, f"nbkit-msg-{m['role']}") for m in row["messages"]]
    meta = ", ".join(f"{k}={v}" for k, v in row.get("meta", {}).items())
    return "".join(bubbles) + f'<div style="color:#888;font-size:small">{html.escape(meta)}</div>'


def chat_preview(rows: Sequence[dict[str, Any]], title: str = "Examples") -> Pager:
    return Pager(rows, chat_html, title, name="preview")

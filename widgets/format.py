"""Panel for notebook 02: model, length limit and thinking switch, then a loss-mask viewer over the formatted rows."""

from __future__ import annotations

import html
from typing import Any

from nbkit.data.formatting import FormatConfig
from nbkit.model.loss_mask import mask_segments
from nbkit.widgets.pager import Pager
from nbkit.widgets.panel import ConfigForm, css


def format_panel(config: FormatConfig) -> ConfigForm:
    form = ConfigForm(config, ["base_model", "max_seq_len", "thinking"], title="Chat template and length")
    css(form.box, "nbkit-format-panel")
    return form


def mask_html(segments: list[tuple[str, bool]]) -> str:
    """Trained text in green, masked (context) text in grey, as the model sees it."""
    spans = [
        f'<span class="{"nbkit-trained" if trained else "nbkit-masked"}" style="background:'
        f'{"#c8e6c9" if trained else "#eeeeee"};white-space:pre-wrap">{html.escape(text)}</span>'
        for text, trained in segments
    ]
    legend = (
        '<div style="font-size:small"><span style="background:#c8e6c9">trained (loss)</span> '
        '<span style="background:#eeeeee">masked (context only)</span></div>'
    )
    return legend + '<div style="font-family:monospace">' + "".join(spans) + "</div>"


def mask_viewer(tokenizer, rows: list[dict[str, Any]], max_seq_len: int) -> Pager:
    """Each row as training sees it (its tools rendered, cut at max_seq_len); weight-0 replies show as context."""
    return Pager(
        rows,
        lambda row: mask_html(mask_segments(tokenizer, row["messages"], max_seq_len, tools=row.get("tools"))),
        "Loss mask: what the model learns from",
        name="mask",
    )

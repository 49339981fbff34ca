"""Panel for notebook 01: choose sources, upload files, then browse kept and rejected rows."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from nbkit.collect import CollectConfig
from nbkit.widgets.pager import Pager, chat_preview
from nbkit.widgets.panel import ConfigForm, Panel, css, message_html
from nbkit.workspace import Workspace, read_jsonl


def uploaded_files(upload: widgets.FileUpload) -> list[tuple[str, bytes]]:
    """(name, content) pairs from a FileUpload, for ipywidgets 7 (dict) and 8 (tuple of dicts)."""
    value = upload.value
    if isinstance(value, dict):  # ipywidgets 7
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value]


class CollectPanel(Panel):
    """Edit `config.sources`; uploaded files are saved under WORKSPACE/uploads/ and added to the sources."""

    def __init__(self, config: CollectConfig) -> None:
        self.config = config
        self.form = ConfigForm(config, ["sources"], title="Sources (empty = bundled sample data)")
        self.upload = css(widgets.FileUpload(accept=".jsonl,.json,.csv,.tsv,.parquet", multiple=True,
                                             description="Upload"), "nbkit-upload")
        self.status = css(widgets.HTML(""), "nbkit-collect-status")
        self.upload.observe(lambda _: self.save_uploads(), names="value")
        self.box = css(widgets.VBox([self.form.box, self.upload, self.status]), "nbkit-collect-panel")

    def save_uploads(self) -> list[Path]:
        folder = Workspace(self.config.workspace).root / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        saved = []
        for name, content in uploaded_files(self.upload):
            path = folder / Path(name).name  # never let an uploaded name escape the folder
            path.write_bytes(content)
            saved.append(path)
            if str(path) not in self.config.sources:
                self.config.sources.append(str(path))
        if saved:
            self.form.refresh()
            self.status.value = message_html(f"saved {', '.join(p.name for p in saved)} to {folder}", "ok")
        return saved


def rejected_html(row: dict[str, Any]) -> str:
    where = next((f"{k} {row[k]}" for k in ("line", "index", "row") if k in row), "")
    return (f'<div><b>{html.escape(row["category"])}</b> — {html.escape(row["source"])} {where}<br>'
            f'{html.escape(row["message"])}<pre style="white-space:pre-wrap;background:#fff3f3">'
            f'{html.escape(row["raw"][:2000])}</pre></div>')


def collect_results(workspace: str) -> widgets.Widget:
    """Tabs with the kept rows as chats and the rejected rows with their reasons."""
    ws = Workspace(workspace)
    kept = chat_preview(read_jsonl(ws.clean), "Kept rows")
    rejected = Pager(read_jsonl(ws.rejected), rejected_html, "Rejected rows", name="rejected")
    tabs = widgets.Tab(children=[kept.box, rejected.box])
    tabs.set_title(0, "kept")
    tabs.set_title(1, "rejected")
    return css(tabs, "nbkit-collect-results")

"""Panels for notebook 01: choose sources and mappings, upload files, browse kept and rejected rows,
add examples by hand and fix rejected rows (both saved to WORKSPACE/data/manual.jsonl, which the
next collect run reads).
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import yaml

from nbkit.core.errors import ConfigError
from nbkit.core.files import read_jsonl
from nbkit.core.messages import INVALID_JSON, RecordError
from nbkit.core.readers import SUFFIXES
from nbkit.core.schemas import parse_text_block
from nbkit.core.workspace import Workspace, describe_provenance
from nbkit.data.collect import CollectConfig
from nbkit.data.manual import add_manual_example, manual_path
from nbkit.widgets.pager import Pager, chat_preview
from nbkit.widgets.panel import ConfigForm, Panel, css, message_html

UPLOAD_TYPES = ",".join(SUFFIXES)  # the file types collect reads
TEXTAREA = {"layout": widgets.Layout(width="640px"), "style": {"description_width": "90px"}}


def guarded(status: widgets.HTML, action: Callable[[], Any]) -> Callable[..., None]:
    """A callback that runs `action` and shows any exception in `status` (widget callbacks
    otherwise swallow errors into a log nobody sees)."""

    def callback(*_: Any) -> None:
        try:
            action()
        except Exception as err:  # noqa: BLE001 — shown to the user, never lost
            status.value = message_html(f"{type(err).__name__}: {err}", "error")

    return callback


def uploaded_files(upload: widgets.FileUpload) -> list[tuple[str, bytes]]:
    """(name, content) pairs from a FileUpload, for ipywidgets 7 (dict) and 8 (tuple of dicts)."""
    value = upload.value
    if isinstance(value, dict):  # ipywidgets 7
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value]


class CollectPanel(Panel):
    """Edit `config.sources`, `columns` and `roles`; uploaded files are saved under WORKSPACE/uploads/
    and added to the sources."""

    def __init__(self, config: CollectConfig) -> None:
        self.config = config
        self.form = ConfigForm(config, ["sources", "sheet"], title="Sources (empty = bundled sample data)")
        self.status = css(widgets.HTML(""), "nbkit-collect-status")
        self.mappings = {name: self._mapping_input(name) for name in ("columns", "roles")}
        self.upload = css(widgets.FileUpload(accept=UPLOAD_TYPES, multiple=True, description="Upload"), "nbkit-upload")
        self.upload.observe(guarded(self.status, self.save_uploads), names="value")
        rows = [
            widgets.HBox(
                [control, widgets.HTML(f'<span style="color:#666">{html.escape(CollectConfig.help()[name])}</span>')]
            )
            for name, control in self.mappings.items()
        ]
        self.box = css(widgets.VBox([self.form.box, *rows, self.upload, self.status]), "nbkit-collect-panel")

    def _mapping_input(self, name: str) -> widgets.Text:
        value = getattr(self.config, name)
        control = widgets.Text(
            value=json.dumps(value) if value else "",
            description=name,
            continuous_update=False,
            placeholder='{"question": "prompt"}' if name == "columns" else '{"human": "user"}',
            style={"description_width": "170px"},
            layout=widgets.Layout(width="420px"),
        )
        control.observe(guarded(self.status, lambda: self.set_mapping(name, control.value)), names="value")
        return css(control, "nbkit-field", f"nbkit-field-{name}")

    def set_mapping(self, name: str, text: str) -> bool:
        """Apply `columns`/`roles` typed as JSON ({"q": "prompt"}) or YAML (q: prompt); empty = no mapping."""
        try:
            value = parse_mapping(name, text)
            candidate = dataclasses.replace(self.config, **{name: value})
        except ConfigError as err:
            self.status.value = message_html(str(err), "error")
            return False
        setattr(self.config, name, getattr(candidate, name))
        self.status.value = message_html(f"{name}: {json.dumps(value) if value else 'no mapping'}", "ok")
        return True

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


def parse_mapping(name: str, text: str) -> dict:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = None
    if not isinstance(value, dict):
        raise ConfigError(
            f'`{name}` must be a mapping like {{"question": "prompt"}}, got {text!r} — '
            "type it as JSON, or one `old: new` per line."
        )
    return value


def rejected_html(row: dict[str, Any]) -> str:
    return (
        f"<div><b>{html.escape(row['category'])}</b> — {html.escape(describe_provenance(row))}<br>"
        f'{html.escape(row["message"])}<pre style="white-space:pre-wrap;background:#fff3f3">'
        f"{html.escape(row['raw'][:2000])}</pre></div>"
    )


def collect_results(workspace: str) -> widgets.Widget:
    """Tabs with the kept rows as chats and the rejected rows with their reasons."""
    ws = Workspace(workspace)
    kept = chat_preview(read_jsonl(ws.clean), "Kept rows")
    rejected = Pager(read_jsonl(ws.rejected), rejected_html, "Rejected rows", name="rejected")
    tabs = widgets.Tab(children=[kept.box, rejected.box])
    tabs.set_title(0, "kept")
    tabs.set_title(1, "rejected")
    return css(tabs, "nbkit-collect-results")


# -- examples by hand --------------------------------------------------------------------


class ExampleEditor(Panel):
    """A form for one example (optional system text, user, assistant, optional label).

    "Add example" validates it exactly as collect would and appends it to
    WORKSPACE/data/manual.jsonl; an invalid example shows the reason and writes nothing.
    """

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace
        self.path = manual_path(workspace)
        self.system = css(
            widgets.Textarea(description="system", placeholder="optional: how the assistant behaves", **TEXTAREA),
            "nbkit-editor-system",
        )
        self.user = css(
            widgets.Textarea(description="user", placeholder="what the user asks", **TEXTAREA), "nbkit-editor-user"
        )
        self.assistant = css(
            widgets.Textarea(description="assistant", placeholder="the answer to learn", **TEXTAREA),
            "nbkit-editor-assistant",
        )
        self.label = css(
            widgets.Text(
                description="label",
                placeholder="optional, e.g. billing",
                layout=widgets.Layout(width="320px"),
                style={"description_width": "90px"},
            ),
            "nbkit-editor-label",
        )
        self.add = css(widgets.Button(description="Add example", button_style="success"), "nbkit-editor-add")
        self.status = css(widgets.HTML(""), "nbkit-editor-status")
        self.add.on_click(guarded(self.status, self.add_example))
        title = widgets.HTML(f"<b>Add an example</b> (saved to {html.escape(str(self.path))})")
        self.box = css(
            widgets.VBox([title, self.system, self.user, self.assistant, self.label, self.add, self.status]),
            "nbkit-editor",
        )

    def example(self) -> dict[str, Any]:
        messages = [
            {"role": "user", "content": self.user.value},
            {"role": "assistant", "content": self.assistant.value},
        ]
        if self.system.value.strip():
            messages.insert(0, {"role": "system", "content": self.system.value})
        record: dict[str, Any] = {"messages": messages}
        if self.label.value.strip():
            record["label"] = self.label.value.strip()
        return record

    def add_example(self) -> bool:
        empty = [name for name, box in (("user", self.user), ("assistant", self.assistant)) if not box.value.strip()]
        if empty:
            self.status.value = message_html(
                f"not added (missing_content): the {' and the '.join(empty)} "
                f"box {'is' if len(empty) == 1 else 'are'} empty",
                "error",
            )
            return False
        try:
            line = add_manual_example(self.workspace, self.example())
        except RecordError as err:
            self.status.value = message_html(f"not added ({err.category}): {err}", "error")
            return False
        self.status.value = message_html(
            f"added as line {line} of {self.path} — run the collect cell again to include it", "ok"
        )
        self.user.value = self.assistant.value = ""  # keep system and label for the next example
        return True


class RejectedFixer(Pager):
    """Page through rejected rows; edit a row's raw text and "Save fix" to append the repaired
    example to WORKSPACE/data/manual.jsonl (the source file is left as it is).

    The edit may be any recognised JSON layout, or a `### User` / `### Assistant` text block.
    Pass the same `columns`/`roles` as the CollectConfig so mapped rows are understood.
    """

    def __init__(self, workspace: str, columns: dict | None = None, roles: dict | None = None) -> None:
        self.workspace, self.columns, self.roles = workspace, columns or {}, roles or {}
        self.path = manual_path(workspace)
        rejected = Workspace(workspace).rejected
        self.raw = css(widgets.Textarea(description="fix", rows=8, **TEXTAREA), "nbkit-editor-fix-raw")
        self.save = css(widgets.Button(description="Save fix", button_style="success"), "nbkit-editor-fix-save")
        self.status = css(widgets.HTML(""), "nbkit-editor-fix-status")
        self.fixed: dict[int, int] = {}  # rejected index -> manual.jsonl line
        super().__init__(
            read_jsonl(rejected) if rejected.is_file() else [],
            rejected_html,
            "Fix rejected rows (saved to manual.jsonl)",
            name="editor-fix",
        )
        self.save.on_click(guarded(self.status, self.save_fix))
        self.box.children = (*self.box.children, self.raw, self.save, self.status)
        css(self.box, "nbkit-editor-fixer")

    def go(self, index: int) -> None:
        super().go(index)
        if not self.items:
            self.raw.value, self.save.disabled = "", True
            return
        self.save.disabled = False
        self.raw.value = editable(self.items[self.index]["raw"])
        line = self.fixed.get(self.index)
        self.status.value = message_html(f"fixed: line {line} of manual.jsonl", "ok") if line else ""

    def save_fix(self) -> bool:
        row = self.items[self.index]
        try:
            record = parse_fix(self.raw.value, self.roles)
            line = add_manual_example(
                self.workspace, record, columns=self.columns, roles=self.roles, fixed_from=describe_provenance(row)
            )
        except RecordError as err:
            self.status.value = message_html(f"not saved ({err.category}): {err}", "error")
            return False
        self.fixed[self.index] = line
        self.status.value = message_html(
            f"saved as line {line} of {self.path} — run the collect cell again to include it", "ok"
        )
        return True


def editable(raw: str) -> str:
    """Pretty-print a JSON raw row so it is easy to edit; other text (a .txt block, broken JSON) as is."""
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
    except ValueError:
        return raw


def parse_fix(text: str, roles: dict | None = None) -> Any:
    if text.lstrip().startswith("###"):
        return parse_text_block(text.strip("\n"), roles)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(
            INVALID_JSON, f"invalid JSON: {err.msg} at line {err.lineno}, column {err.colno}; nothing saved"
        ) from err

"""Tests that reshape a split by hand record the new file in the manifest, as 03 would have: later stages check
the split files against the manifest (Workspace.checked) and would otherwise, rightly, ask to re-run 03."""

from __future__ import annotations

from typing import Any

from nbkit.core.files import file_records, read_json, write_json, write_jsonl
from nbkit.core.workspace import SPLITS, Workspace


def rewrite_split(ws: Workspace, name: str, rows: list[dict[str, Any]]) -> None:
    write_jsonl(ws.split(name), rows)
    if ws.manifest.exists():
        manifest = read_json(ws.manifest)
        manifest["files"] = file_records(*(ws.split(n) for n in SPLITS), ws.leaked)
        write_json(ws.manifest, manifest)

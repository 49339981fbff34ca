"""Notebooks 01-03 under papermill on a folder of messy files: every planted fault is reported with
its file and position, every valid row is kept, and the later stages run on what was kept."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from nbkit.cli import main
from nbkit.core.files import read_jsonl
from nbkit.core.workspace import Workspace
from nbkit.data.collect import SAMPLE_DATA

pytestmark = pytest.mark.notebooks

MESSY = REPO / "tests" / "fixtures" / "messy"

PLANTED = {  # (file, position) -> category, as described in tests/fixtures/messy/README.md
    ("tickets.jsonl", 3): "invalid_json",
    ("tickets.jsonl", 4): "no_assistant_message",
    ("tickets.jsonl", 5): "unrecognized_role",
    ("tickets.jsonl", 6): "missing_content",
    ("tickets.jsonl", 7): "message_missing_key",
    ("tickets.jsonl", 8): "unrecognized_key",
    ("tickets.jsonl", 9): "empty_conversation",
    ("tickets.jsonl", 10): "bad_role_order",
    ("tickets.jsonl", 11): "data_type",
    ("tickets.jsonl", 12): "missing_messages",
    ("tickets.jsonl", 13): "duplicate",
    ("tickets.jsonl", 15): "not_utf8",
    ("exports.csv", 2): "missing_content",
    ("mixed.json", 2): "unrecognized_role",
}
VALID = {
    ("tickets.jsonl", 1),
    ("tickets.jsonl", 14),
    ("tickets.jsonl", 16),
    ("exports.csv", 1),
    ("exports.csv", 3),
    ("mixed.json", 0),
    ("mixed.json", 1),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("messy") / "workspace"
    sources = json.dumps([str(MESSY), str(SAMPLE_DATA)])
    assert main(["run", "--workspace", str(ws), "--only", "01,02,03", "--quiet", "-p", "sources", sources]) == 0
    return Workspace(ws)


def position(record: dict) -> int:
    return next(record[k] for k in ("line", "index", "row") if k in record)


def test_every_planted_fault_is_rejected_with_its_file_position_and_category(workspace):
    rejected = {(r["source"].rsplit("/", 1)[-1], position(r)): r for r in read_jsonl(workspace.rejected)}
    assert {key: r["category"] for key, r in rejected.items()} == PLANTED
    assert all(r["message"] and r["raw"] for r in rejected.values())
    assert "caf\\xe9" in rejected[("tickets.jsonl", 15)]["raw"]  # shown, never decoded into mojibake


def test_every_valid_row_is_kept_and_nothing_is_lost(workspace):
    report = json.loads(workspace.collect_report.read_text())
    assert report["read"] == report["kept"] + report["rejected"] == 400 + len(PLANTED) + len(VALID)
    assert report["rejected"] == len(PLANTED) and report["duplicates"] == 1 and report["blank_lines"] == 1
    kept = {(r["meta"]["source"].rsplit("/", 1)[-1], position(r["meta"])) for r in read_jsonl(workspace.clean)}
    assert VALID <= kept
    csv_row = next(r for r in read_jsonl(workspace.clean) if r["meta"].get("row") == 1)
    assert csv_row["messages"][0]["content"] == "The app crashes when I open settings.\nIt started yesterday."


def test_later_stages_ran_on_the_kept_rows(workspace):
    manifest = json.loads(workspace.manifest.read_text())
    assert sum(manifest["sizes"].values()) - manifest["replay"]["rows"] == 400 + len(VALID)  # replay: train only
    for name in ("01_collect", "02_format", "03_split"):
        nb = json.loads((workspace.executed / f"{name}.ipynb").read_text())
        assert not [
            o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"] if o["output_type"] == "error"
        ], name

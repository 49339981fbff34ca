"""Nothing lost when the runtime dies: whole files change atomically, append-only files survive a cut-off line,
and a stage killed mid-write can be re-run (the next stage names it until then)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nbkit.core.errors import DataError, WorkspaceError
from nbkit.core.files import (
    append_jsonl,
    atomic_file,
    atomic_folder,
    file_records,
    read_appended,
    write_json,
    write_jsonl,
)
from nbkit.core.runs import read_metrics
from nbkit.core.workspace import Workspace
from nbkit.evaluate.ratings import load_ratings, save_rating

REPO = Path(__file__).resolve().parent.parent
KILLER = REPO / "tests" / "kill_during_write.py"


def killed_while_writing(name: str, writes: int, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python killed by SIGKILL at the WRITES-th write to the file NAME."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(KILLER), name, str(writes), code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == -9, f"not killed mid-write (exit {done.returncode}): {done.stderr[-2000:]}"
    return done


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if p.name.endswith((".tmp", ".partial")))


# -- whole files ---------------------------------------------------------------------------------------------


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"n": 1}])
    with pytest.raises(RuntimeError):
        with atomic_file(path) as fh:
            fh.write('{"n": 2}\n{"n": ')
            raise RuntimeError("interrupted")
    assert path.read_text() == '{"n": 1}\n'
    assert list(tmp_path.iterdir()) == [path]


def test_a_killed_write_leaves_the_old_file_whole_and_the_next_write_clears_its_temporary(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"n": i, "text": "old"} for i in range(3)])
    code = f"from nbkit.core.files import write_jsonl; write_jsonl({str(path)!r}, ({{'n': i}} for i in range(1000)))"
    killed_while_writing("rows.jsonl", 500, code, tmp_path)
    assert [r["text"] for r in map(json.loads, path.read_text().splitlines())] == ["old"] * 3
    assert len(hidden_leftovers(tmp_path)) == 1  # the dead writer's half file, never read as the file
    write_json(tmp_path / "other.json", {})
    write_jsonl(path, [{"n": 1}])
    assert hidden_leftovers(tmp_path) == [] and path.read_text() == '{"n": 1}\n'


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "merged"
    with atomic_folder(target) as folder:
        (folder / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as folder:
            (folder / "a.txt").write_text("new")
            raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "old" and hidden_leftovers(tmp_path) == []
    with atomic_folder(target) as folder:
        (folder / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and hidden_leftovers(tmp_path) == []


# -- append-only files ----------------------------------------------------------------------------------------


def cut_off(path: Path, record: dict, keep: int) -> bytes:
    """Append the first KEEP bytes of a record's line, as a kill mid-append leaves it."""
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode()[:keep]
    with open(path, "ab") as fh:
        fh.write(line)
    return line


def test_a_cut_off_last_line_is_set_aside_once_with_its_offset(tmp_path):
    path = tmp_path / "ratings.jsonl"
    for i in range(3):
        append_jsonl(path, {"prompt": f"p{i}", "winner": "tuned"})
    offset = path.stat().st_size
    cut_off(path, {"prompt": "p3", "winner": "base"}, 20)
    with pytest.warns(UserWarning, match=rf"line 4 \(byte {offset}\), cut off") as caught:
        rows = read_appended(path)
    assert [r["prompt"] for r in rows] == ["p0", "p1", "p2"] and len(caught) == 1


def test_the_next_append_starts_on_a_fresh_line_and_nothing_is_rewritten(tmp_path):
    path = tmp_path / "manual.jsonl"
    append_jsonl(path, {"n": 1})
    half = cut_off(path, {"n": 2, "text": "naïve café"}, 24)  # cut inside a two-byte character
    before = path.read_bytes()
    assert append_jsonl(path, {"n": 3}) == 3
    assert path.read_bytes().startswith(before)  # earlier bytes untouched, the half line included
    with pytest.warns(UserWarning, match=f"line 2 \\(byte {len(before) - len(half)}\\)"):
        assert [r["n"] for r in read_appended(path)] == [1, 3]


@pytest.mark.parametrize("garbage", ["hello there", '{"n": 2} trailing', '{"n": 2,, "m": 1}', "[1, 2]"])
def test_a_broken_complete_line_is_still_an_error_with_its_line_number(tmp_path, garbage):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"n": 1}\n' + garbage + '\n{"n": 3}\n')
    with pytest.raises(DataError, match=f"{path} line 2: "):
        read_appended(path)


def test_empty_missing_and_blank_lined_files(tmp_path):
    assert read_appended(tmp_path / "none.jsonl") == []
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert read_appended(tmp_path / "empty.jsonl") == []
    (tmp_path / "blank.jsonl").write_text('\n{"n": 1}\n\n')
    assert read_appended(tmp_path / "blank.jsonl") == [{"n": 1}]


def test_ratings_survive_a_cut_off_line_and_rating_goes_on(tmp_path):
    pair = {"prompt": "Where is my order?", "sides": {"A": "tuned", "B": "base"}}
    save_rating(tmp_path, pair, "A")
    cut_off(tmp_path / "eval" / "ratings.jsonl", {"prompt": "Refund?", "choice": "B"}, 15)
    with pytest.warns(UserWarning, match="cut off"):
        assert [r["winner"] for r in load_ratings(tmp_path)] == ["tuned"]
    save_rating(tmp_path, {**pair, "prompt": "Refund?"}, "B")
    with pytest.warns(UserWarning, match="cut off"):
        assert [r["winner"] for r in load_ratings(tmp_path)] == ["tuned", "base"]


def test_training_logs_survive_a_cut_off_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1, "loss": 2.0})
    cut_off(path, {"step": 2, "loss": 1.5}, 10)
    with pytest.warns(UserWarning):
        assert read_metrics(path) == [{"step": 1, "loss": 2.0}]


# -- a stage's inputs are the files its predecessor's report lists ------------------------------------------


def test_split_files_that_do_not_match_the_manifest_name_the_stage_to_rerun(tmp_path):
    ws = Workspace(tmp_path)
    for name in ("train", "validation", "test"):
        write_jsonl(ws.split(name), [{"messages": [], "meta": {"n": i}} for i in range(4)])
    write_json(ws.manifest, {"files": file_records(*(ws.split(n) for n in ("train", "validation", "test")))})
    assert len(ws.read_split("test")) == 4
    write_jsonl(ws.split("train"), [{"messages": [], "meta": {}}])  # a newer 03 killed before its manifest
    with pytest.raises(
        WorkspaceError,
        match=r"train.jsonl has 1 rows where manifest.json lists 4: 03_split was "
        r"interrupted.*re-run 03_split",
    ):
        ws.read_split("test")
    write_jsonl(ws.split("train"), [{"messages": [], "meta": {"n": -i}} for i in range(4)])
    with pytest.raises(WorkspaceError, match="is not the file manifest.json lists"):
        ws.checked(ws.manifest, "03_split")
    write_json(ws.manifest, {"files": file_records(*(ws.split(n) for n in ("train", "validation", "test")))})
    ws.split("validation").unlink()
    with pytest.raises(WorkspaceError, match="validation.jsonl is missing"):
        ws.checked(ws.manifest, "03_split")


# -- stages killed mid-write ---------------------------------------------------------------------------------


def whole_jsonl(path: Path) -> int:
    """Rows of a JSONL file, failing on any line that is not a whole JSON object."""
    return sum(isinstance(json.loads(line), dict) for line in path.read_text(encoding="utf-8").splitlines())


def test_format_killed_mid_write_leaves_whole_files_and_runs_again(prepared_workspace, tmp_path):
    import shutil

    from nbkit.data.formatting import FormatConfig, format_rows
    from nbkit.data.split import SplitConfig, split_dataset

    root = tmp_path / "workspace"
    shutil.copytree(prepared_workspace / "data", root / "data")
    ws = Workspace(root)
    config = FormatConfig(workspace=str(root), replay_guard=False, max_seq_len=96)
    code = f"from nbkit.data.formatting import FormatConfig, format_rows; format_rows(FormatConfig(**{config.to_dict()!r}))"
    old_rows = ws.formatted.read_bytes()
    for name, writes in (("rows.jsonl", 40), ("format_report.json", 1)):
        killed_while_writing(name, writes, code, tmp_path)
        assert whole_jsonl(ws.formatted) and whole_jsonl(ws.dropped) >= 0 and json.loads(ws.format_report.read_text())
        if name == "rows.jsonl":
            assert ws.formatted.read_bytes() == old_rows  # the old rows, whole
    # rows.jsonl is the new one now, the report the old one: 03 refuses to split it and names 02
    assert ws.formatted.read_bytes() != old_rows
    with pytest.raises(WorkspaceError, match="02_format was interrupted.*re-run 02_format"):
        split_dataset(SplitConfig(workspace=str(root)))
    report = format_rows(config)
    assert report["rows"] == whole_jsonl(ws.formatted) and report["max_seq_len"] == 96
    manifest = split_dataset(SplitConfig(workspace=str(root)))
    assert sum(manifest["sizes"].values()) == report["rows"] and hidden_leftovers(root) == []


@pytest.mark.model
def test_export_killed_mid_save_keeps_no_half_model_and_runs_again(sft_run, tmp_path):
    from nbkit.export.exporter import export_run

    root, run_id = sft_run
    export = Workspace(root).run_dir(run_id) / "export"
    code = (
        f"from nbkit.export.exporter import export_run; export_run({str(root)!r}, {run_id!r}, ['merged'], n_prompts=2)"
    )
    killed_while_writing("merged/", 0, code, tmp_path)
    assert not (export / "parity.json").exists() and not (export / "merged").exists()
    assert hidden_leftovers(export) == [".merged.partial"]
    record = export_run(root, run_id, ["merged"], n_prompts=2)
    assert record["merged"]["within_tolerance"] and (export / "parity.json").exists()
    assert (export / "merged" / "config.json").exists() and hidden_leftovers(export) == []

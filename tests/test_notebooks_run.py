"""The five guided notebooks executed headlessly by papermill, end to end, on the embedded model."""

from __future__ import annotations

import json

import pytest

from nbkit.cli import main
from nbkit.core.workspace import Workspace
from nbkit.pipeline import PIPELINE

pytestmark = [pytest.mark.notebooks, pytest.mark.model]

SMALL = [
    "-p",
    "max_steps",
    "3",
    "-p",
    "batch_size",
    "4",
    "-p",
    "eval_steps",
    "0",
    "-p",
    "max_examples",
    "6",
    "-p",
    "lora_r",
    "8",
    "-p",
    "lora_alpha",
    "16",
    "-p",
    "max_seq_len",
    "160",
]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    ws = tmp_path_factory.mktemp("notebooks") / "workspace"
    assert main(["run", "--workspace", str(ws), "--quiet", *SMALL]) == 0
    return Workspace(ws)


def outputs(path):
    nb = json.loads(path.read_text())
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]


def test_every_notebook_ran_without_a_traceback(executed):
    for name in PIPELINE:
        path = executed.executed / f"{name}.ipynb"
        assert path.exists(), name
        errors = [o for o in outputs(path) if o["output_type"] == "error"]
        assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}" if errors else ""
        text = json.dumps(outputs(path))
        assert "Traceback" not in text, name


def test_the_workspace_contract_is_written(executed):
    report = json.loads(executed.collect_report.read_text())
    assert report["read"] == report["kept"] + report["rejected"] and report["kept"] == 400
    manifest = json.loads(executed.manifest.read_text())
    # 320 task rows and the replay guard's 57 (15% of train), on by default
    assert manifest["sizes"] == {"train": 377, "validation": 40, "test": 40} and manifest["replay"]["rows"] == 57
    (run_dir,) = [p for p in executed.runs.iterdir() if p.is_dir()]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["max_steps"] == 3 and config["lora_r"] == 8  # -p values reached notebook 04
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary["n_test"] == 6 and {"exact_match", "perplexity"} <= set(summary["tuned"])


def test_headless_runs_show_no_widgets(executed):
    for name in PIPELINE:
        text = json.dumps(outputs(executed.executed / f"{name}.ipynb"))
        assert "application/vnd.jupyter.widget-view+json" not in text, name


def test_prefer_runs_headless_from_the_evaluated_run(executed, tmp_path):
    """06 with `nbkit run --only 06`: pairs from a user's TRL file and from sampled answers, two DPO steps from the
    SFT run, then base → SFT → DPO on the same test rows."""
    rows = [json.loads(line) for line in executed.split("train").read_text().splitlines()][:6]
    pairs = tmp_path / "prefs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": r["messages"][-2]["content"],
                    "chosen": r["messages"][-1]["content"],
                    "rejected": "I cannot help with that.",
                }
            )
            + "\n"
            for r in rows
            if r["messages"][-2]["role"] == "user"
        )
    )
    (sft,) = [p.name for p in executed.runs.iterdir()]
    assert (
        main(
            [
                "run",
                "--workspace",
                str(executed.root),
                "--only",
                "06",
                "--quiet",
                "-p",
                "sources",
                '["files", "metric"]',
                "-p",
                "files",
                json.dumps([str(pairs)]),
                "-p",
                "max_prompts",
                "2",
                "-p",
                "samples_per_prompt",
                "2",
                "-p",
                "max_steps",
                "2",
                "-p",
                "batch_size",
                "2",
                "-p",
                "compare_examples",
                "6",
                "-p",
                "run_id",
                "dpo",
            ]
        )
        == 0
    )
    nb = executed.executed / "06_prefer.ipynb"
    assert not [o for o in outputs(nb) if o["output_type"] == "error"]
    assert "application/vnd.jupyter.widget-view+json" not in json.dumps(outputs(nb))
    report = json.loads(executed.pairs_report.read_text())
    assert report["sources"]["file"]["kept"] >= 1 and report["sources"]["metric"]["read"] == 2
    run = json.loads((executed.run_dir("dpo") / "run.json").read_text())
    assert run["parent_run"] == sft and run["objective"] == "dpo" and run["steps"] == 2
    summary = json.loads((executed.run_dir("dpo") / "eval" / "summary.json").read_text())
    assert summary["n_test"] == 6 and "exact_match" in summary["tuned"]
    assert "dpo dpo" in json.dumps(outputs(nb)) and f"sft {sft}" in json.dumps(outputs(nb))  # the lineage table
    check = json.loads((executed.run_dir("dpo") / "eval" / "validation.json").read_text())
    assert set(check["scores"]) == {sft, "dpo"} and check["keep"] in (sft, "dpo") and check["rows"] > 0
    assert f"Validation split ({check['rows']} rows" in json.dumps(outputs(nb))


def test_a_single_notebook_reruns_alone_from_the_workspace(executed):
    assert main(["run", "--workspace", str(executed.root), "--only", "03", "--quiet", "-p", "seed", "7"]) == 0
    assert json.loads(executed.manifest.read_text())["seed"] == 7


def test_interactive_mode_builds_the_panels_without_errors(tmp_path):
    """The same notebooks with interactive=True (as in JupyterLab): panels render as widget outputs."""
    ws = tmp_path / "workspace"
    from nbkit.pipeline import run_notebooks

    run_notebooks(ws, only="01,02,03", params={"interactive": True}, log_output=False)
    for name in ("01_collect", "02_format", "03_split"):
        cells = outputs(ws / "executed" / f"{name}.ipynb")
        assert not [o for o in cells if o["output_type"] == "error"], name
        assert "application/vnd.jupyter.widget-view+json" in json.dumps(cells), name


def test_users_own_files_run_through_collect_and_format(tmp_path):
    """tests/fixtures/user_files (spreadsheet exports, OpenAI's JSONL, an .xlsx, a broken file) through 01-02."""
    from pathlib import Path

    folder = Path(__file__).parent / "fixtures" / "user_files"
    ws = Workspace(tmp_path / "workspace")
    assert (
        main(
            [
                "run",
                "--workspace",
                str(ws.root),
                "--only",
                "01,02",
                "--quiet",
                "-p",
                "sources",
                json.dumps([str(folder)]),
                "-p",
                "replay_guard",
                "false",
            ]
        )
        == 0
    )
    report = json.loads(ws.collect_report.read_text())
    assert (report["read"], report["kept"], report["rejected"]) == (19, 17, 2)
    assert [Path(u["source"]).name for u in report["unreadable"]] == ["broken.json"]
    printed = json.dumps(outputs(ws.executed / "01_collect.ipynb"))
    assert "faq.csv: 4 read, 3 kept, 1 rejected \\u2014 Question \\u2192 user, Answer \\u2192 assistant" in printed
    assert "broken.json: NOT READ" in printed
    formatted = json.loads(ws.format_report.read_text())
    # The embedded model's template renders no tools: the weather row is set aside with the reason, the rest kept.
    assert formatted["rows"] == 16 and formatted["rejected_rows"]["tools_not_rendered"] == 1
    assert formatted["rows"] + formatted["dropped_rows"] == formatted["clean_rows"] == 17
    assert formatted["replay"] == {"enabled": False, "rows": 0} and ws.replay.read_text() == ""  # switched off


def test_a_base_gemma_checkpoint_runs_the_five_notebooks_and_exports(tmp_path, family_model):
    """A non-Llama family through every notebook, headless: a tiny Gemma 3 checkpoint with the real Gemma 3 270M
    tokenizer and no chat template (as a base model ships). 02 gives it Gemma's template and says so; the replay
    guard finds nothing to replay and turns itself off; 05 exports GGUF and an Ollama Modelfile, each checked."""
    folder = family_model("gemma3")
    ws = Workspace(tmp_path / "workspace")
    assert (
        main(
            [
                "run",
                "--workspace",
                str(ws.root),
                "--quiet",
                *SMALL,
                "-p",
                "base_model",
                str(folder),
                "-p",
                "export_formats",
                '["gguf", "ollama"]',
            ]
        )
        == 0
    )
    printed = json.dumps(outputs(ws.executed / "02_format.ipynb"))
    assert "its vocabulary already has the gemma3 turn tokens" in printed and "Replay guard turned off" in printed
    formatted = json.loads(ws.format_report.read_text())
    assert formatted["chat_template"]["end_of_turn"] == "<end_of_turn>" and formatted["mask_problems"] == {}
    (run_dir,) = [p for p in ws.runs.iterdir() if p.is_dir()]
    parity = json.loads((run_dir / "export" / "parity.json").read_text())
    assert {"f16", "q8_0"} <= set(parity["gguf"]) and "refused" not in parity["gguf"]
    assert all(
        parity["gguf"][kind]["chat_template_in_file"] and parity["gguf"][kind]["end_of_turn"] == "<end_of_turn>"
        for kind in ("f16", "q8_0")
    )
    modelfile = (run_dir / "export" / "Modelfile").read_text()
    assert "<end_of_turn>" in modelfile and "<start_of_turn>model" in modelfile

"""Panels in plain Python: set values, click buttons, assert on the config and what is shown."""

from __future__ import annotations

import datetime

import ipywidgets as widgets
import pytest

import nbkit.widgets as nw
from nbkit.core.train_config import TrainConfig
from nbkit.data.collect import CollectConfig
from nbkit.data.formatting import FormatConfig
from nbkit.data.split import SplitConfig
from nbkit.evaluate.evaluator import EvalConfig


def test_form_applies_valid_values_to_the_config_in_place():
    config = TrainConfig()
    panel = nw.TrainPanel(config)
    panel.form.inputs["max_steps"].value = 7
    panel.form.inputs["learning_rate"].value = 5e-4
    panel.form.inputs["method"].value = "lora"
    assert (config.max_steps, config.learning_rate, config.method) == (7, 5e-4, "lora")
    assert panel.config is config
    assert panel.form.error.value == ""


def test_form_refuses_invalid_values_and_says_why():
    config = TrainConfig()
    panel = nw.TrainPanel(config)
    panel.form.inputs["batch_size"].value = 0
    assert config.batch_size == 8  # unchanged
    assert "`batch_size` must be &gt; 0" in panel.form.error.value
    panel.form.inputs["batch_size"].value = 4  # a valid value clears the error
    assert config.batch_size == 4 and panel.form.error.value == ""


def test_presets_fill_the_config_and_the_inputs():
    config = TrainConfig()
    panel = nw.TrainPanel(config)
    panel.preset.value = "quick look"
    assert config.max_steps == 30 and config.lora_r == 8
    assert panel.form.inputs["max_steps"].value == 30
    panel.preset.value = "thorough"
    assert config.max_steps == 0 and config.num_train_epochs == 3.0


def walk(widget):
    """The widget and everything inside it, in display order."""
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


def shown_fields(widget, skip=None) -> list[str]:
    """Config fields with an input under `widget`, in display order, leaving out the subtree `skip`."""
    if widget is skip:
        return []
    names = [c[len("nbkit-field-") :] for c in getattr(widget, "_dom_classes", ()) if c.startswith("nbkit-field-")]
    return names + [name for child in getattr(widget, "children", ()) for name in shown_fields(child, skip)]


def test_train_panel_shows_the_main_fields_first_and_the_rest_under_advanced():
    import dataclasses

    config = TrainConfig()
    panel = nw.TrainPanel(config)
    advanced = panel.form.advanced
    assert isinstance(advanced, widgets.Accordion) and "nbkit-advanced" in advanced._dom_classes
    assert advanced.selected_index is None, "collapsed until the user opens it (ipywidgets 7 opens page 0 by default)"
    assert advanced.get_title(0).startswith("Advanced: ")
    main, tucked = shown_fields(panel.box, skip=advanced), shown_fields(advanced)
    assert main == ["base_model", "method", "max_steps", "learning_rate", "batch_size", "max_seq_len"]
    order = list(walk(panel.box))
    assert order.index(panel.preset) < order.index(panel.form.inputs["base_model"]) < order.index(advanced)
    assert order.index(advanced) < order.index(panel.form.error), "errors show with Advanced closed too"
    # Together exactly TrainConfig's fields, each once: a new field shows up here or fails this test.
    # workspace alone stays out: the parameters cell sets it and the notebook's later cells read that folder.
    assert len(main + tucked) == len(set(main + tucked))
    assert set(main + tucked) | {"workspace"} == {f.name for f in dataclasses.fields(TrainConfig)}
    assert "workspace" not in main + tucked

    panel.form.inputs["lora_r"].value = 4  # an Advanced field writes into the config like any other
    panel.form.inputs["report_to"].value = "none"
    panel.form.inputs["resume"].value = True
    assert (config.lora_r, config.report_to, config.resume) == (4, "none", True)
    panel.form.inputs["lora_dropout"].value = 1.5
    assert config.lora_dropout == 0.05 and "`lora_dropout` must be in [0, 1)" in panel.form.error.value
    panel.preset.value = "thorough"  # presets fill Advanced fields and their inputs too
    assert (config.num_train_epochs, config.lora_r, config.eval_steps) == (3.0, 32, 50)
    assert (panel.form.inputs["num_train_epochs"].value, panel.form.inputs["save_steps"].value) == (3.0, 50)


def test_every_stage_panel_builds_with_stable_css_classes():
    panels = [
        nw.CollectPanel(CollectConfig()),
        nw.format_panel(FormatConfig()),
        nw.split_panel(SplitConfig()),
        nw.TrainPanel(TrainConfig()),
        nw.eval_panel(EvalConfig(workspace="/nonexistent")),
    ]
    for panel in panels:
        assert isinstance(panel.box, widgets.Box)
        bundle = panel._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "nbkit-field-max_steps" in nw.TrainPanel(TrainConfig()).form.inputs["max_steps"]._dom_classes


def test_format_panel_offers_the_thinking_switch():
    form = nw.format_panel(FormatConfig())
    assert form.config.thinking is False
    form.inputs["thinking"].value = True
    assert form.config.thinking is True  # format_rows renders with it (tests/test_families.py checks both values)


def test_split_panel_validates_fractions_together():
    config = SplitConfig()
    panel = nw.split_panel(config)
    panel.inputs["test_fraction"].value = 0.85
    assert config.test_fraction == 0.1
    assert "too little to train on" in panel.error.value


def test_sources_textarea_becomes_a_list(tmp_path):
    config = CollectConfig(workspace=str(tmp_path))
    panel = nw.CollectPanel(config)
    panel.form.inputs["sources"].value = "a.jsonl\n\n data/*.csv \n"
    assert config.sources == ["a.jsonl", "data/*.csv"]


def test_upload_saves_files_into_the_workspace_and_adds_them(tmp_path):
    config = CollectConfig(workspace=str(tmp_path))
    panel = nw.CollectPanel(config)
    content = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    if int(widgets.__version__.split(".")[0]) >= 8:
        panel.upload.value = (
            {
                "name": "../evil.jsonl",
                "type": "",
                "size": len(content),
                "content": memoryview(content),
                "last_modified": datetime.datetime(2026, 1, 1),
            },
        )
    else:  # ipywidgets 7 (Colab): `value` is read-only; the browser sends metadata and data, then bumps _counter
        panel.upload.set_trait("metadata", [{"name": "../evil.jsonl", "type": "", "size": len(content)}])
        panel.upload.set_trait("data", [content])
        panel.upload.set_trait("_counter", 1)
    saved = tmp_path / "uploads" / "evil.jsonl"
    assert saved.read_bytes() == content
    assert config.sources == [str(saved)]
    assert "evil.jsonl" in panel.form.inputs["sources"].value


def test_pager_buttons_move_and_stop_at_the_ends():
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}], "meta": {"line": i}} for i in range(3)]
    pager = nw.chat_preview(rows)
    assert pager.position.value == "1 / 3" and "question 0" in pager.view.value
    pager.next.click()
    pager.next.click()
    pager.next.click()
    assert pager.position.value == "3 / 3" and "question 2" in pager.view.value
    pager.prev.click()
    assert "question 1" in pager.view.value


def test_mask_viewer_colours_trained_and_masked_text(tokenizer):
    row = {
        "messages": [
            {"role": "user", "content": "Where is my parcel?"},
            {"role": "assistant", "content": '{"team": "shipping"}'},
        ]
    }
    view = nw.mask_viewer(tokenizer, [row], 512).view.value
    trained = view.split('class="nbkit-trained"')[1]
    assert "shipping" in trained.split("</span>")[0]
    assert "Where is my parcel?" in view.split('class="nbkit-trained"')[0]


def test_comparison_viewer_marks_matches():
    rows = [
        {"prompt": "p", "reference": "r", "base": "x", "tuned": "r", "base_exact_match": 0.0, "tuned_exact_match": 1.0}
    ]
    html = nw.comparison_viewer(rows).view.value
    assert "base ✗" in html and "tuned ✓" in html


def test_live_monitor_throttles_redraws_but_never_skips_evaluations():
    monitor = nw.LiveMonitor(min_interval=3600, mode="widget")
    if monitor.figure is None:
        pytest.skip("plotly FigureWidget unavailable here")
    for step in range(1, 21):
        monitor({"step": step, "max_steps": 30, "elapsed_s": step, "loss": 2.0 / step})
    assert monitor.draws == 1  # only the first log drew; the rest were throttled
    monitor({"step": 20, "max_steps": 30, "elapsed_s": 21, "eval_loss": 0.5})
    assert monitor.draws == 2 and "val_loss 0.5" in monitor.text.value
    monitor({"step": 30, "max_steps": 30, "elapsed_s": 31, "loss": 0.05})  # the last step always draws
    assert monitor.draws == 3
    train_trace, val_trace, lr_trace, grad_trace = monitor.figure.data
    assert len(train_trace.x) == 21 and list(val_trace.y) == [0.5]
    assert monitor.ui_share < 0.5  # measured, reported at the end of training


def test_live_monitor_buttons_drive_the_run_control():
    monitor = nw.LiveMonitor(mode="redraw")
    monitor.save_button.click()
    assert monitor.control.save_requested and not monitor.control.stop_requested
    monitor.stop_button.click()
    assert monitor.control.stop_requested and monitor.stop_button.disabled
    assert "nbkit-train-stop" in monitor.stop_button._dom_classes
    assert "nbkit-train-save" in monitor.save_button._dom_classes


def test_live_monitor_shows_speed_eta_and_memory_as_text():
    monitor = nw.LiveMonitor(mode="redraw")
    monitor.history.append(
        {
            "step": 5,
            "max_steps": 60,
            "elapsed_s": 30.0,
            "loss": 1.5,
            "learning_rate": 1e-3,
            "grad_norm": 0.8,
            "tokens_per_s": 95.2,
            "eta_s": 330.0,
            "memory_gib": 1.75,
        }
    )
    text = monitor.status_html()
    for part in ("step 5/60", "loss 1.5", "lr 0.001", "grad 0.8", "95 tok/s", "ETA 330s", "mem 1.75 GiB"):
        assert part in text


def test_training_progress_is_plain_printing_when_not_interactive(capsys):
    log = nw.training_progress(False)
    log({"step": 3, "max_steps": 10, "elapsed_s": 4.0, "loss": 1.25})
    assert "step 3/10 | loss 1.25" in capsys.readouterr().out
    assert not log.control.stop_requested


# -- notebook 01: mappings, the example editor and the rejected-row fixer --------------------


def manual_rows(workspace):
    import json

    from nbkit.data.manual import manual_path

    path = manual_path(workspace)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else None


def test_collect_panel_edits_column_and_role_mappings(tmp_path):
    config = CollectConfig(workspace=str(tmp_path))
    panel = nw.CollectPanel(config)
    panel.mappings["columns"].value = '{"question": "prompt", "answer": "completion"}'
    panel.mappings["roles"].value = "human: user\nbot: assistant"
    assert config.columns == {"question": "prompt", "answer": "completion"}
    assert config.roles == {"human": "user", "bot": "assistant"}
    panel.mappings["columns"].value = '{"question": "questions"}'
    assert config.columns == {"question": "prompt", "answer": "completion"}  # unchanged
    assert "`columns`" in panel.status.value and "nbkit-error" in panel.status.value
    assert "nbkit-field-roles" in panel.mappings["roles"]._dom_classes


def test_example_editor_appends_a_valid_example(tmp_path):
    editor = nw.ExampleEditor(str(tmp_path))
    editor.system.value = "Be brief."
    editor.user.value = "Where is my parcel?"
    editor.assistant.value = "On its way."
    editor.label.value = "shipping"
    editor.add.click()
    assert manual_rows(tmp_path) == [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Where is my parcel?"},
                {"role": "assistant", "content": "On its way."},
            ],
            "label": "shipping",
        }
    ]
    assert "nbkit-ok" in editor.status.value and "line 1" in editor.status.value
    assert editor.user.value == editor.assistant.value == "" and editor.system.value == "Be brief."
    for widget, name in [
        (editor.box, "nbkit-editor"),
        (editor.add, "nbkit-editor-add"),
        (editor.user, "nbkit-editor-user"),
        (editor.status, "nbkit-editor-status"),
    ]:
        assert name in widget._dom_classes


def test_example_editor_refuses_invalid_input_and_writes_nothing(tmp_path):
    editor = nw.ExampleEditor(str(tmp_path))
    editor.user.value = "A question without an answer"
    editor.add.click()
    assert manual_rows(tmp_path) is None
    assert "nbkit-error" in editor.status.value and "the assistant box is empty" in editor.status.value
    editor.user.value, editor.assistant.value = "Q", '{"team": "billing"}'
    editor.system.value = " "  # blank system text: no system message
    editor.add.click()
    editor.user.value, editor.assistant.value = "A question without an answer", "An answer"
    editor.add.click()
    editor.user.value, editor.assistant.value = "A question without an answer", "An answer"
    editor.add.click()  # the same conversation again
    assert [row["messages"][0]["content"] for row in manual_rows(tmp_path)] == ["Q", "A question without an answer"]
    assert "duplicate" in editor.status.value and "line 2" in editor.status.value


def test_editor_callback_errors_are_shown_in_the_widget(tmp_path, monkeypatch):
    import nbkit.widgets.collect as collect_widgets

    def broken(*args, **kwargs):
        raise PermissionError("read-only workspace")

    monkeypatch.setattr(collect_widgets, "add_manual_example", broken)
    editor = nw.ExampleEditor(str(tmp_path))
    editor.user.value, editor.assistant.value = "q", "a"
    editor.add.click()  # must not raise out of the callback
    assert "PermissionError: read-only workspace" in editor.status.value


def test_rejected_row_fixed_and_picked_up_by_the_next_collect(tmp_path):
    import json

    from nbkit.core.files import read_json, read_jsonl
    from nbkit.core.workspace import Workspace
    from nbkit.data.collect import collect

    source = tmp_path / "in.jsonl"
    bad = {"messages": [{"role": "user", "content": "Refund?"}], "label": "billing"}
    source.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
        + "\n"
        + json.dumps(bad)
        + "\n{broken\n",
        encoding="utf-8",
    )
    config = CollectConfig(workspace=str(tmp_path / "ws"), sources=[str(source)])
    collect(config)
    fixer = nw.RejectedFixer(config.workspace)
    assert fixer.position.value == "1 / 2" and json.loads(fixer.raw.value) == bad
    assert "nbkit-editor-fix-save" in fixer.save._dom_classes

    fixer.raw.value = '{"messages": [{"role": "user", "content": "Refund?"}]'  # still broken JSON
    fixer.save.click()
    assert manual_rows(config.workspace) is None and "invalid JSON" in fixer.status.value

    fixed = {**bad, "messages": bad["messages"] + [{"role": "assistant", "content": "Within 5 days."}]}
    fixer.raw.value = json.dumps(fixed)
    fixer.save.click()
    assert manual_rows(config.workspace) == [{**fixed, "fixed_from": f"{source} line 2"}]
    assert "line 1" in fixer.status.value

    report = collect(config)
    kept = read_jsonl(Workspace(config.workspace).clean)
    assert kept[-1]["messages"] == fixed["messages"]
    assert kept[-1]["meta"]["label"] == "billing" and kept[-1]["meta"]["line"] == 1
    assert report == read_json(Workspace(config.workspace).collect_report) and report["kept"] == 2


def test_rejected_fixer_accepts_a_text_block_and_handles_no_rows(tmp_path):
    import json

    from nbkit.data.collect import collect

    config = CollectConfig(workspace=str(tmp_path / "ws"), sources=[[{"oops": 1}]])
    collect(config)
    fixer = nw.RejectedFixer(config.workspace)
    fixer.raw.value = "### User\nhi there\n### Assistant\nhello"
    fixer.save.click()
    assert manual_rows(config.workspace)[0]["messages"][1] == {"role": "assistant", "content": "hello"}
    assert json.loads(fixer.items[0]["raw"]) == {"oops": 1}

    empty = nw.RejectedFixer(str(tmp_path / "nothing-collected"))
    assert empty.position.value == "0 / 0" and empty.save.disabled


def test_train_panel_estimates_the_fit_of_its_settings(prepared_workspace):
    panel = nw.TrainPanel(TrainConfig(workspace=str(prepared_workspace)))
    panel.form.inputs["batch_size"].value = 4
    panel.estimate_button.click()
    text = panel.estimate_view.value
    assert "Memory estimate (qlora on" in text and "FITS" in text and "Time estimate" in text
    empty = nw.TrainPanel(TrainConfig(workspace="/nonexistent-workspace"))
    empty.estimate_button.click()
    assert "cannot estimate yet" in empty.estimate_view.value and "03_split" in empty.estimate_view.value


def test_resume_button_loads_the_interrupted_runs_settings(tmp_path):
    """After a lost runtime the panel's Resume sets the latest run with a checkpoint, with the settings it
    started with (not the panel's current ones), so the Train cell continues the same trajectory."""
    runs = tmp_path / "runs"
    TrainConfig(workspace="elsewhere", run_id="a", max_steps=8).save(runs / "a" / "config.json")
    (runs / "a" / "checkpoints" / "checkpoint-8").mkdir(parents=True)
    (runs / "a" / "checkpoints" / "checkpoint-8" / "trainer_state.json").write_text("{}")
    TrainConfig(
        workspace="elsewhere", run_id="b", max_steps=12, batch_size=4, learning_rate=5e-4, eval_steps=6, save_steps=6
    ).save(runs / "b" / "config.json")
    for step in (6, 12):  # checkpoint-12 is incomplete: its trainer_state.json was never written
        (runs / "b" / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    (runs / "b" / "checkpoints" / "checkpoint-6" / "trainer_state.json").write_text("{}")

    config = TrainConfig(workspace=str(tmp_path), batch_size=8, max_steps=60)
    panel = nw.TrainPanel(config)
    panel.resume_button.click()
    assert (config.run_id, config.resume, config.batch_size, config.max_steps, config.learning_rate) == (
        "b",
        True,
        4,
        12,
        5e-4,
    )
    assert config.workspace == str(tmp_path), "the workspace stays the one this notebook uses"
    assert panel.form.inputs["batch_size"].value == 4 and panel.form.inputs["resume"].value is True
    assert "continue run b from step 6 of 12" in panel.resume_view.value

    nothing = nw.TrainPanel(TrainConfig(workspace=str(tmp_path / "new")))
    nothing.resume_button.click()
    assert (
        "Nothing to resume: no run in" in nothing.resume_view.value and "starts a new run" in nothing.resume_view.value
    )
    assert nothing.config.resume is False


def test_collect_panel_sets_the_xlsx_sheet_and_accepts_workbook_uploads(tmp_path):
    from pathlib import Path

    from nbkit.data.collect import collect

    config = CollectConfig(workspace=str(tmp_path))
    panel = nw.CollectPanel(config)
    panel.form.inputs["sheet"].value = "Archive"
    assert config.sheet == "Archive"
    assert ".xlsx" in panel.upload.accept.split(",")
    config.sources = [str(Path(__file__).parent / "fixtures" / "user_files" / "faq.xlsx")]
    report = collect(config)
    assert report["kept"] == 1  # the Archive sheet's one row, not the first sheet's two


def test_eval_panel_edits_export_formats_one_per_line(tmp_path):
    config = EvalConfig(workspace=str(tmp_path))
    panel = nw.eval_panel(config)
    panel.inputs["export_formats"].value = "gguf\nollama\n"
    assert config.export_formats == ["gguf", "ollama"]
    panel.inputs["export_formats"].value = "merged\nonnx"
    assert config.export_formats == ["gguf", "ollama"]  # refused, unchanged
    assert "export_formats" in panel.error.value and "&#x27;onnx&#x27;" in panel.error.value

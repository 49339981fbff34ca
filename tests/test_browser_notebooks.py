"""The six notebooks in a real browser: JupyterLab on 127.0.0.1, headless Chromium, every panel clicked.

One Lab server and one browser for the module; the notebooks run in order on one workspace in a
temporary folder, with small settings (papermill injects them after the parameters cell, exactly as
`nbkit run` would). Each test changes a value in a panel, presses its main button (or runs the cell the
panel feeds) and checks what the page shows. On failure, test-artifacts/browser/<test>/ gets a
screenshot, the page's HTML and the browser console; every panel's element screenshot is kept in
test-artifacts/browser/screenshots/ (NBKIT_SCREENSHOTS=docs/screenshots refreshes the README's).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time

import pytest
from conftest import NOTEBOOKS, REPO
from jupyterlab_browser import LabServer, NotebookPage, launch_browser, missing_requirements

pytestmark = [
    pytest.mark.browser,
    pytest.mark.model,
    pytest.mark.skipif(bool(missing_requirements()), reason=missing_requirements() or "ok"),
]

ARTIFACTS = REPO / "test-artifacts" / "browser"
SCREENSHOTS = [ARTIFACTS / "screenshots"] + (
    [REPO / os.environ["NBKIT_SCREENSHOTS"]] if os.environ.get("NBKIT_SCREENSHOTS") else []
)
TRAIN_STEPS = 10  # set in the training panel; the notebook is injected with fewer to prove the panel won
SMALL = {
    "max_steps": 4,
    "batch_size": 4,
    "eval_steps": 0,
    "max_seq_len": 160,
    "lora_r": 8,
    "lora_alpha": 16,
    "logging_steps": 2,
    "max_examples": 4,
    "forgetting_probe": False,
    "export_formats": [],
    # 06: few prompts to sample for, a few to rate by hand, the lineage on the rows 05 scored
    "max_prompts": 2,
    "samples_per_prompt": 2,
    "rate_prompts": 3,
    "compare_examples": 4,
}
PREFER_STEPS = 3  # typed into 06's panel; the notebook is injected with SMALL's max_steps
UPLOADED = (
    '{"messages": [{"role": "user", "content": "My card was charged twice"}, '
    '{"role": "assistant", "content": "{\\"team\\": \\"billing\\", \\"priority\\": \\"high\\"}"}]}\n'
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The notebooks, parameterized small, in a fresh folder served by JupyterLab."""
    import papermill

    root = tmp_path_factory.mktemp("lab")
    workspace = root / "workspace"
    for source in sorted(NOTEBOOKS.glob("0*.ipynb")):
        declared = papermill.inspect_notebook(str(source))
        params = {k: v for k, v in SMALL.items() if k in declared}
        params["workspace"] = str(workspace)
        nb = papermill.parameterize.parameterize_notebook(papermill.iorw.load_notebook_node(str(source)), params)
        papermill.iorw.write_ipynb(nb, str(root / source.name))
    server = LabServer(root, tmp_path_factory.mktemp("lab-home")).start()
    server.workspace = workspace
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = launch_browser(playwright, tmp_path_factory.mktemp("chromium-profile"))
        yield context
        context.close()


@pytest.fixture
def page(browser, lab, request):
    """A fresh tab; its console is recorded, and a failing test leaves evidence behind."""
    tab = browser.new_page()
    console: list[str] = []
    tab.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    tab.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
    tab.set_default_timeout(60_000)
    failures = request.session.testsfailed
    yield tab
    if request.session.testsfailed > failures:  # the call's report is logged before this teardown
        folder = ARTIFACTS / request.node.name
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            tab.screenshot(path=str(folder / "page.png"))
            (folder / "page.html").write_text(tab.content())
        (folder / "console.log").write_text("\n".join(console))
        shutil.copy(lab.log_path, folder / "jupyterlab.log")
    tab.close()
    lab.shutdown_kernels()


def snapshot(element, name: str) -> None:
    """Keep an element screenshot of a panel (JupyterLab scrolls inside its own panes, so not the page)."""
    element.scroll_into_view_if_needed()
    for folder in SCREENSHOTS:
        folder.mkdir(parents=True, exist_ok=True)
        element.screenshot(path=str(folder / f"{name}.png"))


def open_and_run(page, lab, name: str, timeout: float = 600) -> NotebookPage:
    notebook = NotebookPage(page, lab, f"{name}.ipynb").open()
    notebook.run_all(timeout)
    assert not notebook.errors(), notebook.errors()
    return notebook


def type_into(page, selector: str, text: str) -> None:
    """Replace a widget input's text the way a person does, then leave the field so the value syncs."""
    field = page.locator(selector)
    field.fill(text)
    field.press("Tab")


def open_section(page, selector: str, title: str) -> None:
    """Open a collapsed Accordion section (ConfigForm's `advanced`) by clicking its title, as a person does;
    nothing to do when it is open. Its inputs are hidden until then, so typing into them would time out."""
    section = page.locator(selector)
    first_input = section.locator(".nbkit-field").first
    if not first_input.is_visible():
        section.get_by_text(title).first.click()
    first_input.wait_for(state="visible")


def refuse_then_accept(page, panel: str, field: str, bad: str, why: str, good: str) -> None:
    """Type an invalid value: the form says why and keeps the old one; a valid value clears the message."""
    selector = f"{panel} .nbkit-field-{field} input"
    type_into(page, selector, bad)
    expect_text(page, f"{panel} .nbkit-error", why)
    type_into(page, selector, good)
    expect_text(page, f"{panel} .nbkit-error", r"^\s*$")


def expect_text(page, selector: str, pattern: str, timeout: float = 60) -> str:
    """Wait until the element's text matches the regular expression; return the text."""
    locator = page.locator(selector).first
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            text = locator.inner_text(timeout=1000)
            if re.search(pattern, text):
                return text
        time.sleep(0.3)
    raise AssertionError(f"{selector}: wanted /{pattern}/, page shows {text!r}")


# -- the notebooks, in order ---------------------------------------------------------------------------


def test_01_collect_panel_upload_results_and_editor(page, lab):
    open_and_run(page, lab, "01_collect")
    panel = page.locator(".nbkit-collect-panel")
    type_into(page, ".nbkit-field-columns input", "[1, 2]")
    expect_text(page, ".nbkit-collect-status", "must be a mapping")
    type_into(page, ".nbkit-field-columns input", '{"question": "prompt"}')
    expect_text(page, ".nbkit-collect-status", r'columns: \{"question": "prompt"\}')
    with page.expect_file_chooser() as chooser:  # the upload button opens the system file dialog
        page.locator(".nbkit-upload").click()
    chooser.value.set_files([{"name": "extra.jsonl", "mimeType": "application/json", "buffer": UPLOADED.encode()}])
    expect_text(page, ".nbkit-collect-status", "saved extra.jsonl to")
    assert "extra.jsonl" in page.locator(".nbkit-field-sources textarea").input_value()
    assert (lab.workspace / "uploads" / "extra.jsonl").read_text() == UPLOADED
    snapshot(panel, "01_collect_panel")

    expect_text(page, ".nbkit-preview-position", r"^1 / 400$")
    page.locator(".nbkit-preview-next").click()
    expect_text(page, ".nbkit-preview-position", r"^2 / 400$")
    assert page.locator(".nbkit-preview-view .nbkit-msg-assistant").count() == 1
    snapshot(page.locator(".nbkit-collect-results"), "01_collect_results")

    page.locator(".nbkit-editor-add").click()
    expect_text(page, ".nbkit-editor-status", "missing_content")
    page.locator(".nbkit-editor-user textarea").fill("Where is my refund?")
    page.locator(".nbkit-editor-assistant textarea").fill('{"team": "billing", "priority": "medium"}')
    page.locator(".nbkit-editor-label input").fill("billing")
    page.locator(".nbkit-editor-add").click()
    expect_text(page, ".nbkit-editor-status", "added as line 1 of")
    assert "Where is my refund?" in (lab.workspace / "data" / "manual.jsonl").read_text()
    snapshot(page.locator(".nbkit-editor"), "01_example_editor")


def test_02_format_panel_quality_tabs_and_mask_viewer(page, lab):
    open_and_run(page, lab, "02_format")
    panel = page.locator(".nbkit-format-panel")
    refuse_then_accept(page, ".nbkit-format-panel", "max_seq_len", "-5", "max_seq_len", "256")
    snapshot(panel, "02_format_panel")

    quality = page.locator(".nbkit-quality-panel")
    expect_text(page, ".nbkit-quality-verdict", r"Data quality: \d+ rows")
    assert page.locator(".nbkit-quality-verdict .nbkit-quality-item").count() >= 3
    snapshot(quality, "02_quality_verdict")
    quality.locator(".lm-TabBar-tab", has_text="Lengths").click()
    bars = page.locator(".nbkit-quality-fig-lengths .bars path:visible")  # zero-height bins are hidden
    bars.first.wait_for(state="visible")
    assert bars.count() > 3
    snapshot(quality, "02_quality_lengths")
    quality.locator(".lm-TabBar-tab", has_text="Near-duplicates").click()
    expect_text(page, ".nbkit-quality-duplicates", "Near-duplicate clusters")

    expect_text(page, ".nbkit-mask-position", r"^1 / \d+$")
    page.locator(".nbkit-mask-next").click()
    expect_text(page, ".nbkit-mask-position", r"^2 / \d+$")
    assert page.locator(".nbkit-mask-view .nbkit-trained").count() > 0
    assert page.locator(".nbkit-mask-view .nbkit-masked").count() > 0
    snapshot(page.locator(".nbkit-mask"), "02_mask_viewer")


def test_03_split_panel_value_reaches_the_split(page, lab):
    notebook = open_and_run(page, lab, "03_split")
    panel = page.locator(".nbkit-split-panel")
    refuse_then_accept(page, ".nbkit-split-panel", "test_fraction", "0.9", "too little to train on", "0.1")
    type_into(page, ".nbkit-split-panel .nbkit-field-seed input", "7")
    snapshot(panel, "03_split_panel")
    split_cell = notebook.cell_index("split_dataset(config)")
    notebook.run_cell(split_cell)  # the panel's settings take effect when the next cell runs
    assert re.search(r"'seed': 7", notebook.output_text(split_cell)), notebook.output_text(split_cell)
    assert json.loads((lab.workspace / "data" / "splits" / "manifest.json").read_text())["seed"] == 7


def plot_points(page) -> int:
    """Markers drawn for the training-loss trace (the first) of the live plot."""
    return page.evaluate(
        "() => { const plot = document.querySelector('.nbkit-train-monitor .js-plotly-plot');"
        " const trace = plot && plot.querySelector('.scatterlayer .trace');"
        " return trace ? trace.querySelectorAll('.points path.point').length : 0; }"
    )


def test_04_train_panel_then_live_plot_grows(page, lab):
    import papermill

    from nbkit.core.train_config import TrainConfig

    notebook = NotebookPage(page, lab, "04_train.ipynb").open()
    train_cell = notebook.cell_index("train(config")
    notebook.run_all_above(train_cell)
    assert not notebook.errors(), notebook.errors()
    refuse_then_accept(page, ".nbkit-train-panel", "batch_size", "0", "batch_size", "4")
    type_into(page, ".nbkit-train-panel .nbkit-field-max_steps input", str(TRAIN_STEPS))
    snapshot(page.locator(".nbkit-train-panel"), "04_train_panel")
    # Every other setting waits in the collapsed "Advanced" section: open it, then edit there.
    open_section(page, ".nbkit-train-panel .nbkit-advanced", "Advanced")
    refuse_then_accept(page, ".nbkit-train-panel", "lora_dropout", "1.5", "lora_dropout", "0.05")
    type_into(page, ".nbkit-train-panel .nbkit-field-seed input", "7")

    declared = papermill.inspect_notebook(str(NOTEBOOKS / "04_train.ipynb"))
    every = SMALL["logging_steps"] if "logging_steps" in declared else TrainConfig().logging_steps
    after = notebook.highest_count()
    notebook.command("notebook:run-cell", train_cell)
    seen: list[int] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        points = plot_points(page)
        if not seen or points != seen[-1]:
            seen.append(points)
        if "*" not in notebook.prompts() and notebook.highest_count() > after:
            break
        time.sleep(0.5)
    notebook.wait_until_done(train_cell, after, timeout=30)
    seen.append(plot_points(page))
    assert not notebook.errors(), notebook.errors()
    status = (
        page.locator(".nbkit-train-status").first.inner_text()
        if page.locator(".nbkit-train-status").count()
        else "(no .nbkit-train-status on the page)"
    )
    grew = [p for p in seen if p]
    assert len(set(grew)) >= 2 and grew == sorted(grew) and grew[-1] == TRAIN_STEPS // every, (
        f"plot points seen while training: {seen}; status line: {status!r}"
    )
    expect_text(page, ".nbkit-train-status", rf"/{TRAIN_STEPS}\b")
    snapshot(page.locator(".nbkit-train-monitor").first, "04_train_monitor")
    (run_dir,) = [p for p in (lab.workspace / "runs").iterdir() if p.is_dir()]
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["max_steps"], saved["seed"]) == (TRAIN_STEPS, 7)  # the panel's values, main and Advanced

    # Stop from the page while the cell runs: a long run, stopped once its first points are drawn.
    type_into(page, ".nbkit-train-panel .nbkit-field-max_steps input", "200")
    after = notebook.highest_count()
    notebook.command("notebook:run-cell", train_cell)
    stop = page.locator(".nbkit-train-monitor .nbkit-train-stop:enabled")  # the last run's button is disabled
    deadline = time.monotonic() + 300
    while not (stop.count() and plot_points(page) >= 1):
        assert time.monotonic() < deadline, f"no live points to stop at; seen {plot_points(page)}"
        time.sleep(0.5)
    stop.click()
    notebook.wait_until_done(train_cell, after, timeout=300)
    assert not notebook.errors(), notebook.errors()
    stopped = max((p for p in (lab.workspace / "runs").iterdir() if p.is_dir()), key=lambda p: p.name)
    record = json.loads((stopped / "run.json").read_text())
    assert record["status"] == "stopped" and record["steps"] < 200, record
    assert (stopped / "adapter").is_dir()
    expect_text(page, ".nbkit-train-status", rf"step {record['steps']}/200")


def test_05_evaluate_viewer_rating_and_playground(page, lab):
    open_and_run(page, lab, "05_evaluate")
    refuse_then_accept(page, ".nbkit-eval-panel", "max_examples", "-1", "max_examples", "4")
    snapshot(page.locator(".nbkit-eval-panel"), "05_eval_panel")

    expect_text(page, ".nbkit-compare-position", r"^1 / 4$")
    page.locator(".nbkit-compare-next").click()
    expect_text(page, ".nbkit-compare-position", r"^2 / 4$")
    assert page.locator(".nbkit-compare-view .nbkit-answer-tuned").count() == 1
    snapshot(page.locator(".nbkit-compare"), "05_comparison")

    expect_text(page, ".nbkit-rating-progress", r"rated 0 of 4")
    page.locator(".nbkit-rating-a").click()
    expect_text(page, ".nbkit-rating-progress", r"rated 1 of 4")
    page.locator(".nbkit-rating-tie").click()
    expect_text(page, ".nbkit-rating-progress", r"rated 2 of 4")
    snapshot(page.locator(".nbkit-rating"), "05_rating")

    type_into(page, ".nbkit-playground .nbkit-field-temperature input", "0")  # greedy: the same reply every time
    page.locator(".nbkit-playground-user textarea").fill("My invoice shows a double charge, please help")
    page.locator(".nbkit-playground-send").click()
    expect_text(page, ".nbkit-playground-status", r"replied in", timeout=180)
    assert page.locator(".nbkit-playground-transcript .nbkit-playground-msg-assistant").count() == 1
    page.locator(".nbkit-playground-answer textarea").fill('{"team": "billing", "priority": "high"}')
    page.locator(".nbkit-playground-promote").click()
    expect_text(page, ".nbkit-playground-promote-status", "manual.jsonl line")
    snapshot(page.locator(".nbkit-playground"), "05_playground")
    assert page.locator(".js-plotly-plot").count() >= 1  # the runs figure


def test_06_prefer_rate_answers_build_pairs_and_train(page, lab):
    """Rate two sampled answers by hand, set the run in the panel, then build pairs and train from the page:
    the ratings become pairs, the panel's step count is the run's, and the lineage table shows base → SFT → DPO."""
    notebook = NotebookPage(page, lab, "06_prefer.ipynb").open()
    build = notebook.cell_index("build_pairs(pairs_config)")
    notebook.run_all_above(build)
    assert not notebook.errors(), notebook.errors()
    refuse_then_accept(page, ".nbkit-prefer-panel", "samples_per_prompt", "1", "samples_per_prompt", "2")
    type_into(page, ".nbkit-prefer-panel .nbkit-field-max_steps input", str(PREFER_STEPS))
    snapshot(page.locator(".nbkit-prefer-panel"), "06_prefer_panel")

    shown = expect_text(page, ".nbkit-prefrating-progress", r"rated 0 of [2-9]", timeout=120)
    page.locator(".nbkit-prefrating-a").click()
    expect_text(page, ".nbkit-prefrating-progress", r"rated 1 of")
    snapshot(page.locator(".nbkit-prefrating"), "06_preference_rating")
    page.locator(".nbkit-prefrating-b").click()
    expect_text(page, ".nbkit-prefrating-progress", r"rated 2 of")
    rated = [
        json.loads(line) for line in (lab.workspace / "data" / "preferences" / "ratings.jsonl").read_text().splitlines()
    ]
    assert [r["choice"] for r in rated] == ["A", "B"], (shown, rated)

    after = notebook.highest_count()
    notebook.command("notebook:run-all-below", build)
    notebook.wait_until_done(after=after, timeout=900)
    assert not notebook.errors(), notebook.errors()
    report = json.loads((lab.workspace / "data" / "preferences" / "pairs_report.json").read_text())
    assert report["sources"]["rating"]["kept"] == 2, report["sources"]
    expect_text(page, ".nbkit-pairs", r"Preference pairs \(\d+\)")
    snapshot(page.locator(".nbkit-pairs").first, "06_pairs")
    runs = [json.loads(p.read_text()) for p in (lab.workspace / "runs").glob("*/run.json")]
    (run,) = [r for r in runs if r.get("objective") == "dpo"]
    assert run["steps"] == PREFER_STEPS and run["status"] == "finished", run
    assert re.search(r"dpo\s", notebook.output_text(notebook.cell_index("evaluate_lineage("))), "no lineage table"

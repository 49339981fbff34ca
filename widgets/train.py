"""Panels for notebook 04: the training form with presets, the live monitor, and the runs table.

The live plot picks what renders where it runs: on Colab (ipywidgets 7, where plotly's
FigureWidget and plotly-in-Output are unreliable) the training cell's output is cleared
and a fresh figure drawn, at most once a second; elsewhere a FigureWidget updates in place.
The numbers are always shown as text too.

Stop and Save-now work while the training cell runs: between steps the monitor lets the
kernel handle pending widget events (jupyter-ui-poll), and the buttons only set flags on
nbkit's RunControl, which the trainer obeys after the current step.
"""

from __future__ import annotations

import html
import sys
import time
from typing import Any

import ipywidgets as widgets

from nbkit.core.errors import ConfigError
from nbkit.core.runs import checkpoint_step, last_checkpoint, latest_checkpointed_run, metric_series, read_metrics
from nbkit.core.train_config import BATCHING, CHECKPOINTING, TRAIN_METHODS, TrainConfig
from nbkit.train.log import RunControl, format_log, print_log
from nbkit.widgets.panel import ConfigForm, Panel, css, message_html

PRESETS: dict[str, dict[str, Any]] = {
    "quick look": {
        "max_steps": 30,
        "learning_rate": 1e-3,
        "lora_r": 8,
        "lora_alpha": 16,
        "eval_steps": 10,
        "save_steps": 10,
    },
    "balanced": {
        "max_steps": 71,
        "learning_rate": 1e-3,
        "lora_r": 16,
        "lora_alpha": 32,
        "eval_steps": 20,
        "save_steps": 20,
    },
    "thorough": {
        "max_steps": 0,
        "num_train_epochs": 3.0,
        "learning_rate": 5e-4,
        "lora_r": 32,
        "lora_alpha": 64,
        "eval_steps": 50,
        "save_steps": 50,
    },
}
# What most runs change, shown first (after the preset); every other setting waits under "Advanced",
# grouped as TrainConfig's docstring groups them. tests/test_widgets.py checks that the two together are
# exactly TrainConfig's fields less NOT_IN_PANEL, so a new field cannot go missing from the panel.
MAIN_FIELDS = ["base_model", "method", "max_steps", "learning_rate", "batch_size", "max_seq_len"]
ADVANCED_FIELDS = {
    "Schedule": ["num_train_epochs", "warmup_ratio", "weight_decay", "gradient_accumulation_steps", "seed"],
    "Memory and batching": ["batching", "gradient_checkpointing"],
    "LoRA": ["lora_r", "lora_alpha", "lora_dropout", "target_modules"],
    "Evaluation and logging": ["eval_steps", "early_stopping_patience", "load_best", "logging_steps", "report_to"],
    "Checkpoints and resuming": ["save_steps", "resume", "run_id"],
}
ADVANCED_TITLE = "Advanced: schedule, batching, LoRA, evaluation, checkpoints"
# The workspace is set once in the parameters cell: the notebook's later cells (show_runs) read that folder.
NOT_IN_PANEL = ("workspace",)
CHOICES = {"method": TRAIN_METHODS, "batching": BATCHING, "gradient_checkpointing": CHECKPOINTING}


class TrainPanel(Panel):
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.form = ConfigForm(
            config, MAIN_FIELDS, choices=CHOICES, advanced=ADVANCED_FIELDS, advanced_title=ADVANCED_TITLE
        )
        self.preset = css(
            widgets.Dropdown(
                options=["(custom)"] + list(PRESETS),
                value="(custom)",
                description="preset",
                style={"description_width": "170px"},
                layout=widgets.Layout(width="420px"),
            ),
            "nbkit-preset",
        )
        self.preset.observe(lambda change: self.apply_preset(change["new"]), names="value")
        preset_row = widgets.HBox(
            [
                self.preset,
                widgets.HTML(
                    '<span style="color:#666">Fills max_steps and learning_rate here, and the epochs, LoRA size and '
                    "eval/save intervals under Advanced; every field stays editable.</span>"
                ),
            ]
        )
        self.estimate_button = css(
            widgets.Button(
                description="Will it fit?", icon="calculator", tooltip="Estimate memory and time for these settings"
            ),
            "nbkit-train-estimate",
        )
        self.estimate_button.on_click(lambda _b: self.estimate())
        self.estimate_view = css(widgets.HTML(""), "nbkit-train-estimate-result")
        self.resume_button = css(
            widgets.Button(
                description="Resume last run",
                icon="play",
                tooltip="Continue the latest run that has a checkpoint, with the settings it was started with",
            ),
            "nbkit-train-resume",
        )
        self.resume_button.on_click(lambda _b: self.resume_latest())
        self.resume_view = css(widgets.HTML(""), "nbkit-train-resume-result")
        self.box = css(
            widgets.VBox(
                [
                    widgets.HTML("<b>Training settings</b>"),
                    preset_row,
                    self.form.box,
                    widgets.HBox([self.estimate_button, self.resume_button]),
                    self.estimate_view,
                    self.resume_view,
                ]
            ),
            "nbkit-train-panel",
        )

    def estimate(self) -> None:
        """Show the fit and time estimate of the current settings (no weights load)."""
        from nbkit.core.errors import NbkitError
        from nbkit.train.estimate import estimate_run, format_estimate

        self.estimate_view.value = "<pre>estimating...</pre>"
        try:
            text = format_estimate(estimate_run(self.config))
        except NbkitError as err:
            text = f"cannot estimate yet: {err}"
        self.estimate_view.value = f"<pre>{html.escape(text)}</pre>"

    def resume_latest(self) -> None:
        """Set the form to continue the latest run with a checkpoint: its saved settings, resume=True.

        The run folder's config.json is what the run started with; resuming with other settings
        (batch size, steps, learning rate) would not continue the same loss trajectory.
        """
        from nbkit.core.errors import NbkitError
        from nbkit.core.workspace import Workspace

        ws = Workspace(self.config.workspace)
        run_id = latest_checkpointed_run(ws)
        if run_id is None:
            self.resume_view.value = message_html(
                f"Nothing to resume: no run in {ws.runs} has a checkpoint yet; the Train cell starts a new run.",
                "error",
            )
            return
        try:
            saved = TrainConfig.load(ws.run_dir(run_id) / "config.json")
        except (NbkitError, OSError) as err:
            self.resume_view.value = message_html(f"Cannot resume run {run_id}: {err}", "error")
            return
        self.preset.value = "(custom)"
        self.form.load(saved.replace(workspace=self.config.workspace, run_id=run_id, resume=True))
        step = checkpoint_step(last_checkpoint(ws.run_dir(run_id)))
        of = f" of {saved.max_steps}" if saved.max_steps else ""
        self.resume_view.value = message_html(
            f"Run the Train cell below to continue run {run_id} from step {step}{of} with the settings it "
            "started with.",
            "ok",
        )

    def apply_preset(self, name: str) -> None:
        """Set the preset's fields together: one by one, eval_steps=50 would be refused next to save_steps=20."""
        if name in PRESETS:
            try:
                self.form.load(self.config.replace(**PRESETS[name]))
            except ConfigError as err:
                self.form.error.value = message_html(str(err), "error")


class TextProgress:
    """Headless progress (papermill, scripts): every log printed as one line."""

    def __init__(self) -> None:
        self.control = RunControl()

    def __call__(self, record: dict[str, Any]) -> None:
        print_log(record)


def training_progress(interactive: bool):
    """What receives the training logs: a live monitor in a notebook, printed lines under papermill.

    Pass it as `on_log` and its `.control` as `control` to `nbkit.train.sft.train`.
    """
    if not interactive:
        return TextProgress()
    monitor = LiveMonitor()
    monitor.show()
    return monitor


def on_colab() -> bool:
    return "google.colab" in sys.modules


def kernel_poller():
    """A function that handles pending widget events in a running cell, or None outside a kernel."""
    try:
        from IPython import get_ipython
        from jupyter_ui_poll import ui_events
    except ImportError:
        return None, None
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None, None
    events = ui_events()
    return events, events.__enter__()


SERIES = (
    ("loss", "train loss", 1),
    ("eval_loss", "validation loss", 1),
    ("learning_rate", "learning rate", 2),
    ("grad_norm", "grad norm", 3),
)


class LiveMonitor(Panel):
    """Receives every training log (a plain function for nbkit.train.sft) and draws the curves.

    Redraws are throttled to one per `min_interval` seconds so the UI costs little next to
    training (`ui_share` measures it); evaluations and the last log always draw.
    """

    def __init__(self, min_interval: float = 1.0, mode: str | None = None, poll_interval: float = 0.5) -> None:
        self.history: list[dict[str, Any]] = []
        self.min_interval = min_interval
        self.poll_interval = poll_interval
        self.last_draw = self.last_poll = float("-inf")
        self.draws = 0
        self.ui_seconds = 0.0
        self.started = time.monotonic()
        self.mode = mode or ("redraw" if on_colab() else "widget")
        self.control = RunControl(poll=self.poll)
        self.control.on_finish = self.close
        self._events = self._poll = None
        self.text = css(widgets.HTML(""), "nbkit-train-status")
        self.stop_button = css(
            widgets.Button(
                description="Stop",
                icon="stop",
                button_style="danger",
                tooltip="Stop after this step; saves a checkpoint and the adapter",
            ),
            "nbkit-train-stop",
        )
        self.save_button = css(
            widgets.Button(
                description="Save now", icon="save", tooltip="Write a checkpoint after this step and keep training"
            ),
            "nbkit-train-save",
        )
        self.stop_button.on_click(lambda _b: self.request("stop"))
        self.save_button.on_click(lambda _b: self.request("save"))
        self.buttons = widgets.HBox([self.stop_button, self.save_button])
        self.figure = None
        if self.mode == "widget":
            try:
                import plotly.graph_objects as go

                self.figure = css(go.FigureWidget(self._figure()), "nbkit-train-plot")
            except Exception:  # FigureWidget needs anywidget on plotly >= 6; fall back to redraws
                self.mode = "redraw"
        children = [self.buttons, self.text] + ([self.figure] if self.figure is not None else [])
        self.box = css(widgets.VBox(children), "nbkit-train-monitor")

    def request(self, what: str) -> None:
        if what == "stop":
            self.control.stop()
            self.stop_button.disabled = True
            self.stop_button.description = "Stopping..."
        else:
            self.control.save_now()
            self.save_button.description = "Saving..."

    def poll(self) -> None:
        """Called by the trainer between steps: deliver button clicks to this kernel."""
        now = time.monotonic()
        if now - self.last_poll < self.poll_interval:
            return
        self.last_poll = now
        if self._events is None:
            self._events, self._poll = kernel_poller()
        if self._poll is not None:
            self._poll(20)
        self.ui_seconds += time.monotonic() - now

    def __call__(self, record: dict[str, Any]) -> None:
        started = time.monotonic()
        self.history.append(record)
        if not self.control.save_requested:  # the trainer took the request: the checkpoint is written
            self.save_button.description = "Save now"
        # Evaluations and the end-of-training summary are rare and matter: never skip them.
        important = "eval_loss" in record or "train_loss" in record or record["step"] >= record["max_steps"]
        if important or started - self.last_draw >= self.min_interval:
            self.draw()
        self.ui_seconds += time.monotonic() - started

    @property
    def ui_share(self) -> float:
        """Share of the wall time spent drawing and polling the UI."""
        return self.ui_seconds / max(time.monotonic() - self.started, 1e-9)

    def close(self) -> None:
        """Final draw; hand the kernel's event handling back (nbkit.train.sft calls this when training ends)."""
        self.draw()
        self.stop_button.disabled = self.save_button.disabled = True
        if self._events is not None:
            self._events.__exit__(None, None, None)
            self._events = self._poll = None
        print(f"Live monitor: {self.draws} redraws, {100 * self.ui_share:.2f}% of the training time.")

    def series(self) -> dict[str, tuple[list[int], list[float]]]:
        return {label: metric_series(self.history, key) for key, label, _col in SERIES}

    def _figure(self):
        from plotly.subplots import make_subplots

        fig = make_subplots(
            rows=1, cols=3, subplot_titles=("loss", "learning rate", "grad norm"), column_widths=[0.5, 0.25, 0.25]
        )
        for (_key, label, col), (x, y) in zip(SERIES, self.series().values()):
            fig.add_scatter(x=x, y=y, mode="lines+markers", name=label, row=1, col=col, showlegend=col == 1)
        fig.update_layout(height=300, margin=dict(l=40, r=10, t=40, b=40), legend=dict(orientation="h", y=-0.2))
        fig.update_xaxes(title_text="step")
        return fig

    def status_html(self) -> str:
        if not self.history:
            return "<pre>waiting for the first log...</pre>"
        lines = [format_log(r) for r in self.history[-8:]] if self.mode == "redraw" else [format_log(self.history[-1])]
        return "<pre>" + html.escape("\n".join(lines)) + "</pre>"

    def draw(self) -> None:
        self.last_draw = time.monotonic()
        self.draws += 1
        self.text.value = self.status_html()
        if self.mode == "widget":
            with self.figure.batch_update():
                for trace, (x, y) in zip(self.figure.data, self.series().values()):
                    trace.x, trace.y = x, y
            if self.history:
                print(format_log(self.history[-1]), flush=True)  # the numbers as text, kept in the output
        else:
            from IPython.display import clear_output, display

            clear_output(wait=True)
            display(self.box)
            display(self._figure())


def show_runs(workspace: str, interactive: bool = True) -> None:
    """Every run of the workspace: a comparison table and their loss curves overlaid."""
    from IPython.display import HTML, display

    from nbkit.core.runs import compare_runs

    table = compare_runs(workspace)
    if table.empty:
        print("No finished runs yet.")
        return
    display(HTML(f'<div class="nbkit-runs-table">{table.to_html(float_format=lambda v: f"{v:.4g}")}</div>'))
    display(loss_curves_figure(workspace, list(table.index)))


def loss_curves_figure(workspace: str, run_ids: list[str]):
    """Training (dotted) and validation (solid) loss of several runs on one chart."""
    import plotly.graph_objects as go

    from nbkit.core.workspace import Workspace

    fig = go.Figure()
    for run_id in run_ids:
        logs = read_metrics(Workspace(workspace).run_dir(run_id) / "metrics.jsonl")
        for key, dash, suffix in (("loss", "dot", "train"), ("eval_loss", "solid", "val")):
            steps, values = metric_series(logs, key)
            if steps:
                fig.add_scatter(x=steps, y=values, mode="lines", name=f"{run_id} {suffix}", line=dict(dash=dash))
    fig.update_layout(title="Loss of every run", xaxis_title="step", yaxis_title="loss", height=360)
    return fig

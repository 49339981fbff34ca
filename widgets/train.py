"""Panels for notebook 04: the training form with presets, and a live monitor of the run.

The live plot picks what renders where it runs: on Colab (ipywidgets 7, where plotly's
FigureWidget and plotly-in-Output are unreliable) the training cell's output is cleared
and a fresh figure drawn, at most once a second; elsewhere a FigureWidget updates in place.
The numbers are always printed as text too.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import ipywidgets as widgets

from nbkit.train import TrainConfig, format_log, print_log
from nbkit.widgets.panel import ConfigForm, Panel, css

PRESETS: dict[str, dict[str, Any]] = {
    "quick look": {"max_steps": 30, "learning_rate": 1e-3, "lora_r": 8, "lora_alpha": 16, "eval_steps": 10},
    "balanced": {"max_steps": 60, "learning_rate": 1e-3, "lora_r": 16, "lora_alpha": 32, "eval_steps": 20},
    "thorough": {"max_steps": 0, "num_train_epochs": 3.0, "learning_rate": 5e-4, "lora_r": 32, "lora_alpha": 64,
                 "eval_steps": 50},
}
FIELDS = ["base_model", "method", "max_steps", "num_train_epochs", "learning_rate", "batch_size",
          "gradient_accumulation_steps", "max_seq_len", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
          "warmup_ratio", "weight_decay", "eval_steps", "seed", "run_id"]


class TrainPanel(Panel):
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.form = ConfigForm(config, FIELDS, choices={"method": ("qlora", "lora")}, title="Training settings")
        self.preset = css(widgets.Dropdown(options=["(custom)"] + list(PRESETS), value="(custom)",
                                           description="preset"), "nbkit-preset")
        self.preset.observe(lambda change: self.apply_preset(change["new"]), names="value")
        self.box = css(widgets.VBox([self.preset, self.form.box]), "nbkit-train-panel")

    def apply_preset(self, name: str) -> None:
        if name in PRESETS:
            for field, value in PRESETS[name].items():
                self.form.set(field, value)
            self.form.refresh()


def training_progress(interactive: bool):
    """What receives the training logs: a live monitor in a notebook, printed lines under papermill."""
    if not interactive:
        return print_log
    monitor = LiveMonitor()
    monitor.show()
    return monitor


def on_colab() -> bool:
    return "google.colab" in sys.modules


class LiveMonitor(Panel):
    """Receives every training log (a plain function for nbkit.train) and draws loss curves.

    Redraws are throttled to one per `min_interval` seconds so the UI costs little next to
    training; the final state is always drawn by `close()`.
    """

    def __init__(self, min_interval: float = 1.0, mode: str | None = None) -> None:
        self.history: list[dict[str, Any]] = []
        self.min_interval = min_interval
        self.last_draw = float("-inf")
        self.draws = 0
        self.mode = mode or ("redraw" if on_colab() else "widget")
        self.text = css(widgets.HTML(""), "nbkit-train-status")
        self.figure = None
        if self.mode == "widget":
            try:
                import plotly.graph_objects as go

                self.figure = go.FigureWidget(self._figure())
            except Exception:  # FigureWidget needs anywidget on plotly >= 6; fall back to redraws
                self.mode = "redraw"
        children = [self.text] + ([self.figure] if self.figure is not None else [])
        self.box = css(widgets.VBox(children), "nbkit-train-monitor")

    def __call__(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        # Evaluations and the end-of-training summary are rare and matter: never skip them.
        important = "eval_loss" in record or "train_runtime" in record
        if important or time.monotonic() - self.last_draw >= self.min_interval:
            self.draw()

    def close(self) -> None:
        self.draw()

    def series(self) -> dict[str, tuple[list[int], list[float]]]:
        out: dict[str, tuple[list[int], list[float]]] = {}
        for key, label in (("loss", "train loss"), ("eval_loss", "validation loss")):
            points = [(r["step"], r[key]) for r in self.history if key in r]
            out[label] = ([p[0] for p in points], [p[1] for p in points])
        return out

    def _figure(self):
        import plotly.graph_objects as go

        fig = go.Figure()
        for label, (x, y) in self.series().items():
            fig.add_scatter(x=x, y=y, mode="lines+markers", name=label)
        fig.update_layout(height=320, margin=dict(l=40, r=10, t=30, b=40), xaxis_title="step", yaxis_title="loss",
                          title="Loss")
        return fig

    def draw(self) -> None:
        self.last_draw = time.monotonic()
        self.draws += 1
        last = self.history[-1] if self.history else None
        self.text.value = f"<pre>{format_log(last)}</pre>" if last else ""
        if self.mode == "widget":
            with self.figure.batch_update():
                for trace, (x, y) in zip(self.figure.data, self.series().values()):
                    trace.x, trace.y = x, y
        else:
            from IPython.display import clear_output, display

            clear_output(wait=True)
            display(self.text)
            display(self._figure())

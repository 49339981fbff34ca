"""Colab's widget stack: pins kept, and the live plots pick what renders where they run.

Runs in both environments: `.venv` (ipywidgets 8, plotly 7 with anywidget: JupyterLab) and
`.venv-colab` made by `make test-colab` (ipywidgets 7.7.1, plotly 5.24.1, ipykernel 6.17.1: Colab).
Colab itself is recognised by `google.colab` being imported, which the tests fake.
"""

from __future__ import annotations

import os
import sys
import types
from importlib.metadata import version
from pathlib import Path

import ipywidgets as widgets
import pytest

import nbkit.widgets as nw
from nbkit.widgets.quality import figure_widget, lengths_figure

PINS = os.environ.get("NBKIT_COLAB_PINS")  # set by `make test-colab`
RECORDS = [{"step": s, "max_steps": 4, "elapsed_s": float(s), "loss": 3.0 - 0.5 * s} for s in range(1, 5)]


@pytest.fixture
def on_colab(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))


@pytest.fixture
def shown(monkeypatch):
    """What the redraw fallback clears and displays, instead of a notebook's output area."""
    import IPython.display

    calls: list = []
    monkeypatch.setattr(IPython.display, "clear_output", lambda wait=False: calls.append(("clear", wait)))
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: calls.extend(("show", o) for o in objs))
    return calls


@pytest.mark.skipif(not PINS, reason="only in the Colab-pinned venv (make test-colab)")
def test_installing_the_kit_kept_every_colab_pin():
    for line in Path(PINS).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, pinned = line.split("==")
            assert version(name) == pinned, f"installing the kit moved Colab's {name} {pinned} -> {version(name)}"
    assert widgets.__version__.startswith("7."), "the Colab leg must run on ipywidgets 7"


def test_live_monitor_updates_a_figure_widget_in_place_off_colab(shown):
    monitor = nw.LiveMonitor(min_interval=0)
    assert monitor.mode == "widget" and monitor.figure is not None
    for record in RECORDS:
        monitor(record)
    train_trace = monitor.figure.data[0]
    assert list(train_trace.x) == [1, 2, 3, 4] and list(train_trace.y) == [2.5, 2.0, 1.5, 1.0]
    assert not [c for c in shown if c[0] == "clear"], "the widget path must not clear the cell's output"
    assert "loss 1" in monitor.text.value


def test_live_monitor_redraws_a_plain_figure_on_colab(on_colab, shown):
    import plotly.graph_objects as go

    monitor = nw.LiveMonitor(min_interval=0)
    assert monitor.mode == "redraw" and monitor.figure is None
    for record in RECORDS:
        monitor(record)
    figures = [obj for kind, obj in shown if kind == "show" and isinstance(obj, go.Figure)]
    assert len(figures) == len(RECORDS) and ("clear", True) in shown
    assert not isinstance(figures[-1], go.FigureWidget)
    assert list(figures[-1].data[0].y) == [2.5, 2.0, 1.5, 1.0]
    assert "loss 1" in monitor.text.value  # the numbers are always shown as text too


def quality_report():
    return {"lengths": {"histogram": {"edges": [0, 10, 20], "counts": {"user": [3, 1], "assistant": [1, 2]}}}}


def test_quality_figures_are_figure_widgets_off_colab():
    import plotly.graph_objects as go

    assert isinstance(figure_widget(lengths_figure(quality_report()), "lengths"), go.FigureWidget)


def test_quality_figures_are_self_contained_pages_on_colab(on_colab):
    widget = figure_widget(lengths_figure(quality_report()), "lengths")
    assert isinstance(widget, widgets.HTML) and "<iframe srcdoc=" in widget.value
    assert "nbkit-quality-fig-lengths" in widget._dom_classes


def test_panels_display_as_widget_views_on_this_stack(tmp_path):
    from nbkit.collect import CollectConfig

    bundle = nw.CollectPanel(CollectConfig(workspace=str(tmp_path)))._repr_mimebundle_()
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] and view["version_major"] == 2

"""Colab's library stack: what the install cell keeps, the tested range, and live plots that suit each place.

Runs in both environments: `.venv` (ipywidgets 8, plotly 7 with anywidget: JupyterLab) and
`.venv-colab` made by `make test-colab` (ipywidgets 7.7.1, plotly 5.24.1, ipykernel 6.17.1: Colab).
Colab itself is recognised by `google.colab` being imported, which the tests fake.
In `.venv-colab`, the first tests read what the notebooks' install cell changed on Colab's library versions
(snapshots written by tests/colab_install.py); the tested-range checks run in both.
"""

from __future__ import annotations

import os
import re
import sys
import types

import ipywidgets as widgets
import pytest
import tomllib
from colab_install import AFTER, BEFORE, canonical, changes, describe, installed, read_snapshot
from conftest import REPO
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import nbkit.widgets as nw
from nbkit.doctor import TESTED_RANGES
from nbkit.widgets.quality import figure_widget, lengths_figure

PINS = os.environ.get("NBKIT_COLAB_PINS")  # set by `make test-colab`
PINS_FILE = REPO / "tests" / "colab_pins.txt"
# What a Colab kernel has imported or will import from Colab's own install: the kit's install must keep them.
KEPT = ("torch", "transformers", "tokenizers", "numpy", "ipywidgets", "ipykernel", "ipython", "plotly")
# trl 1.16 needs datasets>=4.7 and pyarrow>=21, datasets 5.2 needs huggingface-hub>=1.31: these move up.
EXPECTED_TO_MOVE = ("datasets", "pyarrow", "huggingface-hub")
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


def colab_pins() -> dict[str, str]:
    """Canonical name -> Colab's version, from tests/colab_pins.txt."""
    lines = [line.strip() for line in PINS_FILE.read_text().splitlines()]
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonical(name): pinned for name, pinned in pins}


colab_leg = pytest.mark.skipif(not PINS, reason="only in the Colab-pinned venv (make test-colab)")


@colab_leg
def test_the_venv_started_from_colabs_versions():
    before = read_snapshot(BEFORE)
    assert {name: before.get(name) for name in colab_pins()} == colab_pins()
    assert before["torch"].startswith("2.13.0"), "the local CPU torch, installed before the pins"


@colab_leg
def test_the_install_cell_kept_colabs_core_libraries(capsys):
    changed = changes(read_snapshot(BEFORE), read_snapshot(AFTER))
    with capsys.disabled():
        print("\n" + describe(changed) + "\n")
    moved = {name: change for name, change in changed.items() if name in KEPT}
    assert not moved, f"installing the kit changed Colab's {moved}: adjust the kit's ranges in pyproject.toml"
    for name in EXPECTED_TO_MOVE:
        old, new = changed.get(name, (colab_pins()[name], colab_pins()[name]))
        assert Version(new) >= Version(old), f"the install moved {name} down: {old} -> {new}"
    assert widgets.__version__.startswith("7."), "the Colab leg must run on ipywidgets 7"


@colab_leg
def test_the_tests_run_on_what_the_install_cell_left():
    after, now = read_snapshot(AFTER), installed()
    assert {n: now.get(n) for n in KEPT} == {n: after.get(n) for n in KEPT}


# -- The tested range, written once: pyproject's floors = doctor's lower bounds, and Colab inside it --------


def kit_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["train"]]
    return {canonical(r.name): r for r in reqs}


def floor(specifier: SpecifierSet) -> str | None:
    floors = [s.version for s in specifier if s.operator == ">="]
    return floors[0] if len(floors) == 1 else None


def test_doctors_tested_ranges_start_at_the_kits_floors():
    requirements = kit_requirements()
    for name, spec in TESTED_RANGES.items():
        assert canonical(name) in requirements, f"TESTED_RANGES names {name}, which the kit does not require"
        declared = floor(requirements[canonical(name)].specifier)
        assert declared and floor(SpecifierSet(spec)) == declared, (
            f"{name}: pyproject.toml requires {requirements[canonical(name)].specifier}, nbkit/doctor.py's "
            f"TESTED_RANGES says {spec}: make the lower bounds equal"
        )
        assert any(s.operator == "<" for s in SpecifierSet(spec)), f"{name}: give the tested range an upper bound"


def test_every_colab_version_lies_inside_the_tested_ranges():
    ranges = {canonical(name): SpecifierSet(spec) for name, spec in TESTED_RANGES.items()}
    outside = {
        name: (v, str(ranges[name]))
        for name, v in colab_pins().items()
        if name in ranges and Version(v) not in ranges[name]
    }
    assert not outside, f"Colab's versions outside nbkit/doctor.py's TESTED_RANGES: {outside}"
    assert {"transformers", "peft", "accelerate", "datasets"} <= set(colab_pins()) & set(ranges)


def test_the_pins_file_says_which_colab_runtime_it_comes_from():
    lines = PINS_FILE.read_text().splitlines()
    header = "\n".join(lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])
    assert "backend-info" in header and re.search(r"\b20\d\d-\d\d-\d\d\b", header)


def test_the_pinned_kept_libraries_are_all_in_the_pins_file():
    assert set(KEPT) - {"torch"} <= set(colab_pins())  # torch: the local CPU wheel, see the file


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
    from nbkit.data.collect import CollectConfig

    bundle = nw.CollectPanel(CollectConfig(workspace=str(tmp_path)))._repr_mimebundle_()
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] and view["version_major"] == 2

"""The core runs without any notebook machinery: importing it must not need ipywidgets or IPython."""

import subprocess
import sys

CORE = ["nbkit", "nbkit.collect", "nbkit.formatting", "nbkit.split", "nbkit.train", "nbkit.evaluate",
        "nbkit.models", "nbkit.runs", "nbkit.metrics", "nbkit.pipeline", "nbkit.cli", "nbkit.quality",
        "nbkit.ratings", "nbkit.playground", "nbkit.report", "nbkit.export", "nbkit.colab_setup",
        "nbkit.near_duplicates", "nbkit.pii", "nbkit.diversity", "nbkit.loss_mask", "nbkit.train_config",
        "nbkit.train_log", "nbkit.errors", "nbkit.readers", "nbkit.hub", "nbkit.schemas", "nbkit.preferences",
        "nbkit.preference_files", "nbkit.preference_report", "nbkit.prefer", "nbkit.prefer_config", "nbkit.workspace"]


def test_core_imports_with_ipywidgets_blocked():
    code = (
        "import sys\n"
        "for name in ('ipywidgets', 'IPython', 'IPython.display', 'google.colab'): sys.modules[name] = None\n"
        f"import importlib\nfor m in {CORE!r}: importlib.import_module(m)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_widgets_are_not_imported_by_the_core():
    code = "import sys, nbkit.train, nbkit.evaluate, nbkit.collect; print('ipywidgets' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr

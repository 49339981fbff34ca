"""The core runs without any notebook machinery, its layers hold (import-linter's contracts in pyproject.toml), and
no module grows past what a reader takes in at once."""

import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nbkit

REPO = Path(__file__).resolve().parent.parent
CORE = sorted(
    m.name
    for m in pkgutil.walk_packages(nbkit.__path__, "nbkit.")
    if not m.name.startswith(("nbkit.widgets", "nbkit.notebooks"))
)
MAX_LINES = 400


def test_every_module_imports_with_ipywidgets_blocked():
    code = (
        "import sys\n"
        "for name in ('ipywidgets', 'IPython', 'IPython.display', 'google.colab', 'plotly'): sys.modules[name] = None\n"
        f"import importlib\nfor m in {CORE!r}: importlib.import_module(m)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert {
        "nbkit.core.workspace",
        "nbkit.model.generation",
        "nbkit.data.collect",
        "nbkit.train.prefer.trainer",
        "nbkit.evaluate.evaluator",
        "nbkit.export.exporter",
    } <= set(CORE)


def test_widgets_are_not_imported_by_the_core():
    code = "import sys, nbkit.train, nbkit.evaluate, nbkit.data, nbkit.export; print('ipywidgets' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_import_contracts_hold():
    """Entry points > stages (independent of each other) > model > core, no circles, no notebook library below
    the panels, no model library in the core: `lint-imports` (make lint) with pyproject.toml's contracts."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") == 4, result.stdout[-3000:]


def test_no_module_is_longer_than_a_reader_takes_in():
    long = {
        str(p.relative_to(REPO)): n
        for p in [*REPO.glob("nbkit/**/*.py"), *REPO.glob("widgets/*.py")]
        if "sample_data" not in p.parts and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them where the ideas part): {long}"

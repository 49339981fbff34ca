"""The committed notebooks: clean, one parameters cell, no logic, parameters matching the configs."""

from __future__ import annotations

import ast
import dataclasses
import json

import pytest

from conftest import NOTEBOOKS
from nbkit.collect import CollectConfig
from nbkit.evaluate import EvalConfig
from nbkit.formatting import FormatConfig
from nbkit.pipeline import NOTEBOOKS as NAMES
from nbkit.split import SplitConfig
from nbkit.train import TrainConfig

CONFIGS = {"01_collect": CollectConfig, "02_format": FormatConfig, "03_split": SplitConfig,
           "04_train": TrainConfig, "05_evaluate": EvalConfig}


def cells(name):
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]


def parameters_cell(name):
    return [c for c in cells(name) if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_all_five_notebooks_exist():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == list(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_exactly_one_parameters_cell(name):
    assert len(parameters_cell(name)) == 1


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    code = [c for c in cells(name) if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)


@pytest.mark.parametrize("name", NAMES)
def test_code_cells_hold_no_logic(name):
    for cell in cells(name):
        if cell["cell_type"] != "code" or "parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        tree = ast.parse("".join(cell["source"]))
        defined = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defined, f"{name}: define functions in nbkit, not in the notebook"
        control = [n for n in ast.walk(tree) if isinstance(n, (ast.If, ast.For, ast.While, ast.Try, ast.With))]
        assert not control, f"{name}: branches and loops belong in nbkit; a cell only calls it"
        statements = [n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom))]
        assert len(statements) <= 6, f"{name}: a code cell should be a few lines that call nbkit"


@pytest.mark.parametrize("name", NAMES)
def test_parameters_are_typed_commented_and_known_to_the_config(name):
    import papermill

    declared = papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
    source = "".join(parameters_cell(name)[0]["source"]).splitlines()
    assert len(declared) == len([line for line in source if line.strip()]), "papermill could not parse every line"
    assert all(p["help"] for p in declared.values()), "each parameter needs a comment"
    fields = {f.name for f in dataclasses.fields(CONFIGS[name])}
    assert set(declared) - {"interactive"} <= fields
    assert "interactive" in declared and "workspace" in declared


@pytest.mark.parametrize("name", NAMES)
def test_notebook_defaults_match_config_defaults(name):
    """The parameters cell and the config agree, so headless and interactive runs start the same."""
    import papermill

    defaults = CONFIGS[name]().to_dict()
    for param, info in papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb")).items():
        if param in defaults:
            assert ast.literal_eval(info["default"]) == defaults[param], param

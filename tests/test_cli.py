"""`nbkit run`: argument parsing, notebook selection, parameter routing, failure reporting."""

from __future__ import annotations

import json

import nbformat
import pytest
from conftest import NOTEBOOKS

from nbkit.cli import build_parser, main, parse_value
from nbkit.core.errors import ConfigError, NotebookFailed
from nbkit.pipeline import plan, run_notebooks, select


@pytest.mark.parametrize(
    "text, value",
    [
        ("10", 10),
        ("1e-3", 0.001),
        ("true", True),
        ("[a, b]", ["a", "b"]),
        ('["x.jsonl"]', ["x.jsonl"]),
        ("embedded:SmolLM2-135M-Instruct", "embedded:SmolLM2-135M-Instruct"),
        ("", ""),
        ("on", "on"),
        ("off", "off"),
        ("yes", "yes"),
        ("No", "No"),
    ],
)
def test_parameter_values_are_typed(text, value):
    assert parse_value(text) == value


def test_documented_string_values_pass_the_command_line_unchanged():
    """YAML 1.1 would read `on` as True, which gradient_checkpointing refuses."""
    from nbkit.core.train_config import CHECKPOINTING, TrainConfig

    for value in CHECKPOINTING:
        assert TrainConfig(gradient_checkpointing=parse_value(value)).gradient_checkpointing == value
    with pytest.raises(ConfigError, match="`load_best` must be True or False"):
        TrainConfig(load_best=parse_value("off"))
    assert TrainConfig(load_best=parse_value("false")).load_best is False


def test_select_accepts_numbers_and_names():
    assert select("03,04") == ["03_split", "04_train"]
    assert select(["5", "collect"]) == ["01_collect", "05_evaluate"]
    assert select(None) == ["01_collect", "02_format", "03_split", "04_train", "05_evaluate"]
    with pytest.raises(ConfigError, match="unknown notebook '07'"):
        select("07")


def test_parameters_go_only_to_the_notebooks_that_declare_them():
    injected = plan(["01_collect", "04_train"], {"workspace": "/w", "max_steps": 3, "sources": []}, NOTEBOOKS)
    assert injected["01_collect"] == {"workspace": "/w", "sources": []}
    assert injected["04_train"] == {"workspace": "/w", "max_steps": 3}


def test_unknown_parameter_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="unknown parameter max_stepz"):
        plan(["04_train"], {"max_stepz": 3}, NOTEBOOKS)


def test_cli_parser_collects_repeated_parameters():
    args = build_parser().parse_args(["run", "--workspace", "w", "--only", "03", "-p", "seed", "7", "-p", "a", "b"])
    assert args.parameter == [["seed", "7"], ["a", "b"]] and args.only == "03"


def make_notebooks(folder, failing_source: str):
    """Tiny fixture notebooks named like the real ones: 01 records its parameters, 02 fails."""
    folder.mkdir()
    params = nbformat.v4.new_code_cell('workspace: str = "x"  # where\ninteractive: bool = True  # panels')
    params.metadata["tags"] = ["parameters"]
    record = nbformat.v4.new_code_cell(
        "import json, pathlib\npathlib.Path(workspace, 'seen.json').write_text(json.dumps([workspace, interactive]))"
    )
    for name, cells in (
        ("01_collect", [params, record]),
        ("02_format", [params, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(failing_source)]),
    ):
        nb = nbformat.v4.new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / f"{name}.ipynb")


@pytest.mark.notebooks
def test_run_injects_workspace_and_headless_mode(tmp_path):
    make_notebooks(tmp_path / "nbs", "pass")
    written = run_notebooks(tmp_path / "ws", only="01", notebooks=tmp_path / "nbs", log_output=False)
    assert json.loads((tmp_path / "ws" / "seen.json").read_text()) == [str(tmp_path / "ws"), False]
    assert written == [tmp_path / "ws" / "executed" / "01_collect.ipynb"]


@pytest.mark.notebooks
def test_failing_cell_names_notebook_cell_and_error(tmp_path, capsys):
    make_notebooks(tmp_path / "nbs", "raise ValueError('broken row 17')")
    with pytest.raises(NotebookFailed) as err:
        run_notebooks(tmp_path / "ws", notebooks=tmp_path / "nbs", only="01,02", log_output=False)
    message = str(err.value)
    assert message.startswith("02_format.ipynb, cell 3")
    assert "(`raise ValueError('broken row 17')`): ValueError: broken row 17" in message
    assert "\n" not in message
    code = main(
        ["run", "--workspace", str(tmp_path / "ws"), "--notebooks", str(tmp_path / "nbs"), "--quiet", "--only", "02"]
    )
    assert code == 1
    assert "02_format.ipynb, cell 3" in capsys.readouterr().err

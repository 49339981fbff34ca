"""nbkit.train.launch: the shipped accelerate config files, the `accelerate launch` command for a config, and the
round trip notebook parameters -> TrainConfig -> config.json -> `nbkit train` on the command line."""

from __future__ import annotations

import ast
import filecmp
import json
import shlex
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
import tomllib
from conftest import NOTEBOOKS, REPO

from nbkit.cli import build_parser, load_train_config
from nbkit.core.errors import ConfigError
from nbkit.core.train_config import TrainConfig
from nbkit.train import launch
from nbkit.train.launch import STRATEGIES, accelerate_config_path, dry_start, launch_command, resolve_processes


def load_accelerate_config(path):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(path))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_shipped_configs_load_with_accelerate(strategy):
    path = accelerate_config_path(strategy)
    config = load_accelerate_config(path)  # accelerate's own parser: unknown keys or bad values raise
    assert config.num_machines == 1 and config.mixed_precision == "no"
    assert config.main_process_port == 0, "a free port, so two runs on one machine do not collide"
    assert str(config.distributed_type).endswith("FSDP" if strategy == "fsdp-qlora" else "MULTI_GPU")
    assert config.use_cpu == (strategy == "ddp-cpu")


def test_fsdp_qlora_config_has_the_settings_peft_documents():
    """PEFT's FSDP+QLoRA guide: cpu_ram_efficient_loading (with sync_module_states) and use_orig_params off."""
    fsdp = load_accelerate_config(accelerate_config_path("fsdp-qlora")).fsdp_config
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True and fsdp["fsdp_sync_module_states"] is True
    assert fsdp["fsdp_use_orig_params"] is False and fsdp["fsdp_version"] == 1
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT", "the adapter must save as one normal PEFT folder"


def test_configs_ship_as_package_data():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "nbkit.accelerate_configs" in setuptools["packages"]
    assert setuptools["package-data"]["nbkit.accelerate_configs"] == ["*.yaml"]
    assert {p.name for p in (REPO / "nbkit" / "accelerate_configs").glob("*.yaml")} == set(STRATEGIES.values())


def test_launch_imports_without_notebook_machinery():
    code = (
        "import sys\nfor name in ('ipywidgets', 'IPython', 'IPython.display'): sys.modules[name] = None\n"
        "import nbkit.train.launch, nbkit.cli\nprint('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_default_processes_follow_the_devices(monkeypatch):
    monkeypatch.setattr(launch, "gpu_count", lambda: 0)
    assert resolve_processes() == (1, "ddp-cpu")
    assert resolve_processes(2) == (2, "ddp-cpu")
    monkeypatch.setattr(launch, "gpu_count", lambda: 4)
    assert resolve_processes() == (4, "ddp")
    assert resolve_processes(2, "fsdp-qlora") == (2, "fsdp-qlora")


def test_launch_errors_name_the_field(monkeypatch):
    monkeypatch.setattr(launch, "gpu_count", lambda: 2)
    with pytest.raises(ConfigError, match="`num_processes` is 4 but this machine has 2 GPU"):
        resolve_processes(4)
    with pytest.raises(ConfigError, match="`num_processes` must be a whole number >= 1, got 0"):
        resolve_processes(0)
    with pytest.raises(ConfigError, match="`strategy` must be one of .*got 'deepspeed'"):
        resolve_processes(2, "deepspeed")
    monkeypatch.setattr(launch, "gpu_count", lambda: 0)
    with pytest.raises(ConfigError, match="`strategy` 'fsdp-qlora' needs GPUs .* use strategy='ddp-cpu' here"):
        resolve_processes(2, "fsdp-qlora")


def train_args(command: str) -> list[str]:
    """The arguments `accelerate launch` hands to `python -m nbkit.cli`."""
    argv = shlex.split(command)
    assert argv[:2] == ["accelerate", "launch"]
    return argv[argv.index("nbkit.cli") + 1 :]


def test_launch_command_writes_the_files_it_points_at(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "gpu_count", lambda: 0)
    config = TrainConfig(workspace=str(tmp_path / "ws"), run_id="r1", max_steps=3)
    command = launch_command(config, 2)
    argv = shlex.split(command)
    assert argv[argv.index("--num_processes") + 1] == "2" and argv[argv.index("-m") + 1] == "nbkit.cli"
    folder = tmp_path / "ws" / "launch" / "r1"
    assert argv[argv.index("--config_file") + 1] == str(folder / "accelerate.yaml")
    assert filecmp.cmp(folder / "accelerate.yaml", accelerate_config_path("ddp-cpu"), shallow=False)
    args = build_parser().parse_args(train_args(command))
    assert args.command == "train" and args.config == str(folder / "config.json")
    assert not (tmp_path / "ws" / "runs").exists(), "only a started run creates runs/<run_id>/"
    assert load_train_config(args.config) == config


def test_launch_command_gives_a_new_run_an_id_and_an_absolute_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = launch_command(TrainConfig(workspace="ws"), 1, strategy="ddp-cpu", max_steps=2, output_dir="out")
    args = build_parser().parse_args(train_args(command))
    assert args.max_steps == 2 and args.output_dir == str(tmp_path / "out")
    saved = json.loads(Path(args.config).read_text())
    assert saved["workspace"] == str(tmp_path / "ws") and saved["run_id"], "absolute, so any folder can launch it"
    assert Path(args.config).parent == tmp_path / "ws" / "launch" / saved["run_id"]
    assert not (tmp_path / "out").exists(), "the run folder is made by the run, not by the command"


def test_resuming_without_a_run_id_points_at_the_latest_run_with_a_checkpoint(tmp_path):
    ws = tmp_path / "ws"
    for run_id, step in (("20260101-000000-aaaa", 4), ("20260102-000000-bbbb", 2)):
        (ws / "runs" / run_id / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        (ws / "runs" / run_id / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (ws / "runs" / "20260103-000000-cccc").mkdir()  # newer, but nothing to resume from
    command = launch_command(TrainConfig(workspace=str(ws), resume=True), 1, strategy="ddp-cpu")
    loaded = load_train_config(build_parser().parse_args(train_args(command)).config)
    assert loaded.run_id == "20260102-000000-bbbb" and loaded.resume is True


def notebook_parameters(name: str) -> dict:
    """The parameters cell's defaults, as papermill sees them."""
    return {
        p: ast.literal_eval(info["default"])
        for p, info in papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb")).items()
    }


def test_notebook_parameters_round_trip_through_file_and_cli(tmp_path, monkeypatch):
    """What papermill injects into 04_train becomes the TrainConfig that `nbkit train` loads in every process."""
    monkeypatch.setattr(launch, "gpu_count", lambda: 0)
    params = notebook_parameters("04_train")
    fields = TrainConfig.help()
    shared = {name: value for name, value in params.items() if name in fields}
    assert len(shared) >= 10, f"04_train's parameters should fill a TrainConfig, got {sorted(shared)}"
    injected = {"workspace": str(tmp_path / "ws"), "max_steps": 7, "learning_rate": 5e-4, "run_id": "nb-run"}
    config = TrainConfig(**{**shared, **{k: v for k, v in injected.items() if k in fields}})
    args = build_parser().parse_args(train_args(launch_command(config, 2)))
    loaded = load_train_config(args.config)
    assert loaded == config and loaded.to_dict() == config.to_dict()
    assert load_train_config(args.config, max_steps=2) == config.replace(max_steps=2)


@pytest.mark.model
def test_fsdp_launch_stores_4bit_weights_in_a_dtype_fsdp_can_shard(monkeypatch):
    """Under an FSDP launch (accelerate sets ACCELERATE_USE_FSDP) the packed 4-bit weights use the compute dtype
    (bnb_4bit_quant_storage), as PEFT's FSDP + QLoRA guide requires; FSDP shards floating-point tensors only."""
    from nbkit.model.loader import EMBEDDED_MODEL, load_model, pick_device

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    plan = pick_device("qlora")
    assert plan.quant_storage == plan.compute_dtype == plan.trainable_dtype, "FSDP shards one dtype per flat parameter"
    model, method = load_model(EMBEDDED_MODEL, "qlora", plan)
    packed = [p for p in model.parameters() if type(p).__name__ == "Params4bit"]
    assert method == "qlora" and packed
    assert {p.dtype for p in packed} == {plan.torch_dtype()}


@pytest.mark.model
@pytest.mark.parametrize("strategy", ["ddp", "fsdp-qlora"])  # ddp-cpu: the real 2-process run
def test_dry_start_launches_two_processes_in_one_group(strategy):
    """accelerate's launcher starts 2 processes from the shipped file; without GPUs they join one gloo group."""
    reports = dry_start(strategy, 2)
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["all_reduce"] == 2.0 and r["backend"] == "gloo" for r in reports)
    assert all(r["omp_num_threads"] == "1" for r in reports), "torchrun gives each process one thread"
    if strategy == "fsdp-qlora":
        env, plugin = reports[0]["launcher_env"], reports[0]["fsdp_plugin"]
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
        assert env["FSDP_USE_ORIG_PARAMS"] == "false" and env["FSDP_SYNC_MODULE_STATES"] == "true"
        assert plugin["version"] == 1 and plugin["use_orig_params"] is False
        assert plugin["state_dict_type"].endswith("FULL_STATE_DICT")
        assert plugin["sharding_strategy"].endswith("FULL_SHARD")
        assert plugin["auto_wrap_policy"] == "transformer_auto_wrap_policy"

"""One run on several processes: the `accelerate launch` command for a saved TrainConfig.

nbkit does no distributed work of its own. Hugging Face accelerate starts the processes (its torchrun
launcher) from one of the config files shipped in `nbkit/accelerate_configs/`, and TRL's trainer runs
DDP or FSDP inside them. Each process runs `nbkit train --config ...`; only the main process writes the
run folder runs/<run_id>/.

    from nbkit.train.launch import launch_command
    print(launch_command(config, num_processes=4))
    # accelerate launch --config_file WS/launch/<run_id>/accelerate.yaml --num_processes 4 \
    #     -m nbkit.cli train --config WS/launch/<run_id>/config.json
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from nbkit.core.errors import ConfigError
from nbkit.core.workspace import Workspace

if TYPE_CHECKING:
    from nbkit.core.train_config import TrainConfig

# strategy -> accelerate config file in nbkit/accelerate_configs/
STRATEGIES = {
    "ddp": "ddp.yaml",  # data parallel on GPUs: every GPU holds the whole (4-bit) model
    "fsdp-qlora": "fsdp_qlora.yaml",  # 4-bit weights sharded across GPUs, for models too large for one
    "ddp-cpu": "ddp_cpu.yaml",  # data parallel on CPU processes (gloo): tests, many-core machines
}


def accelerate_config_path(strategy: str) -> Path:
    """The accelerate config file shipped with nbkit for a strategy."""
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"`strategy` must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r} — "
            "use 'ddp' on GPUs, 'fsdp-qlora' when the 4-bit model does not fit on one GPU, "
            "'ddp-cpu' without GPUs."
        )
    return Path(str(resources.files("nbkit") / "accelerate_configs" / STRATEGIES[strategy]))


def gpu_count() -> int:
    try:
        import torch
    except ImportError:  # the core runs without the training extra; no torch means no GPU to use
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_processes(num_processes: int | None = None, strategy: str | None = None) -> tuple[int, str]:
    """(number of processes, strategy): by default one process per GPU with DDP, one CPU process without GPUs."""
    gpus = gpu_count()
    strategy = strategy or ("ddp" if gpus else "ddp-cpu")
    accelerate_config_path(strategy)  # validates the name
    if num_processes is None:
        num_processes = gpus if strategy != "ddp-cpu" and gpus else 1
    if not isinstance(num_processes, int) or isinstance(num_processes, bool) or num_processes < 1:
        raise ConfigError(
            f"`num_processes` must be a whole number >= 1, got {num_processes!r} — "
            "pass the number of GPUs (or CPU processes) to use."
        )
    if strategy == "fsdp-qlora" and not gpus:
        raise ConfigError(
            "`strategy` 'fsdp-qlora' needs GPUs (accelerate builds FSDP only on GPUs) and this "
            "machine has none — use strategy='ddp-cpu' here, or build the command on the GPU machine."
        )
    if strategy != "ddp-cpu" and gpus and num_processes > gpus:
        raise ConfigError(
            f"`num_processes` is {num_processes} but this machine has {gpus} GPU(s) — "
            f"pass num_processes={gpus} or fewer (one process per GPU)."
        )
    return num_processes, strategy


def write_launch_files(config: TrainConfig, strategy: str) -> tuple[Path, Path]:
    """Write the run's config.json and a copy of the accelerate config for the launch command.

    They go to WS/launch/<run_id>/, not into the run folder: only a started run creates runs/<run_id>/ (a
    command printed in notebook 04 and never run leaves no half-made run behind), and the file every process
    reads at start is never the one the main process rewrites while the others read it.

    The workspace is made absolute so the command works from any folder; an empty run_id becomes the
    run the command will train: a new timestamped id, or with resume=True the latest run with a checkpoint
    (as train() picks it). Returns (config.json, accelerate.yaml).
    """
    from nbkit.core.runs import new_run_id, run_to_resume

    config = config.replace(workspace=str(Path(config.workspace).expanduser().resolve()))
    if not config.run_id:
        run_id = run_to_resume(Workspace(config.workspace), config) if config.resume else new_run_id()
        config = config.replace(run_id=run_id)
    folder = Workspace(config.workspace).root / "launch" / config.run_id
    config_path = config.save(folder / "config.json")
    accelerate_path = folder / "accelerate.yaml"
    shutil.copyfile(accelerate_config_path(strategy), accelerate_path)
    return config_path, accelerate_path


def launch_argv(
    config_path: str | Path,
    num_processes: int,
    accelerate_config: str | Path,
    *,
    output_dir: str | Path | None = None,
    max_steps: int | None = None,
    accelerate: str = "accelerate",
) -> list[str]:
    """The `accelerate launch ... -m nbkit.cli train --config ...` command as an argument list."""
    argv = [
        accelerate,
        "launch",
        "--config_file",
        str(accelerate_config),
        "--num_processes",
        str(num_processes),
        "-m",
        "nbkit.cli",
        "train",
        "--config",
        str(config_path),
    ]
    if max_steps is not None:
        argv += ["--max-steps", str(max_steps)]
    if output_dir is not None:
        argv += ["--output-dir", str(Path(output_dir).expanduser().resolve())]
    return argv


def launch_command(
    config: TrainConfig,
    num_processes: int | None = None,
    *,
    strategy: str | None = None,
    output_dir: str | Path | None = None,
    max_steps: int | None = None,
) -> str:
    """The exact shell command that trains `config` on `num_processes` processes with accelerate.

    Writes the files it points at into WS/launch/<run_id>/: the resolved config.json and accelerate.yaml,
    a copy of the strategy's accelerate config. `output_dir` (passed on as --output-dir) receives the run
    instead of runs/<run_id>/. `num_processes`
    defaults to the number of GPUs (1 on a CPU-only machine); `strategy` to "ddp" with GPUs and
    "ddp-cpu" without. Use "fsdp-qlora" when the 4-bit model does not fit on one GPU.
    """
    num_processes, strategy = resolve_processes(num_processes, strategy)
    config_path, accelerate_path = write_launch_files(config, strategy)
    return shlex.join(
        launch_argv(config_path, num_processes, accelerate_path, output_dir=output_dir, max_steps=max_steps)
    )


# -- checking a config without GPUs ---------------------------------------------------------------------
def dry_start(strategy: str, num_processes: int = 2, timeout: float = 120) -> list[dict]:
    """Start `num_processes` processes with accelerate's own launcher and the strategy's config file, and
    have each report what accelerate set up for it (distributed type, backend, FSDP plugin), without a model.

    This is the check available without GPUs: accelerate parses and validates the file, torchrun starts the
    processes, they join one process group (gloo on CPU) and build accelerate's FSDP plugin from the
    launcher's environment. It does not load, shard or train a model. Returns one report per process.
    """
    config = accelerate_config_path(strategy)
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    argv = [
        accelerate if os.path.exists(accelerate) else "accelerate",
        "launch",
        "--config_file",
        str(config),
        "--num_processes",
        str(num_processes),
        "-m",
        "nbkit.train.launch",
    ]
    with tempfile.TemporaryDirectory(prefix="nbkit-dry-start-") as folder:  # one report file per process
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, "NBKIT_DRY_START": folder}
        )
        reports = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("rank-*.json"))]
    if done.returncode != 0 or len(reports) != num_processes:
        raise RuntimeError(
            f"dry start of {config.name} with {num_processes} processes failed "
            f"(exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return sorted(reports, key=lambda r: r["rank"])


def _report_process() -> dict:
    """Inside a launched process: what accelerate made of the launcher's environment."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    report = {
        "rank": state.process_index,
        "world_size": state.num_processes,
        "distributed_type": str(state.distributed_type).split(".")[-1],
        "backend": state.backend,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "launcher_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("FSDP_", "ACCELERATE_USE"))},
    }
    if os.environ.get("ACCELERATE_USE_FSDP") == "true":
        report["fsdp_plugin"] = _fsdp_plugin_report()
    total = torch.ones(1, device=state.device)  # nccl on GPUs reduces device tensors only
    torch.distributed.all_reduce(total)  # the processes really form one group
    report["all_reduce"] = total.item()
    state.destroy_process_group()
    return report


def _fsdp_plugin_report() -> dict:
    """accelerate's FSDP plugin built from the launcher's environment, as the trainer will build it.

    Without a GPU, accelerate refuses `sync_module_states` (it needs the device the weights are broadcast
    to), so on a CPU-only machine the plugin is built with it and cpu_ram_efficient_loading (which
    requires it) off; the launcher's values are in `launcher_env`.
    """
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin

    overrides = (
        {}
        if torch.cuda.is_available()
        else {"FSDP_SYNC_MODULE_STATES": "false", "FSDP_CPU_RAM_EFFICIENT_LOADING": "false"}
    )
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        plugin = FullyShardedDataParallelPlugin()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    policy = plugin.auto_wrap_policy
    return {
        "version": plugin.fsdp_version,
        "sharding_strategy": str(plugin.sharding_strategy),
        "offload_params": bool(plugin.cpu_offload and plugin.cpu_offload.offload_params),
        "state_dict_type": str(plugin.state_dict_type),
        "use_orig_params": plugin.use_orig_params,
        "backward_prefetch": str(plugin.backward_prefetch),
        "auto_wrap_policy": getattr(policy, "__name__", str(policy)),
        "built_without": sorted(overrides),
    }


if __name__ == "__main__" and os.environ.get("NBKIT_DRY_START"):
    _report = _report_process()
    Path(os.environ["NBKIT_DRY_START"], f"rank-{_report['rank']}.json").write_text(json.dumps(_report))
    # Importing torch.distributed.fsdp keeps a reference to the gloo process group, so destroying it does not
    # free it; its threads are then torn down during interpreter finalization, which aborts the process
    # ("terminate called without an active exception") about one start in five. The probe is done: leave now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

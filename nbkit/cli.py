"""Command line: `nbkit run` executes the guided notebooks headlessly; `nbkit train` trains from a saved
config, in one process or in each of the processes `accelerate launch` starts (see nbkit.train.launch)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from nbkit.core.errors import ConfigError, NbkitError

# YAML 1.1 reads these as booleans, but several are documented values of string parameters
# (gradient_checkpointing on/off), so they reach the config as the text typed; a boolean parameter
# then says it wants true or false.
YAML_BOOLEAN_WORDS = {"on", "off", "yes", "no", "y", "n"}


def parse_value(text: str) -> Any:
    """-p values: JSON first (10, 1e-3, true, ["a.jsonl"]), then YAML ([a, b]), else the text.
    on/off/yes/no stay text: the config decides what they mean for its field."""
    if text.strip().lower() in YAML_BOOLEAN_WORDS:
        return text.strip()
    for load in (json.loads, yaml.safe_load):
        try:
            value = load(text)
        except (ValueError, yaml.YAMLError):
            continue
        if value is not None:
            return value
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbkit", description="Fine-tune language models with QLoRA from guided notebooks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebooks with papermill (01_collect ... 05_evaluate)")
    run.add_argument("--workspace", default="workspace", help="folder for every stage's output (default: workspace)")
    run.add_argument("--only", default=None, help="comma list of notebooks, e.g. 03,04 (default: all five)")
    run.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a notebook parameter, e.g. -p max_steps 20 (repeatable)",
    )
    run.add_argument("--notebooks", default=None, help="folder with the notebooks (default: the kit's own)")
    run.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    run.add_argument("--quiet", action="store_true", help="do not stream cell output")
    train = sub.add_parser(
        "train",
        help="train from a saved config, e.g. runs/<run_id>/config.json (also in each process of `accelerate launch`)",
    )
    train.add_argument(
        "--config", required=True, help="a TrainConfig JSON file (04_train writes runs/<run_id>/config.json)"
    )
    train.add_argument("--max-steps", type=int, default=None, help="override max_steps, e.g. 2 for a quick check")
    train.add_argument(
        "--output-dir",
        default=None,
        help="folder for the run record, adapter and checkpoints (default: runs/<run_id>/ in the config's workspace)",
    )
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint (sets resume=True)")
    return parser


class CellOutputFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage().rstrip("\n")


PAPERMILL_BANNERS = ("Input Notebook", "Output Notebook", "Executing", "Ending Cell")


def stream_cell_output() -> None:
    """papermill logs cell output at INFO; show it as plain text, without its banners."""
    logger = logging.getLogger("papermill")
    if any(isinstance(h.formatter, CellOutputFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CellOutputFormatter())
    handler.addFilter(lambda record: not record.getMessage().startswith(PAPERMILL_BANNERS))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            train_command(args.config, max_steps=args.max_steps, output_dir=args.output_dir, resume=args.resume)
        else:
            run_command(args)
    except NbkitError as err:
        print(f"nbkit: error: {err}", file=sys.stderr)
        return 1
    return 0


def run_command(args: argparse.Namespace) -> None:
    if not args.quiet:
        stream_cell_output()
    from nbkit.pipeline import run_notebooks

    params = {name: parse_value(value) for name, value in args.parameter}
    run_notebooks(args.workspace, args.only, params, args.notebooks, args.kernel, log_output=not args.quiet)
    print_summary(args.workspace)


def load_train_config(path: str | Path, *, max_steps: int | None = None, resume: bool = False):
    """The TrainConfig saved at `path`, with the command line's overrides applied (and validated)."""
    from nbkit.core.train_config import TrainConfig

    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"`--config` {path} does not exist — pass the config.json of a run "
            "(runs/<run_id>/config.json, written by 04_train or nbkit.train.launch.launch_command)."
        )
    try:
        config = TrainConfig.load(path)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"`--config` {path} is not valid JSON ({err}) — pass a config.json written by nbkit."
        ) from err
    overrides: dict[str, Any] = {}
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    if resume:
        overrides["resume"] = True
    return config.replace(**overrides) if overrides else config


def train_command(
    config_path: str | Path, *, max_steps: int | None = None, output_dir: str | None = None, resume: bool = False
) -> dict[str, Any]:
    """`nbkit train`: one process, or one of N under `accelerate launch`; only process 0 prints and writes."""
    from nbkit.train.runtime import is_main_process
    from nbkit.train.sft import print_log, train

    config = load_train_config(config_path, max_steps=max_steps, resume=resume)
    main_process = is_main_process()
    run_dir = Path(output_dir).expanduser().resolve() if output_dir else None
    try:
        record = train(config, on_log=print_log if main_process else _no_log, run_dir=run_dir)
    finally:
        _leave_process_group()
    if main_process:
        print(
            f"Run {record.get('run_id')}: {record.get('steps')} steps on {record.get('world_size', 1)} "
            f"process(es), effective batch {record.get('effective_batch_size')}; adapter in {record.get('adapter')}",
            flush=True,
        )
    return record


def _no_log(record: dict[str, Any]) -> None:
    """Processes other than 0 stay silent (their logs repeat process 0's)."""


def _leave_process_group() -> None:
    """End the process group of a launched run: a gloo group left open can abort the process at exit."""
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def print_summary(workspace: str) -> None:
    from nbkit.core.files import read_json
    from nbkit.core.runs import list_runs
    from nbkit.core.workspace import Workspace
    from nbkit.evaluate.summary import format_summary

    runs = list_runs(workspace)
    summary = Workspace(workspace).run_dir(runs[-1]) / "eval" / "summary.json" if runs else None
    if summary and summary.exists():
        print("\n" + format_summary(read_json(summary)))


if __name__ == "__main__":
    sys.exit(main())

"""Command line: `nbkit run` executes the guided notebooks headlessly."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import yaml

from nbkit.errors import NbkitError


def parse_value(text: str) -> Any:
    """-p values: JSON first (10, 1e-3, true, ["a.jsonl"]), then YAML ([a, b], yes), else the text."""
    for load in (json.loads, yaml.safe_load):
        try:
            value = load(text)
        except (ValueError, yaml.YAMLError):
            continue
        if value is not None:
            return value
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbkit", description="Fine-tune language models with QLoRA from guided notebooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebooks with papermill (01_collect ... 05_evaluate)")
    run.add_argument("--workspace", default="workspace", help="folder for every stage's output (default: workspace)")
    run.add_argument("--only", default=None, help="comma list of notebooks, e.g. 03,04 (default: all five)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="set a notebook parameter, e.g. -p max_steps 20 (repeatable)")
    run.add_argument("--notebooks", default=None, help="folder with the notebooks (default: the kit's own)")
    run.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    run.add_argument("--quiet", action="store_true", help="do not stream cell output")
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
    if not args.quiet:
        stream_cell_output()
    from nbkit.pipeline import run_notebooks

    params = {name: parse_value(value) for name, value in args.parameter}
    try:
        run_notebooks(args.workspace, args.only, params, args.notebooks, args.kernel, log_output=not args.quiet)
        print_summary(args.workspace)
    except NbkitError as err:
        print(f"nbkit: error: {err}", file=sys.stderr)
        return 1
    return 0


def print_summary(workspace: str) -> None:
    from nbkit.evaluate import format_summary
    from nbkit.runs import list_runs
    from nbkit.workspace import Workspace, read_json

    runs = list_runs(workspace)
    summary = Workspace(workspace).run_dir(runs[-1]) / "eval" / "summary.json" if runs else None
    if summary and summary.exists():
        print("\n" + format_summary(read_json(summary)))


if __name__ == "__main__":
    sys.exit(main())

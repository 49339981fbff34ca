"""Benchmark: nbkit's training against a plain TRL SFTTrainer script, trained tokens per second.

Same model (embedded SmolLM2-135M in 4-bit), same LoRA (r=16, all linear layers), same rows
(one epoch over the first --rows training rows of the bundled data, so every variant trains
exactly the same non-padding tokens), same learning rate and batch size. Variants run in
alternating rounds so that load from other processes hits them alike; the median round counts.

Targets (issue: training): nbkit with TRL's batching >= 1.0x TRL; nbkit's defaults >= 1.3x
TRL's defaults. Also printed: peak memory of QLoRA vs 32-bit LoRA (separate processes).
Run with `make benchmark`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from nbkit.core.files import read_jsonl, write_jsonl
from nbkit.core.train_config import TrainConfig
from nbkit.core.workspace import Workspace
from nbkit.data.collect import CollectConfig, collect
from nbkit.data.formatting import FormatConfig, format_rows
from nbkit.data.split import SplitConfig, split_dataset
from nbkit.model.loader import EMBEDDED_MODEL, load_model, load_tokenizer, quiet_library_notices
from nbkit.train.sft import build_trainer, lora_config, tokenized_split


class StepClock(TrainerCallback):
    """Wall time from the start of training to the end of the last optimizer step (saving excluded)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.started


def prepare(root: Path, rows: int) -> Workspace:
    ws = Workspace(root)
    collect(CollectConfig(workspace=str(root)))
    format_rows(FormatConfig(workspace=str(root), replay_guard=False))  # the task rows alone, as measured before
    split_dataset(SplitConfig(workspace=str(root)))
    write_jsonl(ws.split("train"), read_jsonl(ws.split("train"))[:rows])
    return ws


def plain_trl(ws: Workspace, batch_size: int, **overrides) -> float:
    """What a user writes with TRL alone: SFTConfig defaults plus batch size and learning rate."""
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(EMBEDDED_MODEL)
    dataset = tokenized_split(read_jsonl(ws.split("train")), tokenizer, 512)
    model, _ = load_model(EMBEDDED_MODEL, "qlora")
    args = SFTConfig(
        output_dir=str(ws.root / "trl"),
        num_train_epochs=1,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1000,
        seed=42,
        **overrides,
    )
    clock = StepClock()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(TrainConfig()),
        callbacks=[clock],
    )
    trainer.train()
    return clock.seconds


def nbkit_run(ws: Workspace, batch_size: int, **settings) -> float:
    config = TrainConfig(
        workspace=str(ws.root),
        max_steps=0,
        num_train_epochs=1,
        batch_size=batch_size,
        eval_steps=0,
        early_stopping_patience=0,
        load_best=False,
        report_to="none",
        save_steps=10_000,
        **settings,
    )
    run_dir = ws.root / "runs" / "bench"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    trainer, _tokenizer, _method = build_trainer(config, run_dir, on_log=None)
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    return clock.seconds


VARIANTS = {
    "TRL defaults (random padded batches, checkpointing on)": lambda ws, b: plain_trl(ws, b),
    "nbkit with TRL's batching (padded, checkpointing on)": lambda ws, b: nbkit_run(
        ws, b, batching="padded", gradient_checkpointing="on"
    ),
    "nbkit defaults (length-grouped, checkpointing auto=off)": lambda ws, b: nbkit_run(ws, b),
    "TRL defaults with checkpointing off": lambda ws, b: plain_trl(ws, b, gradient_checkpointing=False),
    "TRL padding-free, checkpointing off": lambda ws, b: plain_trl(
        ws, b, padding_free=True, max_length=None, gradient_checkpointing=False
    ),
}

MEMORY_PROBE = """
import json, sys
from nbkit.core.train_config import TrainConfig
from nbkit.train.sft import train
config = TrainConfig(workspace=sys.argv[1], method=sys.argv[2], run_id="memory-" + sys.argv[2], max_steps=2,
                     batch_size=8, eval_steps=0, early_stopping_patience=0, load_best=False, report_to="none")
record = train(config, on_log=None)
print(json.dumps({"peak_gib": record["peak_memory_gib"]}))
"""


def peak_memory(ws: Workspace, method: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(ws.root), method], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_gib"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="training rows (one epoch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: all cores); 1 keeps ratios steady while other jobs load the machine",
    )
    args = parser.parse_args()
    if args.threads:
        import os

        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # load_model leaves a user's setting alone
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp, quiet_library_notices():
        ws = prepare(Path(tmp), args.rows)
        tokenizer = load_tokenizer(EMBEDDED_MODEL)
        encoded = tokenized_split(read_jsonl(ws.split("train")), tokenizer, 512)
        tokens = sum(len(ids) for ids in encoded["input_ids"])
        print(
            f"{args.rows} rows, {tokens} non-padding tokens, batch {args.batch_size}, {args.rounds} rounds, "
            f"{args.threads or 'all'} threads\n",
            flush=True,
        )
        seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for round_ in range(args.rounds):
            for name, run in VARIANTS.items():
                seconds[name].append(run(ws, args.batch_size))
                print(f"  round {round_ + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)
        speed = {name: tokens / statistics.median(times) for name, times in seconds.items()}
        print()
        for name, value in speed.items():
            print(f"{value:7.1f} trained tokens/s  {name}")
        names = list(VARIANTS)
        same = speed[names[1]] / speed[names[0]]
        default = speed[names[2]] / speed[names[0]]
        print(f"\nnbkit with TRL's batching / TRL: {same:.2f}x (target >= 1.0)")
        print(f"nbkit defaults / TRL defaults:   {default:.2f}x (target >= 1.3)")
        if not args.skip_memory:
            qlora, lora = peak_memory(ws, "qlora"), peak_memory(ws, "lora")
            print(f"\npeak memory, batch {args.batch_size}: QLoRA {qlora:.2f} GiB, 32-bit LoRA {lora:.2f} GiB (RSS)")
    ok = same >= 0.95 and default >= 1.3  # 5% allowance: two equal setups measured on a shared machine
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

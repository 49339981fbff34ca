"""Stage 04: QLoRA fine-tuning with TRL's SFTTrainer, recorded under runs/<run_id>/.

QLoRA = the base model frozen in 4-bit NF4 (double-quantized) + small trainable LoRA
matrices on every linear layer. Only assistant tokens carry loss (see formatting).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nbkit.config import Config, field
from nbkit.formatting import tokenize_chat
from nbkit.models import (EMBEDDED_MODEL, METHODS, load_model, load_tokenizer,
                          pick_device, quiet_library_notices)
from nbkit.runs import environment, new_run_id
from nbkit.workspace import Workspace, read_json, read_jsonl, write_json

LogFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig(Config):
    """Everything that decides a training run; saved as runs/<run_id>/config.json.

    Model:     base_model, method
    Schedule:  max_steps, num_train_epochs, learning_rate, warmup_ratio, weight_decay
    Batching:  batch_size, gradient_accumulation_steps, max_seq_len
    LoRA:      lora_r, lora_alpha, lora_dropout, target_modules
    Tracking:  logging_steps, eval_steps, seed, run_id
    """

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    base_model: str = field(EMBEDDED_MODEL, "Model to fine-tune: the embedded SmolLM2, a Hub id or a local path.")
    method: str = field("qlora", "qlora: 4-bit base + LoRA (least memory); lora: unquantized base + LoRA.")
    run_id: str = field("", "Name of the run folder; empty = a new timestamped id.")
    max_steps: int = field(60, "Optimizer steps to train; 0 = use num_train_epochs instead.")
    num_train_epochs: float = field(1.0, "Passes over the training split (used when max_steps is 0).")
    learning_rate: float = field(1e-3, "Peak learning rate; LoRA on small models tolerates 1e-4..2e-3.")
    warmup_ratio: float = field(0.05, "Share of steps spent ramping the learning rate up from 0.")
    weight_decay: float = field(0.0, "L2 penalty on the LoRA weights.")
    batch_size: int = field(8, "Examples per forward pass.")
    gradient_accumulation_steps: int = field(1, "Passes summed per optimizer step (effective batch = product).")
    max_seq_len: int = field(512, "Examples are truncated to this many tokens.")
    lora_r: int = field(16, "LoRA rank: size of the low-rank update; 8-64 is typical.")
    lora_alpha: int = field(32, "LoRA scale (update is multiplied by alpha / r); often 2 x r.")
    lora_dropout: float = field(0.05, "Dropout on the LoRA input during training.")
    target_modules: str = field("all-linear", "Layers that get LoRA: 'all-linear' or a comma list like 'q_proj,v_proj'.")
    logging_steps: int = field(5, "Log train loss every this many steps.")
    eval_steps: int = field(20, "Evaluate on the validation split every this many steps (0 = only at the end).")
    seed: int = field(42, "Random seed for LoRA init and data order.")

    def validate(self) -> None:
        self.require_choice("method", METHODS)
        self.require(self.max_steps >= 0, "max_steps", f"must be >= 0, got {self.max_steps}")
        self.require(self.max_steps > 0 or self.num_train_epochs > 0, "num_train_epochs",
                     f"must be > 0 when max_steps is 0, got {self.num_train_epochs}")
        self.require(0 < self.learning_rate < 1, "learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        self.require(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        self.require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("batch_size", "gradient_accumulation_steps", "max_seq_len", "lora_r", "lora_alpha",
                     "logging_steps"):
            self.require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        self.require(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        self.require(self.eval_steps >= 0, "eval_steps", f"must be >= 0, got {self.eval_steps}")
        self.require(bool(self.target_modules.strip()), "target_modules", "must not be empty",
                     "use 'all-linear' or a comma list such as 'q_proj,v_proj'")
        self.require("/" not in self.run_id and ".." not in self.run_id, "run_id",
                     f"must be a plain folder name, got {self.run_id!r}")

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps


def tokenized_split(rows: list[dict[str, Any]], tokenizer, max_seq_len: int):
    from datasets import Dataset

    return Dataset.from_list([tokenize_chat(tokenizer, r["messages"], max_seq_len) for r in rows])


def make_callback(metrics_path: Path, on_log: LogFn | None):
    """A TrainerCallback that appends every log to metrics.jsonl and hands it to `on_log`.

    `on_log` is a plain function (a panel's update method, print, ...): the core does not
    know widgets exist.
    """
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs:
                return
            record = {"step": state.global_step, "max_steps": state.max_steps, "epoch": round(state.epoch or 0, 4),
                      "elapsed_s": round(time.monotonic() - self.started, 2), **logs}
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            if on_log is not None:
                on_log(record)

    return MetricsCallback()


def format_log(record: dict[str, Any]) -> str:
    """One line per log: step, losses, learning rate, grad norm, elapsed time."""
    parts = [f"step {record['step']}/{record['max_steps']}"]
    for key, label in (("loss", "loss"), ("eval_loss", "val_loss"), ("learning_rate", "lr"), ("grad_norm", "grad")):
        if key in record:
            parts.append(f"{label} {record[key]:.4g}")
    parts.append(f"{record['elapsed_s']:.0f}s")
    return " | ".join(parts)


def print_log(record: dict[str, Any]) -> None:
    """Default progress for headless runs: the numbers as text."""
    print(format_log(record), flush=True)


@quiet_library_notices()
def build_trainer(config: TrainConfig, run_dir: Path, on_log: LogFn | None = print_log):
    """The SFTTrainer for a run: tokenized splits, the (4-bit) base model and the LoRA config.

    Returns (trainer, tokenizer, method actually used). `train()` is the usual entry point;
    tests use this to inspect weights before and after training.
    """
    import torch
    from peft import LoraConfig
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    ws = Workspace(config.workspace)
    ws.require(ws.manifest, "03_split")
    train_rows = read_jsonl(ws.split("train"))
    val_rows = read_jsonl(ws.split("validation"))
    device = pick_device()
    print(f"Device: {device.reason}.", flush=True)
    tokenizer = load_tokenizer(config.base_model)
    train_ds = tokenized_split(train_rows, tokenizer, config.max_seq_len)
    val_ds = tokenized_split(val_rows, tokenizer, config.max_seq_len) if val_rows else None
    model, method = load_model(config.base_model, config.method, device)
    print(f"Loaded {config.base_model} for {method} ({model.get_memory_footprint() / 2**20:.0f} MiB of weights).",
          flush=True)

    targets = config.target_modules.strip()
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, task_type="CAUSAL_LM",
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
    )
    evaluate_during = bool(val_ds) and config.eval_steps > 0
    args = SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        num_train_epochs=config.num_train_epochs,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_ratio,  # a float below 1 is a share of the total steps
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_seq_len,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=config.eval_steps if evaluate_during else None,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        bf16=device.dtype == torch.bfloat16,
        fp16=device.dtype == torch.float16,
        use_cpu=device.type == "cpu",
        disable_tqdm=on_log is not None,
        dataloader_pin_memory=device.type == "cuda",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds or None,
                         processing_class=tokenizer, peft_config=lora,
                         callbacks=[make_callback(run_dir / "metrics.jsonl", on_log)])
    if on_log is not None:  # our callback reports progress; drop the trainer's raw dict printer
        trainer.remove_callback(PrinterCallback)
    return trainer, tokenizer, method


def train(config: TrainConfig, on_log: LogFn | None = print_log) -> dict[str, Any]:
    """Train LoRA adapters on data/splits/train.jsonl; return the run record (runs/<run_id>/run.json)."""
    ws = Workspace(config.workspace)
    manifest = read_json(ws.require(ws.manifest, "03_split"))
    run_id = config.run_id or new_run_id()
    run_dir = ws.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.replace(run_id=run_id).save(run_dir / "config.json")
    write_json(run_dir / "env.json", environment())
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)

    with quiet_library_notices():
        trainer, tokenizer, method = build_trainer(config, run_dir, on_log)
        trainable, total = _parameter_counts(trainer.model)
        print(f"Training {trainable:,} LoRA parameters ({100 * trainable / total:.2f}% of {total:,}) on "
              f"{len(trainer.train_dataset)} examples, effective batch {config.effective_batch_size}.", flush=True)
        started = time.monotonic()
        result = trainer.train()
        seconds = time.monotonic() - started
        logs = _read_metrics(metrics_path)
        evals = [r for r in logs if "eval_loss" in r]
        if trainer.eval_dataset is not None and (not evals or evals[-1]["step"] != result.global_step):
            trainer.evaluate()  # the validation loss of the final weights, logged like the others
            logs = _read_metrics(metrics_path)
            evals = [r for r in logs if "eval_loss" in r]
    trainer.model.save_pretrained(run_dir / "adapter")
    tokenizer.save_pretrained(run_dir / "adapter")

    losses = [r["loss"] for r in logs if "loss" in r]
    record = {
        "run_id": run_id,
        "base_model": config.base_model,
        "method": method,
        "device": str(trainer.args.device),
        "steps": result.global_step,
        "train_seconds": round(seconds, 1),
        "train_loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None,
                       "mean": result.training_loss},
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "trainable_parameters": trainable,
        "dataset": {"fingerprints": manifest["fingerprints"], "sizes": manifest["sizes"]},
        "adapter": str(run_dir / "adapter"),
    }
    write_json(run_dir / "run.json", record)
    return record


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _parameter_counts(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


"""Stage 04: QLoRA fine-tuning with TRL's SFTTrainer, recorded under runs/<run_id>/.

QLoRA = the base model frozen in 4-bit NF4 (double-quantized) + small trainable LoRA
matrices on every linear layer. Only assistant tokens carry loss (see formatting).

A run checkpoints into runs/<run_id>/checkpoints/ (adapter, optimizer, scheduler, RNG and
data position), so `resume=True` continues a run whose kernel died to the same final step.
Validation loss is tracked during training; early stopping and best-checkpoint selection
are on by default. The same code runs in a notebook, under papermill, from `nbkit train`
and in every process of `accelerate launch` (only the main process writes files).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nbkit.config import Config, field
from nbkit.errors import DataError, NbkitError, WorkspaceError
from nbkit.formatting import IGNORE_INDEX, tokenize_chat
from nbkit.devices import PrecisionPlan
from nbkit.memory import memory_gib, release_memory, reset_peak_memory
from nbkit.models import EMBEDDED_MODEL, load_model, load_tokenizer, pick_device, quiet_library_notices
from nbkit.runs import environment, new_run_id
from nbkit.workspace import Workspace, read_json, read_jsonl, write_json

LogFn = Callable[[dict[str, Any]], None]
TRAIN_METHODS = ("qlora", "lora", "full")
BATCHING = ("length-grouped", "padded", "padding-free", "packed")
CHECKPOINTING = ("auto", "on", "off")
TRACKERS = ("tensorboard", "wandb", "mlflow", "none")


@dataclass
class TrainConfig(Config):
    """Everything that decides a training run; saved as runs/<run_id>/config.json.

    Model:     base_model, method
    Schedule:  max_steps, num_train_epochs, learning_rate, warmup_ratio, weight_decay, seed
    Batching:  batch_size, gradient_accumulation_steps, max_seq_len, batching, gradient_checkpointing
    LoRA:      lora_r, lora_alpha, lora_dropout, target_modules
    Watching:  logging_steps, eval_steps, early_stopping_patience, load_best, report_to
    Surviving: save_steps, resume, run_id
    """

    workspace: str = field("workspace", "Folder that holds every stage's output (on Colab: a Drive folder).")
    base_model: str = field(EMBEDDED_MODEL, "Model to fine-tune: the embedded SmolLM2, a Hub id or a local path.")
    method: str = field("qlora", "qlora: 4-bit frozen base + LoRA (least memory); lora: 16/32-bit base + LoRA; "
                                 "full: every weight trains (most memory, small models only).")
    run_id: str = field("", "Name of the run folder; empty = a new timestamped id (or, with resume, the latest run).")
    max_steps: int = field(60, "Optimizer steps to train; 0 = use num_train_epochs instead.")
    num_train_epochs: float = field(1.0, "Passes over the training split (used when max_steps is 0).")
    learning_rate: float = field(1e-3, "Peak learning rate; LoRA on small models tolerates 1e-4..2e-3.")
    warmup_ratio: float = field(0.05, "Share of steps spent ramping the learning rate up from 0.")
    weight_decay: float = field(0.0, "L2 penalty on the trained weights.")
    batch_size: int = field(8, "Examples per forward pass (per device).")
    gradient_accumulation_steps: int = field(1, "Passes summed per optimizer step (effective batch = product).")
    max_seq_len: int = field(512, "Examples are truncated to this many tokens.")
    batching: str = field("length-grouped", "length-grouped: batches of similar length (little padding, fastest "
                                            "here); padded: random batches padded to the longest; padding-free: "
                                            "one flat sequence per batch; packed: rows packed into max_seq_len.")
    gradient_checkpointing: str = field("auto", "Recompute activations in the backward pass to save memory "
                                                "(~30% slower): auto = only when the fit estimate needs it.")
    lora_r: int = field(16, "LoRA rank: size of the low-rank update; 8-64 is typical.")
    lora_alpha: int = field(32, "LoRA scale (update is multiplied by alpha / r); often 2 x r.")
    lora_dropout: float = field(0.05, "Dropout on the LoRA input during training.")
    target_modules: str = field("all-linear", "Layers that get LoRA: 'all-linear' or a comma list like 'q_proj,v_proj'.")
    logging_steps: int = field(5, "Log train loss every this many steps.")
    eval_steps: int = field(20, "Evaluate on the validation split every this many steps (0 = only at the end).")
    save_steps: int = field(20, "Checkpoint every this many steps (a multiple of eval_steps when early stopping).")
    early_stopping_patience: int = field(3, "Stop after this many evaluations without a better validation loss "
                                            "(0 = never stop early).")
    load_best: bool = field(True, "At the end, keep the checkpoint with the lowest validation loss.")
    resume: bool = field(False, "Continue the run from its last checkpoint (after a crash or a lost runtime).")
    report_to: str = field("tensorboard", "Where metrics also go: tensorboard, wandb, mlflow or none "
                                          "(comma list for several).")
    seed: int = field(42, "Random seed for LoRA init and data order.")

    def validate(self) -> None:
        self.require_choice("method", TRAIN_METHODS)
        self.require_choice("batching", BATCHING)
        self.require_choice("gradient_checkpointing", CHECKPOINTING)
        self.require(self.max_steps >= 0, "max_steps", f"must be >= 0, got {self.max_steps}")
        self.require(self.max_steps > 0 or self.num_train_epochs > 0, "num_train_epochs",
                     f"must be > 0 when max_steps is 0, got {self.num_train_epochs}")
        self.require(0 < self.learning_rate < 1, "learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        self.require(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        self.require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("batch_size", "gradient_accumulation_steps", "max_seq_len", "lora_r", "lora_alpha",
                     "logging_steps", "save_steps"):
            self.require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        self.require(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        self.require(self.eval_steps >= 0, "eval_steps", f"must be >= 0, got {self.eval_steps}")
        self.require(self.early_stopping_patience >= 0, "early_stopping_patience",
                     f"must be >= 0, got {self.early_stopping_patience}")
        if self.selects_best:
            self.require(self.save_steps % self.eval_steps == 0, "save_steps",
                         f"must be a multiple of eval_steps ({self.eval_steps}) to keep the best checkpoint, "
                         f"got {self.save_steps}", f"set save_steps={self.eval_steps}, or load_best=False and "
                                                   "early_stopping_patience=0")
        self.require(bool(self.target_modules.strip()), "target_modules", "must not be empty",
                     "use 'all-linear' or a comma list such as 'q_proj,v_proj'")
        unknown = set(self.trackers) - set(TRACKERS)
        self.require(not unknown, "report_to", f"has unknown trackers {sorted(unknown)}",
                     f"use a comma list of {', '.join(TRACKERS)}")
        self.require("/" not in self.run_id and ".." not in self.run_id, "run_id",
                     f"must be a plain folder name, got {self.run_id!r}")

    @property
    def effective_batch_size(self) -> int:
        """Examples per optimizer step in one process; `accelerate launch` multiplies it by the process count."""
        return self.batch_size * self.gradient_accumulation_steps

    @property
    def selects_best(self) -> bool:
        """Whether validation drives checkpoints (early stopping or best-checkpoint selection)."""
        return self.eval_steps > 0 and (self.load_best or self.early_stopping_patience > 0)

    @property
    def trackers(self) -> list[str]:
        return [t.strip() for t in self.report_to.split(",") if t.strip() and t.strip() != "none"]


class RunControl:
    """Buttons for a running training, as plain methods: a panel calls them, the trainer obeys.

    `poll` (optional) is called between steps so a notebook can deliver button clicks while
    the training cell runs; the core never knows what it does.
    """

    def __init__(self, poll: Callable[[], None] | None = None) -> None:
        self.poll = poll
        self.on_finish: Callable[[], None] | None = None  # called once training ends, however it ends
        self.stop_requested = False
        self.save_requested = False

    def stop(self) -> None:
        """Stop after the current step, saving a checkpoint and the adapter."""
        self.stop_requested = True

    def save_now(self) -> None:
        """Write a checkpoint after the current step and go on training."""
        self.save_requested = True


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0 of `accelerate launch` / torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def say(message: str) -> None:
    if is_main_process():
        print(message, flush=True)


def tokenized_split(rows: list[dict[str, Any]], tokenizer, max_seq_len: int):
    """input_ids and labels of each row (with its tools), cut at max_seq_len; refuses a split that trains nothing.

    With every label -100 the loss is 0 from the first step and the run learns nothing, so this stops
    before any model loads, with the cause and the fix.
    """
    from datasets import Dataset

    encoded = [tokenize_chat(tokenizer, r["messages"], max_seq_len, tools=r.get("tools")) for r in rows]
    if not any(label != IGNORE_INDEX for e in encoded for label in e["labels"]):
        raise DataError(
            f"nothing to learn: none of the {len(rows)} rows of this split has a trained (assistant) token within "
            f"max_seq_len={max_seq_len}, so every label is -100 and the loss would be 0. Run 02_format again (it "
            "sets such rows aside in data/formatted/dropped.jsonl with the reason) and 03_split; if the answers "
            "are cut off, raise max_seq_len; if every assistant turn has weight 0, give the replies to learn weight 1.")
    return Dataset.from_list(encoded)


def make_callback(metrics_path: Path, on_log: LogFn | None, run_control: RunControl | None = None):
    """A TrainerCallback that enriches every log (tokens/s, ETA, memory), appends it to
    metrics.jsonl, hands it to `on_log`, and carries out the RunControl's requests.

    `on_log` is a plain function (a panel's update method, print, ...): the core does not
    know widgets exist. The final step is always evaluated and checkpointed.
    """
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.monotonic()
            self.first_step = 0
            self.first_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.first_step = state.global_step  # > 0 when resuming
            self.first_tokens = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            if run_control is not None:
                if run_control.poll is not None:
                    run_control.poll()
                if run_control.save_requested or run_control.stop_requested:
                    control.should_save = True
                    run_control.save_requested = False
                if run_control.stop_requested:
                    control.should_training_stop = True
                    control.should_evaluate = args.eval_strategy != "no"
            if state.global_step >= state.max_steps:
                control.should_evaluate = args.eval_strategy != "no"
                control.should_save = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero:
                return
            elapsed = time.monotonic() - self.started
            done = state.global_step - self.first_step
            record = {"step": state.global_step, "max_steps": state.max_steps, "epoch": round(state.epoch or 0, 4),
                      "elapsed_s": round(elapsed, 2), **logs}
            if done > 0 and "loss" in logs:
                record["tokens_per_s"] = round((state.num_input_tokens_seen - self.first_tokens) / elapsed, 1)
                record["eta_s"] = round((state.max_steps - state.global_step) * elapsed / done, 1)
                record["memory_gib"] = round(memory_gib(), 3)
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            if on_log is not None:
                on_log(record)

    return MetricsCallback()


def metric_series(logs: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of one logged metric ("loss", "eval_loss", ...), in log order."""
    points = [(r["step"], r[key]) for r in logs if key in r]
    return [step for step, _ in points], [value for _, value in points]


def format_log(record: dict[str, Any]) -> str:
    """One line per log: step, losses, learning rate, grad norm, speed, ETA, memory."""
    if "train_loss" in record and "loss" not in record:  # the trainer's end-of-training summary
        return (f"done: step {record['step']}/{record['max_steps']} in {record['train_runtime']:.0f}s, "
                f"mean train loss {record.get('train_loss', float('nan')):.4g}")
    parts = [f"step {record['step']}/{record['max_steps']}"]
    for key, label in (("loss", "loss"), ("eval_loss", "val_loss"), ("learning_rate", "lr"), ("grad_norm", "grad")):
        if key in record:
            parts.append(f"{label} {record[key]:.4g}")
    if "tokens_per_s" in record:
        parts.append(f"{record['tokens_per_s']:.0f} tok/s")
    parts.append(f"{record['elapsed_s']:.0f}s")
    if "eta_s" in record:
        parts.append(f"ETA {record['eta_s']:.0f}s")
    if "memory_gib" in record:
        parts.append(f"mem {record['memory_gib']:.2f} GiB")
    return " | ".join(parts)


def print_log(record: dict[str, Any]) -> None:
    """Default progress for headless runs: the numbers as text."""
    print(format_log(record), flush=True)


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    targets = config.target_modules.strip()
    return LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, task_type="CAUSAL_LM",
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
    )


def batching_args(config: TrainConfig) -> dict[str, Any]:
    """SFTConfig settings for each batching strategy (see `batching` in TrainConfig).

    Rows arrive already truncated to max_seq_len (tokenized_split). Padding-free without packing cannot
    enforce a max_length, and TRL refuses one, so it gets None; packing needs it to size its bins.
    """
    return {
        "length-grouped": {"train_sampling_strategy": "group_by_length", "max_length": config.max_seq_len},
        "padded": {"max_length": config.max_seq_len},
        "padding-free": {"padding_free": True, "max_length": None},
        "packed": {"packing": True, "packing_strategy": "bfd", "max_length": config.max_seq_len},
    }[config.batching]


def use_checkpointing(config: TrainConfig, lengths: list[int], plan: PrecisionPlan | None = None) -> bool:
    """Gradient checkpointing costs ~1/3 more compute: with "auto", only when the estimate says memory is short.

    Every process of a launch decides alike: they see the same rows, and the estimate plans with the same
    memory figure on each of them (estimate.available_memory_gib)."""
    if config.gradient_checkpointing != "auto":
        return config.gradient_checkpointing == "on"
    from nbkit.estimate import estimate_fit

    plan = plan or pick_device(config.method)
    try:
        return estimate_fit(config, lengths, device=plan.device, half=plan.compute_dtype != "float32",
                            measure_speed=False).gradient_checkpointing
    except Exception:  # a model whose shapes cannot be read offline: play safe
        return True


@quiet_library_notices()
def build_trainer(config: TrainConfig, run_dir: Path, on_log: LogFn | None = print_log,
                  control: RunControl | None = None, plan: PrecisionPlan | None = None):
    """The SFTTrainer for a run: tokenized splits, the (4-bit) base model and the LoRA config.

    `plan` overrides this device's precision plan (nbkit.devices), e.g. a T4's fp16 plan on another device.
    Returns (trainer, tokenizer, method actually used). `train()` is the usual entry point;
    tests use this to inspect weights before and after training.
    """
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    ws = Workspace(config.workspace)
    ws.require(ws.manifest, "03_split")
    train_rows = read_jsonl(ws.split("train"))
    val_rows = read_jsonl(ws.split("validation"))
    plan = plan or pick_device(config.method)
    say(f"Device: {plan.reason}.")
    tokenizer = load_tokenizer(config.base_model)
    train_ds = tokenized_split(train_rows, tokenizer, config.max_seq_len)
    val_ds = tokenized_split(val_rows, tokenizer, config.max_seq_len) if val_rows else None
    checkpointing = use_checkpointing(config, [len(ids) for ids in train_ds["input_ids"]], plan)

    evaluate_during = bool(val_ds) and config.eval_steps > 0
    selects_best = evaluate_during and config.selects_best
    trackers = [t for t in config.trackers if t != "tensorboard"]
    # Arguments first: under `accelerate launch` they set up the process group the model load relies on.
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
        gradient_checkpointing=checkpointing,
        **batching_args(config),
        logging_steps=config.logging_steps,
        eval_strategy="steps" if evaluate_during else "no",
        eval_steps=config.eval_steps if evaluate_during else None,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,  # the latest and (with load_best) the best; adapters are small, optimizer state is not
        load_best_model_at_end=selects_best and config.load_best,
        metric_for_best_model="eval_loss" if selects_best else None,
        greater_is_better=False if selects_best else None,
        include_num_input_tokens_seen="non_padding",
        report_to=trackers or "none",
        seed=config.seed,
        data_seed=config.seed,
        bf16=plan.autocast == "bf16",
        fp16=plan.autocast == "fp16",
        optim=plan.optimizer,
        use_cpu=plan.device == "cpu",
        disable_tqdm=on_log is not None,
        dataloader_pin_memory=plan.device == "cuda",
        ddp_find_unused_parameters=False,  # every LoRA matrix is used in every forward pass
    )
    model, method = load_model(config.base_model, config.method, plan)
    say(f"Loaded {config.base_model} for {method} ({model.get_memory_footprint() / 2**20:.0f} MiB of weights, "
        f"gradient checkpointing {'on' if checkpointing else 'off'}, {config.batching} batches, "
        f"{plan.autocast if plan.autocast != 'none' else 'no'} autocast, {plan.optimizer}).")

    callbacks = [make_callback(run_dir / "metrics.jsonl", on_log, control)]
    if selects_best and config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    if "tensorboard" in config.trackers:
        callbacks.append(tensorboard_callback(run_dir / "tensorboard"))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds or None,
                         processing_class=tokenizer, peft_config=None if method == "full" else lora_config(config),
                         callbacks=callbacks)
    if on_log is not None:  # our callback reports progress; drop the trainer's raw dict printer
        trainer.remove_callback(PrinterCallback)
    cast_trainable(trainer.model, plan.torch_dtype(plan.trainable_dtype))
    return trainer, tokenizer, method


def cast_trainable(model, dtype) -> int:
    """Put every trainable weight in `dtype`; returns how many tensors changed.

    SFTTrainer casts a quantized model's LoRA weights to bf16 as it is built (the QLoRA paper's choice). Under
    fp16 autocast the gradient scaler refuses half-precision trainable weights, and on fp16-only GPUs bf16 is
    emulated, so the plan's trainable dtype (float32, or the FSDP storage dtype) is restored here, before the
    optimizer is created at the start of train().
    """
    changed = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
            changed += 1
    return changed


def tensorboard_callback(log_dir: Path):
    """TensorBoard event files in runs/<run_id>/tensorboard (view: tensorboard --logdir workspace/runs)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)) if is_main_process() else None)


def checkpoint_step(path: str | Path) -> int:
    """The step of a trainer checkpoint folder: checkpoints/checkpoint-40 -> 40."""
    return int(Path(path).name.rsplit("-", 1)[1])


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (trainer_state.json is written last)."""
    folder = run_dir / "checkpoints"
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()] if folder.exists() else []
    return max(done, key=checkpoint_step, default=None)


def latest_checkpointed_run(ws: Workspace) -> str | None:
    """The latest run (run ids sort by start time) that has a complete checkpoint, or None."""
    runs = sorted(p.name for p in ws.runs.glob("*") if last_checkpoint(p)) if ws.runs.exists() else []
    return runs[-1] if runs else None


def run_to_resume(ws: Workspace, config: TrainConfig) -> str:
    """With resume=True: the named run, or the latest run that has a checkpoint."""
    if config.run_id:
        return config.run_id
    run_id = latest_checkpointed_run(ws)
    if run_id is None:
        raise WorkspaceError(f"`resume` is True but no run in {ws.runs} has a checkpoint — set resume=False "
                             "to start a new run.")
    return run_id


class OutOfMemory(NbkitError):
    """Training ran out of memory; the message lists the settings to change."""


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def out_of_memory_advice(config: TrainConfig) -> str:
    fixes = []
    if config.batch_size > 1:
        batch = max(1, config.batch_size // 2)
        fixes.append(f"batch_size={batch} with gradient_accumulation_steps="
                     f"{config.gradient_accumulation_steps * config.batch_size // batch} (same effective batch)")
    if config.gradient_checkpointing != "on":
        fixes.append("gradient_checkpointing='on'")
    if config.max_seq_len > 256:
        fixes.append(f"max_seq_len={config.max_seq_len // 2} (check in 02 how many rows are longer)")
    if config.method != "qlora":
        fixes.append("method='qlora' (4-bit base weights)")
    fixes.append("a smaller base_model")
    return (f"Training ran out of memory at batch_size={config.batch_size}, max_seq_len={config.max_seq_len}, "
            f"method={config.method!r}. Change, in this order: " + "; ".join(fixes) +
            ". Then run with resume=True to continue from the last checkpoint (estimate_fit shows what fits).")


def train(config: TrainConfig, on_log: LogFn | None = print_log, run_dir: Path | None = None,
          control: RunControl | None = None, plan: PrecisionPlan | None = None) -> dict[str, Any]:
    """Train on data/splits/train.jsonl; return the run record (runs/<run_id>/run.json).

    `run_dir` overrides runs/<run_id>/ (the CLI's --output-dir); `control` lets a panel stop
    the run or save a checkpoint while it trains; `plan` overrides the device's precision plan.
    The model, optimizer and their GPU memory are released before this returns, so running the
    cell again on a small GPU starts from empty memory.
    """
    ws = Workspace(config.workspace)
    manifest = read_json(ws.require(ws.manifest, "03_split"))
    replay_model = (manifest.get("replay") or {}).get("model")
    if replay_model and replay_model != config.base_model:
        say(f"Warning: the split's replay rows are {replay_model}'s own answers, but this run trains "
            f"{config.base_model}: they remind it of another model's answers. Set base_model = "
            f"{config.base_model!r} in 02_format and re-run 02 and 03.")
    run_id = run_to_resume(ws, config) if config.resume else (config.run_id or new_run_id())
    run_dir = Path(run_dir) if run_dir is not None else ws.run_dir(run_id)
    metrics_path = run_dir / "metrics.jsonl"
    checkpoint = last_checkpoint(run_dir) if config.resume else None
    if config.resume and checkpoint is None:
        say(f"resume=True, but {run_dir} has no checkpoint yet: starting run {run_id} from step 0.")
    main = is_main_process()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.replace(run_id=run_id, resume=False).save(run_dir / "config.json")
        write_json(run_dir / "env.json", environment())
        if checkpoint is None:
            metrics_path.unlink(missing_ok=True)
        else:  # drop what was logged after the checkpoint: those steps run again
            step = checkpoint_step(checkpoint)
            write_metrics(metrics_path, [r for r in read_metrics(metrics_path) if r["step"] <= step])
            say(f"Resuming run {run_id} from {checkpoint.name}.")

    reset_peak_memory()
    with quiet_library_notices():
        trainer, tokenizer, method = build_trainer(config.replace(run_id=run_id), run_dir, on_log, control, plan)
        trainable, total = _parameter_counts(trainer.model)
        world = trainer.args.world_size
        effective = config.effective_batch_size * world
        say(f"Training {trainable:,} parameters ({100 * trainable / total:.2f}% of {total:,}) on "
            f"{len(trainer.train_dataset)} examples, effective batch {effective}"
            + (f" ({config.batch_size} x {config.gradient_accumulation_steps} accumulation x {world} processes)"
               if world > 1 else "") + ".")
        started = time.monotonic()
        try:
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except Exception as err:
            if is_out_of_memory(err):
                # The traceback's frames hold the trainer: drop them with it, so the memory is free again
                # for the smaller settings the message proposes (the original error is quoted in the message).
                trainer.accelerator.free_memory()
                trainer = None
                reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                err.__traceback__ = None
                release_memory()
                raise OutOfMemory(out_of_memory_advice(config) + f" ({reason})") from None
            raise
        finally:
            if control is not None and control.on_finish is not None:
                control.on_finish()
        seconds = time.monotonic() - started
    # LoRA runs produce an adapter; full fine-tuning a whole model.
    weights_dir = run_dir / ("model" if method == "full" else "adapter")
    if method == "full":  # a standalone model: generation wants the cache that training turned off
        trainer.model.config.use_cache = True
    # Collective under FSDP (gathers shards); writes on the main process only.
    trainer.save_model(str(weights_dir))
    state, args = trainer.state, trainer.args
    trainer.accelerator.free_memory()  # drops the accelerator's references to the model and optimizer
    del trainer
    release_memory()
    if not main:
        return {}
    tokenizer.save_pretrained(weights_dir)

    logs = read_metrics(metrics_path)
    _, losses = metric_series(logs, "loss")
    _, eval_losses = metric_series(logs, "eval_loss")
    _, speeds = metric_series(logs, "tokens_per_s")
    status = ("stopped" if control is not None and control.stop_requested
              else "early-stopped" if result.global_step < state.max_steps else "finished")
    record = {
        "run_id": run_id,
        "base_model": config.base_model,
        "method": method,
        "status": status,
        "device": str(args.device),
        "world_size": world,
        "effective_batch_size": effective,
        "steps": result.global_step,
        "max_steps": state.max_steps,
        "train_seconds": round(seconds, 1),
        "resumed_from": checkpoint.name if checkpoint else None,
        "train_loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None,
                       "mean": result.training_loss},
        "eval_loss": eval_losses[-1] if eval_losses else None,
        "best": {"step": checkpoint_step(state.best_model_checkpoint) if state.best_model_checkpoint else None,
                 "eval_loss": state.best_metric,
                 "loaded": bool(args.load_best_model_at_end and state.best_model_checkpoint)},
        "tokens_per_s": speeds[-1] if speeds else None,
        "peak_memory_gib": round(memory_gib(), 3),
        "trainable_parameters": trainable,
        "dataset": {"fingerprints": manifest["fingerprints"], "sizes": manifest["sizes"],
                    "replay_rows": (manifest.get("replay") or {}).get("rows", 0),
                    "manifest": str(ws.manifest)},
        "adapter": str(weights_dir) if method != "full" else None,
        "model": str(weights_dir) if method == "full" else None,
        "diagnosis": diagnose(logs),
    }
    write_json(run_dir / "run.json", record)
    return record


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def diagnose(logs: list[dict[str, Any]]) -> dict[str, str]:
    """A plain-language reading of the curves: overfitting, underfitting, unstable, or healthy."""
    _, losses = metric_series(logs, "loss")
    evals = list(zip(*metric_series(logs, "eval_loss")))
    if len(losses) < 3:
        return {"verdict": "too short", "message": f"Only {len(losses)} training-loss logs: too few to judge.",
                "advice": "Train for more steps (or lower logging_steps) to read the curves."}
    if any(x != x or x == float("inf") for x in losses) or any(
            b > 2 * min(losses[: i + 1]) and b > 0.5 for i, b in enumerate(losses[1:])):
        return {"verdict": "unstable",
                "message": "The training loss spiked (more than doubled, or became NaN) after it had fallen.",
                "advice": "Lower learning_rate (e.g. halve it), raise warmup_ratio, or raise the effective batch."}
    if len(evals) >= 3:
        best_i = min(range(len(evals)), key=lambda i: evals[i][1])
        best_step, best = evals[best_i]
        last_step, last = evals[-1]
        if best_i < len(evals) - 1 and last > 1.1 * best:
            return {"verdict": "overfitting",
                    "message": f"Validation loss was lowest at step {best_step} ({best:.3f}) and rose to {last:.3f} "
                               f"by step {last_step} while training loss kept falling to {losses[-1]:.3f}.",
                    "advice": "Keep the best checkpoint (load_best=True), train fewer steps, lower learning_rate "
                              "or lora_r, or add more varied data."}
    fell = 1 - losses[-1] / losses[0] if losses[0] else 0
    if fell < 0.1 and losses[-1] > 1.0:
        return {"verdict": "underfitting",
                "message": f"Training loss barely moved ({losses[0]:.3f} -> {losses[-1]:.3f}) and stays high.",
                "advice": "Raise learning_rate or max_steps; check in 02 that the loss mask covers the answers."}
    trend = f"; validation loss {evals[0][1]:.3f} -> {evals[-1][1]:.3f}" if len(evals) >= 2 else ""
    return {"verdict": "healthy",
            "message": f"Training loss fell {100 * fell:.0f}% ({losses[0]:.3f} -> {losses[-1]:.3f}){trend}.",
            "advice": "Check the answers themselves in 05: a low loss is not yet a good model."}


def format_diagnosis(diagnosis: dict[str, str]) -> str:
    return f"Diagnosis: {diagnosis['verdict'].upper()} — {diagnosis['message']}\nAdvice: {diagnosis['advice']}"


def _parameter_counts(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total

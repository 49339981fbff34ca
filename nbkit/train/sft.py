"""Stage 04: QLoRA fine-tuning with TRL's SFTTrainer, recorded under runs/<run_id>/.

QLoRA = the base model frozen in 4-bit NF4 (double-quantized) + small trainable LoRA
matrices on every linear layer. Only assistant tokens carry loss (see nbkit.model.loss_mask).

The settings are nbkit.core.train_config.TrainConfig, the log and its diagnosis nbkit.train.log, and the run
folder (records, metrics, checkpoints) nbkit.core.runs; this module assembles the trainer and runs it.

A run checkpoints into runs/<run_id>/checkpoints/ (adapter, optimizer, scheduler, RNG and
data position), so `resume=True` continues a run whose kernel died to the same final step.
Validation loss is tracked during training; early stopping and best-checkpoint selection
are on by default. The same code runs in a notebook, under papermill, from `nbkit train`
and in every process of `accelerate launch` (only the main process writes files).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nbkit.core.errors import DataError, OutOfMemory
from nbkit.core.files import replace_folder, write_json
from nbkit.core.runs import (
    checkpoint_step,
    last_checkpoint,
    metric_series,
    new_run_id,
    read_metrics,
    run_to_resume,
    write_metrics,
)
from nbkit.core.train_config import TrainConfig, formatted_settings
from nbkit.core.workspace import Workspace
from nbkit.model.devices import PrecisionPlan, environment
from nbkit.model.loader import formatted_tokenizer, load_model, pick_device, quiet_library_notices
from nbkit.model.loss_mask import IGNORE_INDEX, tokenize_chat
from nbkit.model.memory import memory_gib, release_memory, reset_peak_memory
from nbkit.train.log import LogFn, RunControl, diagnose, format_diagnosis, make_callback, print_log
from nbkit.train.runtime import cast_trainable, device_args, is_main_process, is_out_of_memory, say

# What notebook 04 imports from here: `from nbkit.train.sft import TrainConfig, format_diagnosis, train`.
__all__ = ["RunControl", "TrainConfig", "build_trainer", "format_diagnosis", "is_main_process", "print_log", "train"]


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
            "are cut off, raise max_seq_len; if every assistant turn has weight 0, give the replies to learn weight 1."
        )
    return Dataset.from_list(encoded)


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    targets = config.target_modules.strip()
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        task_type="CAUSAL_LM",
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
    from nbkit.train.estimate import estimate_fit

    plan = plan or pick_device(config.method)
    try:
        return estimate_fit(
            config, lengths, device=plan.device, half=plan.compute_dtype != "float32", measure_speed=False
        ).gradient_checkpointing
    except Exception:  # a model whose shapes cannot be read offline: play safe
        return True


@quiet_library_notices()
def build_trainer(
    config: TrainConfig,
    run_dir: Path,
    on_log: LogFn | None = print_log,
    control: RunControl | None = None,
    plan: PrecisionPlan | None = None,
):
    """The SFTTrainer for a run: tokenized splits, the (4-bit) base model and the LoRA config.

    `plan` overrides this device's precision plan (nbkit.model.devices), e.g. a T4's fp16 plan on another device.
    Returns (trainer, tokenizer, method actually used). `train()` is the usual entry point;
    tests use this to inspect weights before and after training.
    """
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    config = config.resolved()
    ws = Workspace(config.workspace)
    ws.require(ws.manifest, "03_split")
    train_rows, val_rows = ws.read_split("train"), ws.read_split("validation")
    plan = plan or pick_device(config.method)
    say(f"Device: {plan.reason}.")
    tokenizer = formatted_tokenizer(config)
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
        **device_args(plan, config.seed, quiet=on_log is not None),
    )
    model, method = load_model(config.base_model, config.method, plan)
    say(
        f"Loaded {config.base_model} for {method} ({model.get_memory_footprint() / 2**20:.0f} MiB of weights, "
        f"gradient checkpointing {'on' if checkpointing else 'off'}, {config.batching} batches, "
        f"{plan.autocast if plan.autocast != 'none' else 'no'} autocast, {plan.optimizer})."
    )

    callbacks = [make_callback(run_dir / "metrics.jsonl", on_log, control)]
    if selects_best and config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    if "tensorboard" in config.trackers:
        callbacks.append(tensorboard_callback(run_dir / "tensorboard"))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds or None,
        processing_class=tokenizer,
        peft_config=None if method == "full" else lora_config(config),
        callbacks=callbacks,
    )
    if on_log is not None:  # our callback reports progress; drop the trainer's raw dict printer
        trainer.remove_callback(PrinterCallback)
    cast_trainable(trainer.model, plan.torch_dtype(plan.trainable_dtype))
    return trainer, tokenizer, method


def tensorboard_callback(log_dir: Path):
    """TensorBoard event files in runs/<run_id>/tensorboard (view: tensorboard --logdir workspace/runs)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir)) if is_main_process() else None)


def out_of_memory_advice(config: TrainConfig) -> str:
    fixes = []
    if config.batch_size > 1:
        batch = max(1, config.batch_size // 2)
        fixes.append(
            f"batch_size={batch} with gradient_accumulation_steps="
            f"{config.gradient_accumulation_steps * config.batch_size // batch} (same effective batch)"
        )
    if config.gradient_checkpointing != "on":
        fixes.append("gradient_checkpointing='on'")
    if config.max_seq_len > 256:
        fixes.append(f"max_seq_len={config.max_seq_len // 2} (check in 02 how many rows are longer)")
    if config.method != "qlora":
        fixes.append("method='qlora' (4-bit base weights)")
    fixes.append("a smaller base_model")
    return (
        f"Training ran out of memory at batch_size={config.batch_size}, max_seq_len={config.max_seq_len}, "
        f"method={config.method!r}. Change, in this order: "
        + "; ".join(fixes)
        + ". Then run with resume=True to continue from the last checkpoint (estimate_fit shows what fits)."
    )


def train(
    config: TrainConfig,
    on_log: LogFn | None = print_log,
    run_dir: Path | None = None,
    control: RunControl | None = None,
    plan: PrecisionPlan | None = None,
) -> dict[str, Any]:
    """Train on data/splits/train.jsonl; return the run record (runs/<run_id>/run.json).

    `run_dir` overrides runs/<run_id>/ (the CLI's --output-dir); `control` lets a panel stop
    the run or save a checkpoint while it trains; `plan` overrides the device's precision plan.
    The model, optimizer and their GPU memory are released before this returns, so running the
    cell again on a small GPU starts from empty memory.
    """
    config = config.resolved(warn=say)  # base_model and max_seq_len as 02 formatted, unless set here
    ws = Workspace(config.workspace)
    manifest = ws.checked(ws.manifest, "03_split")
    replay_model = (manifest.get("replay") or {}).get("model")
    if replay_model and replay_model != config.base_model:
        say(
            f"Warning: the split's replay rows are {replay_model}'s own answers, but this run trains "
            f"{config.base_model}: they remind it of another model's answers. Set base_model = "
            f"{config.base_model!r} in 02_format and re-run 02 and 03."
        )
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
        say(
            f"Training {trainable:,} parameters ({100 * trainable / total:.2f}% of {total:,}) on "
            f"{len(trainer.train_dataset)} examples, effective batch {effective}"
            + (
                f" ({config.batch_size} x {config.gradient_accumulation_steps} accumulation x {world} processes)"
                if world > 1
                else ""
            )
            + "."
        )
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
    # Collective under FSDP (gathers shards); writes on the main process only. Saved aside and moved into place
    # whole: a run counts as finished once its adapter/ (or model/) folder exists (runs.list_runs).
    partial = run_dir / f".{weights_dir.name}.partial"
    trainer.save_model(str(partial))
    state, args = trainer.state, trainer.args
    trainer.accelerator.free_memory()  # drops the accelerator's references to the model and optimizer
    del trainer
    release_memory()
    if not main:
        return {}
    tokenizer.save_pretrained(partial)
    replace_folder(partial, weights_dir)

    logs = read_metrics(metrics_path)
    _, losses = metric_series(logs, "loss")
    _, eval_losses = metric_series(logs, "eval_loss")
    _, speeds = metric_series(logs, "tokens_per_s")
    status = (
        "stopped"
        if control is not None and control.stop_requested
        else "early-stopped"
        if result.global_step < state.max_steps
        else "finished"
    )
    record = {
        "run_id": run_id,
        "base_model": config.base_model,
        "thinking": formatted_settings(config.workspace)["thinking"],  # how the chat template rendered (Qwen3)
        "method": method,
        "status": status,
        "device": str(args.device),
        "world_size": world,
        "effective_batch_size": effective,
        "steps": result.global_step,
        "max_steps": state.max_steps,
        "train_seconds": round(seconds, 1),
        "resumed_from": checkpoint.name if checkpoint else None,
        "train_loss": {
            "first": losses[0] if losses else None,
            "last": losses[-1] if losses else None,
            "mean": result.training_loss,
        },
        "eval_loss": eval_losses[-1] if eval_losses else None,
        "best": {
            "step": checkpoint_step(state.best_model_checkpoint) if state.best_model_checkpoint else None,
            "eval_loss": state.best_metric,
            "loaded": bool(args.load_best_model_at_end and state.best_model_checkpoint),
        },
        "tokens_per_s": speeds[-1] if speeds else None,
        "peak_memory_gib": round(memory_gib(), 3),
        "trainable_parameters": trainable,
        "dataset": {
            "fingerprints": manifest["fingerprints"],
            "sizes": manifest["sizes"],
            "replay_rows": (manifest.get("replay") or {}).get("rows", 0),
            "manifest": str(ws.manifest),
        },
        "adapter": str(weights_dir) if method != "full" else None,
        "model": str(weights_dir) if method == "full" else None,
        "diagnosis": diagnose(logs),
    }
    write_json(run_dir / "run.json", record)
    return record


def _parameter_counts(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total

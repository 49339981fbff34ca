"""Stage 06: preference tuning (DPO) and reinforcement on the task's metric (GRPO), from a finished 04 run.

Both start from the parent SFT run. A LoRA/QLoRA parent's base loads as it was trained (4-bit for QLoRA) and its
adapter loads trainable, as the policy ("default"). The reference is the SFT model too: TRL 1.16 has no
`ref_adapter_name`; given a PeftModel that already carries an adapter, DPOTrainer (and GRPOTrainer when beta > 0)
copies it into a frozen adapter named "ref" and computes reference log-probs with it. `check_reference` compares
that copy with the parent's adapter file, so a TRL that fell back to the adapter-disabled base fails loudly. A
fully fine-tuned parent (model/) loads twice: the policy, and a frozen copy as the reference.

DPO learns from data/preferences/pairs.jsonl (prompt/chosen/rejected; provenance dropped). GRPO samples
`num_generations` answers to each training-split prompt (replay rows left out) and rewards each with 05's row
score against the row's own answer, plus a small valid-JSON reward for JSON tasks. The run folder is 04's, and
run.json has 04's keys plus parent_run, objective and lineage: 05 evaluates the run like any other.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nbkit.core.errors import OutOfMemory, WorkspaceError
from nbkit.core.runs import (
    checkpoint_step,
    is_preference_run,
    last_checkpoint,
    metric_series,
    new_run_id,
    read_metrics,
    resolve_parent,
    run_config,
    write_metrics,
)
from nbkit.model.devices import environment
from nbkit.model.loader import quiet_library_notices
from nbkit.model.memory import memory_gib, release_memory, reset_peak_memory
from nbkit.train.prefer.config import (
    DEFAULT_BETA,
    DEFAULT_LR,
    FORMAT_WEIGHT,
    REFERENCE,
    PreferConfig,
    preference_memory_estimate,
)

__all__ = ["PreferConfig", "build_prefer_trainer", "prefer", "preference_memory_estimate", "resolve_parent"]
from nbkit.core.files import replace_folder, write_json
from nbkit.core.workspace import Workspace
from nbkit.train.log import LogFn, RunControl, format_log, make_callback
from nbkit.train.prefer.data import read_pairs, task_score, training_data, valid_json
from nbkit.train.runtime import cast_trainable, device_args, is_main_process, is_out_of_memory, say


def run_to_continue(ws: Workspace, config: PreferConfig) -> str:
    """With resume=True: the named run, or the latest preference run that has a checkpoint."""
    runs = [p.name for p in sorted(ws.runs.glob("*")) if last_checkpoint(p) and is_preference_run(ws.root, p.name)]
    if not config.run_id and not runs:
        raise WorkspaceError(
            f"`resume` is True but no preference run in {ws.runs} has a checkpoint — set "
            "resume=False to start a new run."
        )
    return config.run_id or runs[-1]


def load_policy(parent: dict[str, Any], parent_dir: Path, plan):
    """(policy, reference model or None, method): the parent run loaded for further training."""
    from peft import PeftModel

    from nbkit.model.loader import load_model

    if parent["method"] == "full":
        policy, _ = load_model(str(parent_dir / "model"), "full", plan)
        reference, _ = load_model(str(parent_dir / "model"), "full", plan)
        return policy, reference.eval().requires_grad_(False), "full"
    base, method = load_model(parent["base_model"], parent["method"], plan)
    return PeftModel.from_pretrained(base, parent_dir / "adapter", is_trainable=True), None, method


def check_reference(model, adapter_dir: Path) -> None:
    """Fail unless the frozen reference adapter holds exactly the parent's adapter weights (loaded again here)."""
    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    if REFERENCE not in model.peft_config:
        raise RuntimeError(
            f"the trainer made no {REFERENCE!r} adapter, so its reference would be the base model, "
            "not the SFT run — this TRL is not the version nbkit was built for (1.16)."
        )
    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    ref = get_peft_model_state_dict(model, adapter_name=REFERENCE)
    if set(saved) != set(ref) or any(not torch.equal(ref[k].float().cpu(), v.float()) for k, v in saved.items()):
        raise RuntimeError(f"the {REFERENCE!r} adapter differs from {adapter_dir}: the reference must be the SFT run.")
    for name, param in model.named_parameters():
        if f".{REFERENCE}." in name:
            param.requires_grad_(False)


def build_prefer_trainer(
    config: PreferConfig, run_dir: Path, on_log: LogFn | None = None, control: RunControl | None = None, plan=None
):
    """The DPO or GRPO trainer on the parent run: (trainer, tokenizer, resolved config, facts for the record).

    `prefer()` is the usual entry point; tests use this to look at the policy and the reference.
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer

    from nbkit.model.generation import end_of_turn_ids
    from nbkit.model.loader import pick_device, run_tokenizer

    ws = Workspace(config.workspace)
    parent_id, parent = resolve_parent(ws, config.parent_run)
    # a missing pairs file fails here, before any tokenizer or model loads
    pairs = read_pairs(ws) if config.method == "dpo" else None
    parent_dir, parent_config, tokenizer = ws.run_dir(parent_id), run_config(ws.root, parent_id), run_tokenizer(parent)
    adapter = parent["method"] != "full"
    config = config.replace(
        parent_run=parent_id,
        beta=DEFAULT_BETA[config.method] if config.beta < 0 else config.beta,
        learning_rate=config.learning_rate or DEFAULT_LR["adapter" if adapter else "full"],
    )
    config, train_rows, eval_rows, facts = training_data(config, ws, tokenizer, parent_config.max_seq_len, pairs)
    plan = plan or pick_device(parent["method"])
    say(f"Device: {plan.reason}.")
    common = dict(  # no warmup (TRL's default): a low rate from a trained model already starts gently
        output_dir=str(run_dir / "checkpoints"),
        max_steps=config.max_steps or -1,
        num_train_epochs=1,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        beta=config.beta,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # the parent's choice; "auto" = on GPUs, where DPO's two sequences per pair and GRPO's sampling fill memory
        gradient_checkpointing=parent_config.gradient_checkpointing == "on"
        or (parent_config.gradient_checkpointing == "auto" and plan.device == "cuda"),
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        # eval_steps 0: only the evaluation the metrics callback asks for at the last step
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=(config.eval_steps or 10**9) if eval_rows else None,
        report_to="none",
        **device_args(plan, config.seed, quiet=on_log is not None),
    )
    json_task = facts.get("prompts", {}).get("kind") == "json"
    if config.method == "dpo":
        # sft_weight > 0: RPO, TRL's sum of the DPO loss and an NLL loss on the chosen answers
        losses = (
            {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, config.sft_weight]} if config.sft_weight else {}
        )
        args = DPOConfig(**common, max_length=config.max_length, include_num_input_tokens_seen="non_padding", **losses)
    else:  # generation needs the KV cache that load_model turns off for training
        args = GRPOConfig(
            **common,
            num_generations=config.num_generations,
            temperature=config.temperature,
            max_completion_length=config.max_completion_length,
            generation_kwargs={"use_cache": True},
            reward_weights=[1.0, FORMAT_WEIGHT] if json_task else None,
        )
    model, reference, method = load_policy(parent, parent_dir, plan)
    model.generation_config.eos_token_id = end_of_turn_ids(model.generation_config, tokenizer)
    held_to = config.method == "dpo" or config.beta > 0
    say(
        f"Loaded run {parent_id} ({method}, {parent['base_model']}) as the policy"
        + (" and, frozen, as the reference." if held_to else " (beta 0: no reference).")
    )
    data = {
        "args": args,
        "processing_class": tokenizer,
        "train_dataset": Dataset.from_list(train_rows),
        "callbacks": [make_callback(run_dir / "metrics.jsonl", on_log, control)],
    }
    if config.method == "dpo":
        trainer = DPOTrainer(
            model=model, ref_model=reference, **data, eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None
        )
    else:
        trainer = GRPOTrainer(model=model, reward_funcs=[task_score, valid_json] if json_task else [task_score], **data)
    if on_log is not None:  # our callback reports progress; drop the trainer's raw dict printer
        trainer.remove_callback(PrinterCallback)
    if adapter and held_to:
        check_reference(trainer.model, parent_dir / "adapter")
    cast_trainable(trainer.model, plan.torch_dtype(plan.trainable_dtype))  # TRL casts QLoRA's to bf16; see 04
    return trainer, tokenizer, config, {**facts, "parent": parent, "method": method, "world": args.world_size}


PROGRESS_KEYS = (
    ("rewards/margins", "margin"),
    ("rewards/accuracies", "pref acc"),
    ("eval_rewards/accuracies", "val pref acc"),
    ("reward", "reward"),
    ("kl", "kl"),
)


def format_prefer_log(record: dict[str, Any]) -> str:
    """04's progress line plus what preference tuning watches: DPO's reward margin and accuracy, GRPO's reward."""
    return " | ".join(
        [format_log(record), *(f"{label} {record[key]:.3g}" for key, label in PROGRESS_KEYS if key in record)]
    )


def print_log(record: dict[str, Any]) -> None:
    print(format_prefer_log(record), flush=True)


def prefer(
    config: PreferConfig, on_log: LogFn | None = print_log, control: RunControl | None = None, plan=None
) -> dict[str, Any]:
    """Run DPO or GRPO from the parent run; return the run record (runs/<run_id>/run.json).

    `on_log` hears every log (None: silent); `control` lets a panel stop the run or save a checkpoint. The model,
    reference and optimizer are released before this returns, as in 04.
    """
    ws = Workspace(config.workspace)
    manifest = ws.checked(ws.manifest, "03_split")
    run_id = run_to_continue(ws, config) if config.resume else (config.run_id or new_run_id())
    run_dir, main = ws.run_dir(run_id), is_main_process()
    metrics_path = run_dir / "metrics.jsonl"
    checkpoint = last_checkpoint(run_dir) if config.resume else None
    if config.resume and checkpoint is None:
        say(f"resume=True, but {run_dir} has no checkpoint yet: starting run {run_id} from step 0.")
    reset_peak_memory()
    with quiet_library_notices():
        trainer, tokenizer, config, facts = build_prefer_trainer(
            config.replace(run_id=run_id), run_dir, on_log, control, plan
        )
        if main:
            config.replace(resume=False).save(run_dir / "config.json")
            write_json(run_dir / "env.json", environment())
            done = checkpoint_step(checkpoint) if checkpoint else 0  # what was logged after it runs again
            write_metrics(metrics_path, [r for r in read_metrics(metrics_path) if r["step"] <= done])
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        say(
            f"{'Resuming' if checkpoint else 'Starting'} {config.method.upper()} run {run_id} on "
            f"{len(trainer.train_dataset)} {'pairs' if config.method == 'dpo' else 'prompts'}: {trainable:,} "
            f"trainable parameters, beta {config.beta}, learning rate {config.learning_rate:g}."
        )
        started = time.monotonic()
        try:
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            trainer, err.__traceback__ = None, None  # the frames hold the model: free it for the smaller settings
            release_memory()
            raise OutOfMemory(
                f"{config.method.upper()} ran out of memory ({type(err).__name__}). Lower, in this "
                "order: batch_size (raise gradient_accumulation_steps), max_length, num_generations "
                "(GRPO); then run again with resume=True."
            ) from None
        finally:
            if control is not None and control.on_finish is not None:
                control.on_finish()
        seconds = time.monotonic() - started
    weights_dir = run_dir / ("model" if facts["method"] == "full" else "adapter")
    partial = run_dir / f".{weights_dir.name}.partial"  # moved into place whole, as in 04
    if facts["method"] == "full":
        trainer.model.config.use_cache = True  # a standalone model: generation wants the cache training turned off
        trainer.save_model(str(partial))
    elif main:  # the policy only: the reference is the parent's adapter, saved with the parent
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(partial), selected_adapters=["default"])
    state, args = trainer.state, trainer.args
    trainer.accelerator.free_memory()
    del trainer
    release_memory()
    if not main:
        return {}
    tokenizer.save_pretrained(partial)
    replace_folder(partial, weights_dir)
    record = run_record(config, facts, read_metrics(metrics_path), manifest, ws, state, args)
    record.update(
        train_seconds=round(seconds, 1),
        trainable_parameters=trainable,
        train_loss={**record["train_loss"], "mean": result.training_loss},
        resumed_from=checkpoint.name if checkpoint else None,
        status="stopped" if control is not None and control.stop_requested else "finished",
        **{"adapter" if facts["method"] != "full" else "model": str(weights_dir)},
    )
    write_json(run_dir / "run.json", record)
    return record


def run_record(
    config: PreferConfig, facts: dict, logs: list[dict], manifest: dict, ws: Workspace, state, args
) -> dict[str, Any]:
    """04's run.json keys (so 05 and compare_runs read it), plus parent_run, objective, lineage and the rewards."""
    parent = facts["parent"]
    series = {
        k: metric_series(logs, k)[1]
        for k in (
            "loss",
            "eval_loss",
            "tokens_per_s",
            "rewards/margins",
            "rewards/accuracies",
            "reward",
            "frac_reward_zero_std",
        )
    }
    ends = {k: {"first": v[0] if v else None, "last": v[-1] if v else None} for k, v in series.items()}
    return {
        "run_id": config.run_id,
        "base_model": parent["base_model"],
        "thinking": bool(parent.get("thinking")),
        "method": facts["method"],
        "objective": config.method,
        "parent_run": config.parent_run,
        "lineage": [*(parent.get("lineage") or [parent["base_model"], config.parent_run]), config.run_id],
        "beta": config.beta,
        "device": str(args.device),
        "world_size": facts["world"],
        "effective_batch_size": config.batch_size * config.gradient_accumulation_steps * facts["world"],
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "train_loss": ends["loss"],
        "eval_loss": ends["eval_loss"]["last"],
        "best": {"step": None, "eval_loss": None, "loaded": False},
        "rewards": {k: ends[k] for k in ("rewards/margins", "rewards/accuracies", "reward")},
        "tokens_per_s": ends["tokens_per_s"]["last"],
        "peak_memory_gib": round(memory_gib(), 3),
        "dataset": {
            "fingerprints": manifest["fingerprints"],
            "sizes": manifest["sizes"],
            "replay_rows": (manifest.get("replay") or {}).get("rows", 0),
            "manifest": str(ws.manifest),
            **{k: v for k, v in facts.items() if k in ("pairs", "prompts")},
        },
        "model": None,
        "adapter": None,
        "diagnosis": diagnose_preference(config.method, series),
    }


def diagnose_preference(objective: str, series: dict[str, list[float]]) -> dict[str, str]:
    """What the reward curves say, in 04's diagnosis shape (verdict, message, advice)."""
    if objective == "grpo" and series["reward"] and min(series["frac_reward_zero_std"]) == 1:
        return {
            "verdict": "no signal",
            "message": "At every step all answers to a prompt scored alike, so GRPO "
            "had nothing to prefer and the weights did not move.",
            "advice": "Raise temperature or "
            "num_generations so answers differ; if all are wrong, train the SFT run further first.",
        }
    curve = series["reward" if objective == "grpo" else "rewards/margins"]
    if not curve:
        return {"verdict": "too short", "message": "No training step was logged.", "advice": "Train more steps."}
    return {
        "verdict": "learning" if curve[-1] > curve[0] else "flat",
        "message": f"{'Mean reward' if objective == 'grpo' else 'DPO reward margin'} {curve[0]:.3f} -> "
        f"{curve[-1]:.3f}.",
        "advice": "Compare the run with its parent in 05 (same test split).",
    }

"""What a training run logs, and how the log reads.

The callback appends every log (with tokens/s, ETA and memory) to runs/<run_id>/metrics.jsonl, hands it to a
plain function (a panel's update method, print) and carries out a RunControl's requests; `format_log` is its
one-line text; `diagnose` reads the curves in plain language (overfitting, underfitting, unstable, healthy).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbkit.core.files import append_jsonl
from nbkit.core.runs import metric_series
from nbkit.model.memory import memory_gib

LogFn = Callable[[dict[str, Any]], None]


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
            record = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "epoch": round(state.epoch or 0, 4),
                "elapsed_s": round(elapsed, 2),
                **logs,
            }
            if done > 0 and "loss" in logs:
                record["tokens_per_s"] = round((state.num_input_tokens_seen - self.first_tokens) / elapsed, 1)
                record["eta_s"] = round((state.max_steps - state.global_step) * elapsed / done, 1)
                record["memory_gib"] = round(memory_gib(), 3)
            append_jsonl(metrics_path, record)
            if on_log is not None:
                on_log(record)

    return MetricsCallback()


def format_log(record: dict[str, Any]) -> str:
    """One line per log: step, losses, learning rate, grad norm, speed, ETA, memory."""
    if "train_loss" in record and "loss" not in record:  # the trainer's end-of-training summary
        return (
            f"done: step {record['step']}/{record['max_steps']} in {record['train_runtime']:.0f}s, "
            f"mean train loss {record.get('train_loss', float('nan')):.4g}"
        )
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


def diagnose(logs: list[dict[str, Any]]) -> dict[str, str]:
    """A plain-language reading of the curves: overfitting, underfitting, unstable, or healthy."""
    _, losses = metric_series(logs, "loss")
    evals = list(zip(*metric_series(logs, "eval_loss")))
    if len(losses) < 3:
        return {
            "verdict": "too short",
            "message": f"Only {len(losses)} training-loss logs: too few to judge.",
            "advice": "Train for more steps (or lower logging_steps) to read the curves.",
        }
    if any(x != x or x == float("inf") for x in losses) or any(
        b > 2 * min(losses[: i + 1]) and b > 0.5 for i, b in enumerate(losses[1:])
    ):
        return {
            "verdict": "unstable",
            "message": "The training loss spiked (more than doubled, or became NaN) after it had fallen.",
            "advice": "Lower learning_rate (e.g. halve it), raise warmup_ratio, or raise the effective batch.",
        }
    if len(evals) >= 3:
        best_i = min(range(len(evals)), key=lambda i: evals[i][1])
        best_step, best = evals[best_i]
        last_step, last = evals[-1]
        if best_i < len(evals) - 1 and last > 1.1 * best:
            return {
                "verdict": "overfitting",
                "message": f"Validation loss was lowest at step {best_step} ({best:.3f}) and rose to {last:.3f} "
                f"by step {last_step} while training loss kept falling to {losses[-1]:.3f}.",
                "advice": "Keep the best checkpoint (load_best=True), train fewer steps, lower learning_rate "
                "or lora_r, or add more varied data.",
            }
    fell = 1 - losses[-1] / losses[0] if losses[0] else 0
    if fell < 0.1 and losses[-1] > 1.0:
        return {
            "verdict": "underfitting",
            "message": f"Training loss barely moved ({losses[0]:.3f} -> {losses[-1]:.3f}) and stays high.",
            "advice": "Raise learning_rate or max_steps; check in 02 that the loss mask covers the answers.",
        }
    trend = f"; validation loss {evals[0][1]:.3f} -> {evals[-1][1]:.3f}" if len(evals) >= 2 else ""
    return {
        "verdict": "healthy",
        "message": f"Training loss fell {100 * fell:.0f}% ({losses[0]:.3f} -> {losses[-1]:.3f}){trend}.",
        "advice": "Check the answers themselves in 05: a low loss is not yet a good model.",
    }


def format_diagnosis(diagnosis: dict[str, str]) -> str:
    return f"Diagnosis: {diagnosis['verdict'].upper()} — {diagnosis['message']}\nAdvice: {diagnosis['advice']}"

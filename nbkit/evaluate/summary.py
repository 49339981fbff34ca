"""Reading 05's summary: warnings about scores too good to trust or too noisy, the best and worst rows, the
forgetting probe, and the summary as tables and text (what notebook 05 and `nbkit evaluate` print)."""

from __future__ import annotations

from typing import Any

from nbkit.evaluate.forgetting import KEPT_ENOUGH, kept_share

TOO_GOOD = 0.95  # a tuned task score at or above this is checked against the split's leakage counts


FEW_ROWS = 30  # below this many test rows, one row moves the score by more than 3 points


def quality_warnings(summary: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Plain-language reasons not to trust the numbers yet (an empty list when there are none).

    - a near-perfect tuned score while evaluation rows copy training rows (03's manifest):
      the model may have memorized the answers rather than learned the task;
    - few test rows: each row moves the score a lot.
    """
    found: list[str] = []
    metric = summary.get("task_metric", "")
    tuned = summary.get("tuned", {}).get(metric)
    leaked = {k: int(v) for k, v in (manifest.get("leakage") or {}).items() if v}
    if metric != "perplexity" and tuned is not None and tuned >= TOO_GOOD and leaked:
        counts = " and ".join(
            f"{n} {key.removeprefix('train_')} row{'s' if n != 1 else ''}"
            for key, n in sorted(leaked.items(), key=lambda kv: kv[0] != "train_test")
        )
        found.append(
            f"The tuned model scores {tuned:.2f} {metric}, which is too good to take at face value: {counts} "
            f"(nearly) copy a training row (data/splits/manifest.json), so part of the score may be memorized "
            f"answers. Fix: re-run 03_split with drop_leaked = True (or 02_format with drop_near_duplicates = True), "
            f"then train and evaluate again."
        )
    runaway = summary.get("runaway") or {}
    if runaway.get("tuned", 0) > runaway.get("base", 0):
        found.append(
            f"The tuned model ran to the length limit ({runaway['max_new_tokens']} tokens) without its end-of-turn "
            f"token on {runaway['tuned']} of {summary.get('n_test', 0)} test prompts, the base model on "
            f"{runaway['base']}: it may not have learned to stop. Likely causes: the end-of-turn token is not "
            f"trained (answers_without_end_of_turn in 02's format report), answers cut by max_seq_len "
            f"(answers_cut_by_max_seq_len), or a chat template that differs between training and use."
        )
    forgetting = summary.get("forgetting")
    if forgetting and kept_share(forgetting) < KEPT_ENOUGH:
        replay = summary.get("replay") or {}
        more = (
            f"raise replay_share in 02_format (now {replay['share']:.0%} of training)"
            if replay.get("rows")
            else "mix in your own general examples: the replay guard turned itself off, since the base model "
            "answers no general prompt by itself (a base model)"
            if replay.get("off_reason")
            else "turn the replay guard on in 02_format (replay_guard = True)"
        )
        found.append(
            f"The tuned model forgot general skills: it {forgetting['reading'].split(' — ')[0]}. Train fewer steps, "
            f"lower the learning rate or lora_r in 04_train, or {more}; then train and evaluate again."
        )
    n = int(summary.get("n_test", 0))
    if n < FEW_ROWS:
        step = 100 / n if n else 100
        found.append(
            f"Only {n} test row{'s' if n != 1 else ''} scored: scores on few rows are noisy (one row moves "
            f"{metric or 'the score'} by {step:.0f} points). Use at least {FEW_ROWS} rows (max_examples = 0, or a "
            f"larger test_fraction in 03_split) before drawing conclusions."
        )
    return found


def format_warnings(summary: dict[str, Any]) -> str:
    """The warnings as text, or a line saying there are none."""
    lines = summary.get("warnings") or []
    if not lines:
        return "No warnings: no leaked rows behind a near-perfect score, and enough test rows."
    return "\n".join(f"- {w}" for w in lines)


def examples_table(summary: dict[str, Any]):
    """Best and worst test rows (by the tuned model's per-row score) as one DataFrame."""
    import pandas as pd

    rows = [
        {"group": group, **example}
        for group in ("best", "worst")
        for example in (summary.get("examples") or {}).get(group, [])
    ]
    columns = ["group", "index", "tuned_score", "base_score", "prompt", "reference", "tuned", "base"]
    return pd.DataFrame(rows, columns=columns).round(3)


def describe_forgetting(summary: dict[str, Any]) -> str:
    """The probe's plain reading beside the task metric, and how much of training was replay."""
    forgetting, replay = summary.get("forgetting"), summary.get("replay") or {}
    if not forgetting:
        return "Forgetting probe: not run (forgetting_probe = False)."
    metric = summary["task_metric"]
    guard = (
        f"replay guard on ({replay['rows']} replay rows, {replay['share']:.0%} of training)"
        if replay.get("rows")
        else "replay guard off: the base model answers no general prompt"
        if replay.get("off_reason")
        else "replay guard off"
    )
    scores = f"{summary['base'].get(metric, float('nan')):.3f} -> {summary['tuned'].get(metric, float('nan')):.3f}"
    return f"Task: {metric} {scores}. General answers: the tuned model {forgetting['reading']} ({guard})."


def forgetting_table(summary: dict[str, Any]):
    """The probe questions with both models' answers and verdicts (empty when the probe was off)."""
    import pandas as pd

    items = (summary.get("forgetting") or {}).get("items", [])
    columns = ["kind", "prompt", "expected", "base_correct", "tuned_correct", "base", "tuned"]
    return pd.DataFrame(items, columns=columns)


def summary_table(summary: dict[str, Any]):
    """Base vs. tuned side by side, as a pandas DataFrame (renders in notebooks and as text)."""
    import pandas as pd

    names = [k for k in summary["base"] if k != "loss"]
    frame = pd.DataFrame(
        {"base": [summary["base"][k] for k in names], "tuned": [summary["tuned"][k] for k in names]}, index=names
    )
    frame["change"] = frame["tuned"] - frame["base"]
    return frame.round(4)


def format_summary(summary: dict[str, Any]) -> str:
    """One short text block for the CLI and logs."""
    lines = [f"run {summary['run_id']} — {summary['base_model']} ({summary['method']}), {summary['n_test']} test rows"]
    for key in [k for k in summary["base"] if k != "loss"]:
        base, tuned = summary["base"][key], summary["tuned"][key]
        lines.append(f"  {key:<15} base {base:8.3f}   tuned {tuned:8.3f}")
    forgetting = summary.get("forgetting")
    if forgetting:
        lines.append(
            f"  {'forgetting probe':<15} base {forgetting['base']:8.3f}   tuned {forgetting['tuned']:8.3f}"
            f"   ({forgetting['reading']})"
        )
    runaway = summary.get("runaway")
    if runaway:
        lines.append(
            f"  {'runaway answers':<15} base {runaway['base']:8d}   tuned {runaway['tuned']:8d}"
            f"   (ran to {runaway['max_new_tokens']} tokens without the end-of-turn token)"
        )
    lines += [f"  warning: {w}" for w in summary.get("warnings") or []]
    return "\n".join(lines)

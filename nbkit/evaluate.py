"""Stage 05: base vs. tuned on the held-out test split — task metric and perplexity.

Both models are the same frozen base; the tuned one adds the run's LoRA adapter, so the
comparison isolates what fine-tuning changed. Generation is greedy and batched with left
padding (decoder-only models continue from the right edge).

Beyond the headline numbers the summary carries what a reviewer checks next:
- `warnings`: scores that are too good to trust (leaked rows) or too noisy (few rows);
- `examples`: the tuned model's best and worst test rows by its per-row score;
- `forgetting`: the general questions of nbkit.forgetting asked to both models, to notice when the
  adapter damaged what the base model already knew ("kept 38 of 40");
- `replay`: how many training rows were the replay guard's (nbkit.replay), from the split manifest;
- `runaway`: answers that ran to max_new_tokens without the end-of-turn token, per model, with
  a warning when the tuned model does it more (a lost end-of-turn token or a template mismatch).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit import metrics
from nbkit.chat_templates import final_answer
from nbkit.config import Config, field
from nbkit.forgetting import (FORGETTING_PROBE, KEPT_ENOUGH, PROBE_MAX_NEW_TOKENS, forgetting_scores, kept_share,
                              probe_conversations)
from nbkit.formatting import prompt_messages, reference_answer
from nbkit.loss_mask import IGNORE_INDEX, tokenize_chat
from nbkit.memory import release_memory
from nbkit.models import (end_of_turn_ids, load_model, load_trained_model, pick_device, quiet_library_notices,
                          run_tokenizer)
from nbkit.runs import load_run, resolve_run, run_config
from nbkit.workspace import Workspace, read_json, write_json, write_jsonl

TOO_GOOD = 0.95  # a tuned task score at or above this is checked against the split's leakage counts
FEW_ROWS = 30  # below this many test rows, one row moves the score by more than 3 points


@dataclass
class EvalConfig(Config):
    """Which run to evaluate and how to generate answers."""

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    run_id: str = field("", "Run to evaluate; empty = the latest run with an adapter.")
    max_examples: int = field(0, "Evaluate only the first N test rows (0 = all).")
    max_new_tokens: int = field(0, "Longest generated answer; 0 = 1.25 x the longest reference + 8.")
    batch_size: int = field(0, "Prompts generated together (left-padded); 0 = sized to the device (32 on a CPU, "
                               "16 on a T4, more on larger GPUs).")
    task_metric: str = field("", "Headline metric; empty = chosen from the references (JSON: exact_match, "
                                 "labels: macro_f1, free text: rouge_l).")
    forgetting_probe: bool = field(True, f"Also ask both models {len(FORGETTING_PROBE)} general questions (facts, "
                                         "sums, short instructions, formatting, refusals) to notice what the "
                                         "tuned model forgot; takes seconds.")
    export_formats: list = field([], "After evaluating, export to runs/<run_id>/export/: \"merged\" (the adapter "
                                     "merged into an unquantized base), \"gguf\" (f16, Q8_0 and, with a quantizer, "
                                     "Q4_K_M, by llama.cpp's converter, for llama.cpp / LM Studio), \"ollama\" (a "
                                     "Modelfile for the GGUF); each checked for parity.")

    def validate(self) -> None:
        for name in ("max_examples", "max_new_tokens"):
            self.require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        self.require(self.batch_size >= 0, "batch_size", f"must be >= 0 (0 = sized to the device), got {self.batch_size}")
        self.require_choice("task_metric", metrics.TASK_METRIC_CHOICES)
        from nbkit.export import EXPORT_FORMATS

        self.require(isinstance(self.export_formats, (list, tuple)), "export_formats",
                     f"must be a list like [\"gguf\", \"ollama\"], got {self.export_formats!r}")
        for value in self.export_formats:
            self.require(value in EXPORT_FORMATS, "export_formats",
                         f"has {value!r}; use any of {', '.join(EXPORT_FORMATS)}")


def answer_budget(tokenizer, references: list[str], default: int = 16) -> int:
    """How many new tokens an answer may take: 1.25 x the longest reference + 8 (room to differ, not to ramble)."""
    longest = max((len(tokenizer(r)["input_ids"]) for r in references), default=default)
    return int(1.25 * longest) + 8


def generate(model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int,
             batch_size: int = 32) -> list[str]:
    """Greedy answers for each conversation prompt, batched with left padding."""
    return generate_with_stops(model, tokenizer, conversations, max_new_tokens, batch_size)[0]


def generate_with_stops(model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int,
                        batch_size: int = 32) -> tuple[list[str], list[bool]]:
    """Greedy answers (a leading think block left out), and for each whether it ended with an end-of-turn token
    (the chat template's, or one the generation config stops at; False: it ran to max_new_tokens, a "runaway").
    Prompts are padded on the left, as generation needs; the tokenizer's own padding side is restored afterwards."""
    import torch

    stops = set(end_of_turn_ids(getattr(model, "generation_config", None), tokenizer))
    answers: list[str] = []
    stopped: list[bool] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(conversations), batch_size):
            batch = conversations[start:start + batch_size]
            texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in batch]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                # Every end-of-turn id stops it, not only the generation config's (Gemma's says <eos>, its
                # template closes turns with <end_of_turn>).
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=sorted(stops), pad_token_id=tokenizer.pad_token_id, use_cache=True)
            new_tokens = out[:, inputs["input_ids"].shape[1]:]
            answers += [final_answer(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            # A finished row is padded to the batch's length, with the pad token (often the EOS itself).
            stopped += [any(int(t) in stops for t in row) or len(row) < max_new_tokens for row in new_tokens]
    finally:
        tokenizer.padding_side = side
    return answers, stopped


def runaway_count(stopped: list[bool]) -> int:
    return sum(not s for s in stopped)


def runaway_summary(answers: dict[str, list[str]], stopped: dict[str, list[bool]], prompts: list[list[dict]],
                    max_new_tokens: int, k: int = 3) -> dict[str, Any]:
    """Per model: how many answers ran to max_new_tokens without an end-of-turn token, and a few of the tuned
    model's (the symptom of a lost end-of-turn token or a template mismatch)."""
    out: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    for name in answers:
        out[name] = runaway_count(stopped[name])
    out["examples"] = [{"prompt": p[-1]["content"], "tuned": a}
                       for p, a, s in zip(prompts, answers.get("tuned", []), stopped.get("tuned", [])) if not s][:k]
    return out


def mean_loss(model, tokenizer, rows: list[dict[str, Any]], max_seq_len: int, batch_size: int = 16,
              max_entries: int = 2**26) -> float:
    """Mean cross-entropy per assistant token (the trained positions), over all rows.

    Only the positions that predict an assistant token get logits: rows are left-padded (with position ids
    that ignore the padding) so every row's answers end at the right edge, and the model is asked for the
    logits of the last positions only (`logits_to_keep`). Batches are cut so that positions x vocabulary stays
    under `max_entries` float32 values (2^26: 256 MiB) — full logits of 32 rows x 512 tokens x a 152k
    vocabulary would be 10 GB, more than a T4 has left beside the model.
    """
    import torch

    total, count = 0.0, 0
    vocab = model.get_output_embeddings().weight.shape[0]
    encoded = [tokenize_chat(tokenizer, r["messages"], max_seq_len) for r in rows]
    encoded = [e for e in encoded if any(label != IGNORE_INDEX for label in e["labels"][1:])]
    for batch in loss_batches(encoded, vocab, batch_size, max_entries):
        width = max(len(e["input_ids"]) for e in batch)
        keep = max(answer_span(e["labels"]) for e in batch) + 1  # +1: the position before the first answer token
        pad = tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(e["input_ids"])) + e["input_ids"] for e in batch])
        labels = torch.tensor([[IGNORE_INDEX] * (width - len(e["labels"])) + e["labels"] for e in batch])
        padding = torch.tensor([width - len(e["input_ids"]) for e in batch])
        mask = (torch.arange(width)[None, :] >= padding[:, None]).long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                           position_ids=positions.to(model.device), logits_to_keep=keep, use_cache=False).logits
        targets = labels[:, width - keep + 1:].to(logits.device)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                                 targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        total += loss.item()
        count += int((targets != IGNORE_INDEX).sum())
        del logits, loss
    return total / max(count, 1)


def answer_span(labels: list[int]) -> int:
    """Positions from a row's first trained token to its end (what `logits_to_keep` must cover)."""
    first = next(i for i, label in enumerate(labels) if i > 0 and label != IGNORE_INDEX)
    return len(labels) - first


def loss_batches(encoded: list[dict[str, list[int]]], vocab: int, batch_size: int, max_entries: int):
    """Rows in order, grouped so each batch holds at most `batch_size` rows and rows x span x vocabulary
    logits stay under `max_entries` (a row whose answer alone exceeds it goes alone)."""
    batch: list[dict[str, list[int]]] = []
    span = 0
    for e in encoded:
        wider = max(span, answer_span(e["labels"]) + 1)
        if batch and (len(batch) == batch_size or (len(batch) + 1) * wider * vocab > max_entries):
            yield batch
            batch, wider = [], answer_span(e["labels"]) + 1
        batch.append(e)
        span = wider
    if batch:
        yield batch


def load_base_and_tuned(run: dict[str, Any], run_dir: Path, plan=None) -> dict[str, tuple[Any, Any]]:
    """{"base"|"tuned": (model, context to answer in)}, both in eval mode.

    For LoRA runs one loaded model serves both: the base answers with the adapter switched
    off. A fully fine-tuned run (method "full") loads its own weights beside the base.
    """
    plan = plan or pick_device()
    tuned = load_trained_model(run, run_dir, plan)
    if run["method"] == "full":
        base, _ = load_model(run["base_model"], "lora", plan)
        return {"base": (base.eval(), contextlib.nullcontext()), "tuned": (tuned, contextlib.nullcontext())}
    return {"base": (tuned, tuned.disable_adapter()), "tuned": (tuned, contextlib.nullcontext())}


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Score base and tuned models on the test split; write eval/summary.json, predictions.jsonl and the report."""
    from nbkit.report import write_report

    ws = Workspace(config.workspace)
    run_id = resolve_run(ws.root, config.run_id)
    run = load_run(ws.root, run_id)
    train_config = run_config(ws.root, run_id)
    rows = ws.read_split("test")
    if config.max_examples:
        rows = rows[: config.max_examples]
    prompts = [prompt_messages(r["messages"]) for r in rows]
    references = [reference_answer(r["messages"]) for r in rows]

    tokenizer = run_tokenizer(run)
    max_new = config.max_new_tokens or answer_budget(tokenizer, references)
    plan = pick_device()
    batch_size = config.batch_size or plan.eval_batch_size
    with quiet_library_notices():
        models = load_base_and_tuned(run, ws.run_dir(run_id), plan)
    method = run["method"]
    max_seq_len = train_config.max_seq_len

    results: dict[str, dict[str, float]] = {}
    answers: dict[str, list[str]] = {}
    stopped: dict[str, list[bool]] = {}
    probe: dict[str, list[str]] = {}
    for name in ("base", "tuned"):
        print(f"Evaluating the {name} model on {len(rows)} test rows...", flush=True)
        model, switch = models[name]
        with switch:
            answers[name], stopped[name] = generate_with_stops(model, tokenizer, prompts, max_new, batch_size)
            loss = mean_loss(model, tokenizer, rows, max_seq_len, batch_size, plan.loss_tokens)
            if config.forgetting_probe:
                # One batch: the questions are short, and one long batch beats several small ones on a CPU.
                probe[name] = generate(model, tokenizer, probe_conversations(), PROBE_MAX_NEW_TOKENS,
                                       len(FORGETTING_PROBE))
        results[name] = {**metrics.score(answers[name], references), "loss": loss,
                         "perplexity": math.exp(min(loss, 50))}
    del models, model, switch
    release_memory()  # both models are done: give their memory back before the report and a merge

    task_metric = config.task_metric or metrics.task_metric(references)
    kind = metrics.kind_of(references)
    predictions = [
        {"prompt": p[-1]["content"], "reference": ref, "base": b, "tuned": t,
         "base_exact_match": metrics.exact_match(b, ref), "tuned_exact_match": metrics.exact_match(t, ref),
         "base_score": row_score(b, ref, kind), "tuned_score": row_score(t, ref, kind)}
        for p, ref, b, t in zip(prompts, references, answers["base"], answers["tuned"])
    ]
    eval_dir = ws.run_dir(run_id) / "eval"
    write_jsonl(eval_dir / "predictions.jsonl", predictions)
    summary = {
        "run_id": run_id,
        "base_model": run["base_model"],
        "method": method,
        "n_test": len(rows),
        "task_metric": task_metric,
        "row_score": ROW_SCORE_NAMES[kind],
        "max_new_tokens": max_new,
        "batch_size": batch_size,
        "precision": plan.reason,
        "base": results["base"],
        "tuned": results["tuned"],
        "dataset": run.get("dataset", {}),
        "examples": best_and_worst(predictions),
        "forgetting": forgetting_scores(probe["base"], probe["tuned"]) if config.forgetting_probe else None,
        "runaway": runaway_summary(answers, stopped, prompts, max_new),
    }
    manifest = read_json(ws.manifest) if ws.manifest.exists() else {}
    summary["replay"] = manifest.get("replay")
    summary["warnings"] = quality_warnings(summary, manifest)
    report = write_report(summary, predictions, ws.run_dir(run_id))
    summary["report"] = {"markdown": report.relative_to(ws.root).as_posix(),
                         "html": report.with_suffix(".html").relative_to(ws.root).as_posix()}
    write_json(eval_dir / "summary.json", summary)
    for line in summary["warnings"]:
        print(f"Warning: {line}", flush=True)
    return summary


# -- per-row scores, best and worst examples -------------------------------------------------

ROW_SCORE_NAMES = {"json": "field_accuracy", "label": "exact_match", "text": "rouge_l"}


def row_score(prediction: str, reference: str, kind: str) -> float:
    """One row's task score, 0-1: field accuracy for JSON objects, exact match for labels, ROUGE-L for text.

    Field accuracy gives partial credit (3 of 4 fields right), which ranks near-misses above
    answers that are wrong everywhere; exact match alone would tie them.
    """
    if kind == "json":
        fields = metrics.field_accuracy(prediction, reference)
        return float(fields) if fields is not None else metrics.exact_match(prediction, reference)
    if kind == "text":
        return metrics.rouge_l([prediction], [reference])
    return metrics.exact_match(prediction, reference)


def best_and_worst(predictions: list[dict[str, Any]], k: int = 3) -> dict[str, list[dict[str, Any]]]:
    """Up to k rows where the tuned model scored highest and lowest (no row in both lists).

    Ties keep test-split order, so the choice is stable between runs of the same data.
    """
    order = sorted(range(len(predictions)), key=lambda i: (-predictions[i]["tuned_score"], i))
    n_best = min(k, (len(order) + 1) // 2)
    best = order[:n_best]
    worst = sorted(order[n_best:], key=lambda i: (predictions[i]["tuned_score"], i))[:k]
    keep = ("prompt", "reference", "base", "tuned", "base_score", "tuned_score")
    return {"best": [{"index": i, **{f: predictions[i][f] for f in keep}} for i in best],
            "worst": [{"index": i, **{f: predictions[i][f] for f in keep}} for i in worst]}


# -- warnings ---------------------------------------------------------------------------------

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
        counts = " and ".join(f"{n} {key.removeprefix('train_')} row{'s' if n != 1 else ''}"
                              for key, n in sorted(leaked.items(), key=lambda kv: kv[0] != "train_test"))
        found.append(
            f"The tuned model scores {tuned:.2f} {metric}, which is too good to take at face value: {counts} "
            f"(nearly) copy a training row (data/splits/manifest.json), so part of the score may be memorized "
            f"answers. Fix: re-run 03_split with drop_leaked = True (or 02_format with drop_near_duplicates = True), "
            f"then train and evaluate again.")
    runaway = summary.get("runaway") or {}
    if runaway.get("tuned", 0) > runaway.get("base", 0):
        found.append(
            f"The tuned model ran to the length limit ({runaway['max_new_tokens']} tokens) without its end-of-turn "
            f"token on {runaway['tuned']} of {summary.get('n_test', 0)} test prompts, the base model on "
            f"{runaway['base']}: it may not have learned to stop. Likely causes: the end-of-turn token is not "
            f"trained (answers_without_end_of_turn in 02's format report), answers cut by max_seq_len "
            f"(answers_cut_by_max_seq_len), or a chat template that differs between training and use.")
    forgetting = summary.get("forgetting")
    if forgetting and kept_share(forgetting) < KEPT_ENOUGH:
        replay = summary.get("replay") or {}
        more = (f"raise replay_share in 02_format (now {replay['share']:.0%} of training)" if replay.get("rows")
                else "mix in your own general examples: the replay guard turned itself off, since the base model "
                     "answers no general prompt by itself (a base model)" if replay.get("off_reason")
                else "turn the replay guard on in 02_format (replay_guard = True)")
        found.append(
            f"The tuned model forgot general skills: it {forgetting['reading'].split(' — ')[0]}. Train fewer steps, "
            f"lower the learning rate or lora_r in 04_train, or {more}; then train and evaluate again.")
    n = int(summary.get("n_test", 0))
    if n < FEW_ROWS:
        step = 100 / n if n else 100
        found.append(
            f"Only {n} test row{'s' if n != 1 else ''} scored: scores on few rows are noisy (one row moves "
            f"{metric or 'the score'} by {step:.0f} points). Use at least {FEW_ROWS} rows (max_examples = 0, or a "
            f"larger test_fraction in 03_split) before drawing conclusions.")
    return found


# -- tables and text for notebooks and the CLI ---------------------------------------------------

def format_warnings(summary: dict[str, Any]) -> str:
    """The warnings as text, or a line saying there are none."""
    lines = summary.get("warnings") or []
    if not lines:
        return "No warnings: no leaked rows behind a near-perfect score, and enough test rows."
    return "\n".join(f"- {w}" for w in lines)


def examples_table(summary: dict[str, Any]):
    """Best and worst test rows (by the tuned model's per-row score) as one DataFrame."""
    import pandas as pd

    rows = [{"group": group, **example} for group in ("best", "worst")
            for example in (summary.get("examples") or {}).get(group, [])]
    columns = ["group", "index", "tuned_score", "base_score", "prompt", "reference", "tuned", "base"]
    return pd.DataFrame(rows, columns=columns).round(3)


def describe_forgetting(summary: dict[str, Any]) -> str:
    """The probe's plain reading beside the task metric, and how much of training was replay."""
    forgetting, replay = summary.get("forgetting"), summary.get("replay") or {}
    if not forgetting:
        return "Forgetting probe: not run (forgetting_probe = False)."
    metric = summary["task_metric"]
    guard = (f"replay guard on ({replay['rows']} replay rows, {replay['share']:.0%} of training)" if replay.get("rows")
             else "replay guard off: the base model answers no general prompt" if replay.get("off_reason")
             else "replay guard off")
    scores = f"{summary['base'].get(metric, float('nan')):.3f} -> {summary['tuned'].get(metric, float('nan')):.3f}"
    return (f"Task: {metric} {scores}. "
            f"General answers: the tuned model {forgetting['reading']} ({guard}).")


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
    frame = pd.DataFrame({"base": [summary["base"][k] for k in names], "tuned": [summary["tuned"][k] for k in names]},
                         index=names)
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
        lines.append(f"  {'forgetting probe':<15} base {forgetting['base']:8.3f}   tuned {forgetting['tuned']:8.3f}"
                     f"   ({forgetting['reading']})")
    runaway = summary.get("runaway")
    if runaway:
        lines.append(f"  {'runaway answers':<15} base {runaway['base']:8d}   tuned {runaway['tuned']:8d}"
                     f"   (ran to {runaway['max_new_tokens']} tokens without the end-of-turn token)")
    lines += [f"  warning: {w}" for w in summary.get("warnings") or []]
    return "\n".join(lines)

"""Stage 05: base vs. tuned on the held-out test split — task metric and perplexity.

Both models are the same frozen base; the tuned one adds the run's LoRA adapter, so the
comparison isolates what fine-tuning changed. Generation is greedy and batched with left
padding (decoder-only models continue from the right edge).

Beyond the headline numbers the summary carries what a reviewer checks next:
- `warnings`: scores that are too good to trust (leaked rows) or too noisy (few rows);
- `examples`: the tuned model's best and worst test rows by its per-row score;
- `forgetting`: the general questions of nbkit.evaluate.forgetting asked to both models, to notice when the
  adapter damaged what the base model already knew ("kept 38 of 40");
- `replay`: how many training rows were the replay guard's (nbkit.data.replay), from the split manifest;
- `runaway`: answers that ran to max_new_tokens without the end-of-turn token, per model, with
  a warning when the tuned model does it more (a lost end-of-turn token or a template mismatch).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.core import metrics
from nbkit.core.config import Config, field
from nbkit.core.files import read_json, write_json, write_jsonl
from nbkit.core.metrics import ROW_SCORE_NAMES, row_score
from nbkit.core.rows import prompt_messages, reference_answer
from nbkit.core.runs import load_run, resolve_run, run_config
from nbkit.core.workspace import Workspace
from nbkit.evaluate.forgetting import FORGETTING_PROBE, PROBE_MAX_NEW_TOKENS, forgetting_scores, probe_conversations
from nbkit.evaluate.summary import quality_warnings
from nbkit.model.generation import answer_budget, generate, generate_with_stops, runaway_count
from nbkit.model.loader import load_model, load_trained_model, pick_device, quiet_library_notices, run_tokenizer
from nbkit.model.loss_mask import IGNORE_INDEX, tokenize_chat
from nbkit.model.memory import release_memory


@dataclass
class EvalConfig(Config):
    """Which run to evaluate and how to generate answers."""

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    run_id: str = field("", "Run to evaluate; empty = the latest run with an adapter.")
    max_examples: int = field(0, "Evaluate only the first N test rows (0 = all).")
    max_new_tokens: int = field(0, "Longest generated answer; 0 = 1.25 x the longest reference + 8.")
    batch_size: int = field(
        0,
        "Prompts generated together (left-padded); 0 = sized to the device (32 on a CPU, "
        "16 on a T4, more on larger GPUs).",
    )
    task_metric: str = field(
        "",
        "Headline metric; empty = chosen from the references (JSON: exact_match, "
        "labels: macro_f1, free text: rouge_l).",
    )
    forgetting_probe: bool = field(
        True,
        f"Also ask both models {len(FORGETTING_PROBE)} general questions (facts, "
        "sums, short instructions, formatting, refusals) to notice what the "
        "tuned model forgot; takes seconds.",
    )
    export_formats: list = field(
        [],
        'After evaluating, export to runs/<run_id>/export/: "merged" (the adapter '
        'merged into an unquantized base), "gguf" (f16, Q8_0 and, with a quantizer, '
        'Q4_K_M, by llama.cpp\'s converter, for llama.cpp / LM Studio), "ollama" (a '
        "Modelfile for the GGUF); each checked for parity.",
    )

    def validate(self) -> None:
        for name in ("max_examples", "max_new_tokens"):
            self.require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        self.require(
            self.batch_size >= 0, "batch_size", f"must be >= 0 (0 = sized to the device), got {self.batch_size}"
        )
        self.require_choice("task_metric", metrics.TASK_METRIC_CHOICES)
        from nbkit.core.workspace import EXPORT_FORMATS

        self.require(
            isinstance(self.export_formats, (list, tuple)),
            "export_formats",
            f'must be a list like ["gguf", "ollama"], got {self.export_formats!r}',
        )
        for value in self.export_formats:
            self.require(
                value in EXPORT_FORMATS, "export_formats", f"has {value!r}; use any of {', '.join(EXPORT_FORMATS)}"
            )


def runaway_summary(
    answers: dict[str, list[str]],
    stopped: dict[str, list[bool]],
    prompts: list[list[dict]],
    max_new_tokens: int,
    k: int = 3,
) -> dict[str, Any]:
    """Per model: how many answers ran to max_new_tokens without an end-of-turn token, and a few of the tuned
    model's (the symptom of a lost end-of-turn token or a template mismatch)."""
    out: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    for name in answers:
        out[name] = runaway_count(stopped[name])
    out["examples"] = [
        {"prompt": p[-1]["content"], "tuned": a}
        for p, a, s in zip(prompts, answers.get("tuned", []), stopped.get("tuned", []))
        if not s
    ][:k]
    return out


def mean_loss(
    model, tokenizer, rows: list[dict[str, Any]], max_seq_len: int, batch_size: int = 16, max_entries: int = 2**26
) -> float:
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
            logits = model(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                position_ids=positions.to(model.device),
                logits_to_keep=keep,
                use_cache=False,
            ).logits
        targets = labels[:, width - keep + 1 :].to(logits.device)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
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
    from nbkit.evaluate.report import write_report

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
                probe[name] = generate(
                    model, tokenizer, probe_conversations(), PROBE_MAX_NEW_TOKENS, len(FORGETTING_PROBE)
                )
        results[name] = {
            **metrics.score(answers[name], references),
            "loss": loss,
            "perplexity": math.exp(min(loss, 50)),
        }
    del models, model, switch
    release_memory()  # both models are done: give their memory back before the report and a merge

    task_metric = config.task_metric or metrics.task_metric(references)
    kind = metrics.kind_of(references)
    predictions = [
        {
            "prompt": p[-1]["content"],
            "reference": ref,
            "base": b,
            "tuned": t,
            "base_exact_match": metrics.exact_match(b, ref),
            "tuned_exact_match": metrics.exact_match(t, ref),
            "base_score": row_score(b, ref, kind),
            "tuned_score": row_score(t, ref, kind),
        }
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
    summary["report"] = {
        "markdown": report.relative_to(ws.root).as_posix(),
        "html": report.with_suffix(".html").relative_to(ws.root).as_posix(),
    }
    write_json(eval_dir / "summary.json", summary)
    for line in summary["warnings"]:
        print(f"Warning: {line}", flush=True)
    return summary


# -- per-row scores, best and worst examples -------------------------------------------------


def best_and_worst(predictions: list[dict[str, Any]], k: int = 3) -> dict[str, list[dict[str, Any]]]:
    """Up to k rows where the tuned model scored highest and lowest (no row in both lists).

    Ties keep test-split order, so the choice is stable between runs of the same data.
    """
    order = sorted(range(len(predictions)), key=lambda i: (-predictions[i]["tuned_score"], i))
    n_best = min(k, (len(order) + 1) // 2)
    best = order[:n_best]
    worst = sorted(order[n_best:], key=lambda i: (predictions[i]["tuned_score"], i))[:k]
    keep = ("prompt", "reference", "base", "tuned", "base_score", "tuned_score")
    return {
        "best": [{"index": i, **{f: predictions[i][f] for f in keep}} for i in best],
        "worst": [{"index": i, **{f: predictions[i][f] for f in keep}} for i in worst],
    }


# -- warnings ---------------------------------------------------------------------------------


# -- tables and text for notebooks and the CLI ---------------------------------------------------

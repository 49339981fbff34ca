"""Stage 05: base vs. tuned on the held-out test split — task metric and perplexity.

Both models are the same frozen base; the tuned one adds the run's LoRA adapter, so the
comparison isolates what fine-tuning changed. Generation is greedy and batched with left
padding (decoder-only models continue from the right edge).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

from nbkit import metrics
from nbkit.config import Config, field
from nbkit.formatting import IGNORE_INDEX, prompt_messages, reference_answer, tokenize_chat
from nbkit.models import load_model, load_tokenizer, pick_device, quiet_library_notices
from nbkit.runs import load_run, resolve_run
from nbkit.workspace import Workspace, read_json, read_jsonl, write_json, write_jsonl


@dataclass
class EvalConfig(Config):
    """Which run to evaluate and how to generate answers."""

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    run_id: str = field("", "Run to evaluate; empty = the latest run with an adapter.")
    max_examples: int = field(0, "Evaluate only the first N test rows (0 = all).")
    max_new_tokens: int = field(0, "Longest generated answer; 0 = 1.25 x the longest reference + 8.")
    batch_size: int = field(32, "Prompts generated together (left-padded); larger is faster until memory runs out.")
    task_metric: str = field("", "Headline metric; empty = chosen from the references (JSON: exact_match, "
                                 "labels: macro_f1, free text: rouge_l).")

    def validate(self) -> None:
        for name in ("max_examples", "max_new_tokens"):
            self.require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        self.require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        known = ("", "exact_match", "json_valid", "field_accuracy", "accuracy", "macro_f1", "rouge_l", "bleu",
                 "perplexity")
        self.require_choice("task_metric", known)


def generate(model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int,
             batch_size: int = 32) -> list[str]:
    """Greedy answers for each conversation prompt, batched with left padding."""
    import torch

    tokenizer.padding_side = "left"
    answers: list[str] = []
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start:start + batch_size]
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in batch]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, use_cache=True)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


def mean_loss(model, tokenizer, rows: list[dict[str, Any]], max_seq_len: int, batch_size: int = 16) -> float:
    """Mean cross-entropy per assistant token (the trained positions), over all rows."""
    import torch

    total, count = 0.0, 0
    encoded = [tokenize_chat(tokenizer, r["messages"], max_seq_len) for r in rows]
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        width = max(len(e["input_ids"]) for e in batch)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch])
        labels = torch.tensor([e["labels"] + [IGNORE_INDEX] * (width - len(e["labels"])) for e in batch])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(e["input_ids"]) for e in batch])[:, None]).long()
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(logits.device)
        loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                                 shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        total += loss.item()
        count += int((shift_labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Score base and tuned models on the test split; write eval/summary.json and predictions.jsonl."""
    from peft import PeftModel

    ws = Workspace(config.workspace)
    run_id = resolve_run(ws.root, config.run_id)
    run = load_run(ws.root, run_id)
    train_config = read_json(ws.run_dir(run_id) / "config.json")
    rows = read_jsonl(ws.require(ws.split("test"), "03_split"))
    if config.max_examples:
        rows = rows[: config.max_examples]
    prompts = [prompt_messages(r["messages"]) for r in rows]
    references = [reference_answer(r["messages"]) for r in rows]

    tokenizer = load_tokenizer(run["base_model"])
    max_new = config.max_new_tokens or int(1.25 * max(len(tokenizer(r)["input_ids"]) for r in references)) + 8
    with quiet_library_notices():
        model, method = load_model(run["base_model"], run["method"], pick_device())
        model = PeftModel.from_pretrained(model, ws.run_dir(run_id) / "adapter")
    model.eval()
    max_seq_len = int(train_config.get("max_seq_len", 512))

    results: dict[str, dict[str, float]] = {}
    answers: dict[str, list[str]] = {}
    for name in ("base", "tuned"):
        print(f"Evaluating the {name} model on {len(rows)} test rows...", flush=True)
        # One loaded model serves both: the base answers with the adapter switched off.
        with model.disable_adapter() if name == "base" else contextlib.nullcontext():
            answers[name] = generate(model, tokenizer, prompts, max_new, config.batch_size)
            loss = mean_loss(model, tokenizer, rows, max_seq_len, config.batch_size)
        results[name] = {**metrics.score(answers[name], references), "loss": loss,
                         "perplexity": math.exp(min(loss, 50))}

    eval_dir = ws.run_dir(run_id) / "eval"
    write_jsonl(eval_dir / "predictions.jsonl", (
        {"prompt": p[-1]["content"], "reference": ref, "base": b, "tuned": t,
         "base_exact_match": metrics.exact_match(b, ref), "tuned_exact_match": metrics.exact_match(t, ref)}
        for p, ref, b, t in zip(prompts, references, answers["base"], answers["tuned"])
    ))
    summary = {
        "run_id": run_id,
        "base_model": run["base_model"],
        "method": method,
        "n_test": len(rows),
        "task_metric": config.task_metric or metrics.task_metric(references),
        "max_new_tokens": max_new,
        "base": results["base"],
        "tuned": results["tuned"],
        "dataset": run.get("dataset", {}),
    }
    write_json(eval_dir / "summary.json", summary)
    return summary


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
    return "\n".join(lines)

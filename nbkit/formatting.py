"""Stage 02: apply the model's chat template, count real tokens, build the loss mask.

The loss mask decides what the model learns: by default only assistant turns (and
their end-of-turn token) are trained; system and user text is context, not target.

Two optional clean-ups, suggested by the quality report (nbkit.quality), run first:
near-duplicates can be dropped (kept in data/formatted/dropped.jsonl, never lost silently)
and personal data replaced with placeholders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nbkit.config import Config, field
from nbkit.models import EMBEDDED_MODEL, load_tokenizer
from nbkit.quality import near_duplicate_clusters, redact_pii, row_text, summary_stats, validate_threshold
from nbkit.workspace import POSITION_KEYS, Workspace, describe_provenance, read_jsonl, write_json, write_jsonl

IGNORE_INDEX = -100  # label value that PyTorch's cross-entropy skips


@dataclass
class FormatConfig(Config):
    """Which model's chat template to apply and how long examples may be."""

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    base_model: str = field(EMBEDDED_MODEL, "Model whose tokenizer and chat template are used (Hub id or path).")
    max_seq_len: int = field(512, "Longest example in tokens; longer ones are flagged and truncated in training.")
    redact_pii: bool = field(
        False, "Replace emails, phone numbers, card numbers, IPs and API keys with placeholders before training.")
    drop_near_duplicates: bool = field(
        False, "Keep one row of each near-duplicate cluster found by the quality report.")
    near_duplicate_threshold: float = field(
        0.8, "Similarity (0.5-1.0) from which two rows count as near-duplicates; 1.0 finds exact copies only.")

    def validate(self) -> None:
        self.require(self.max_seq_len > 0, "max_seq_len", f"must be > 0, got {self.max_seq_len}")
        validate_threshold(self, "near_duplicate_threshold")


def tokenize_chat(tokenizer, messages: list[dict[str, str]], max_seq_len: int | None = None) -> dict[str, list[int]]:
    """input_ids and labels for one conversation; labels are IGNORE_INDEX outside assistant turns.

    The assistant spans are found on the rendered text (prompt-with-generation-header vs.
    conversation-up-to-this-turn), then mapped to tokens through the offsets, which stays
    right whatever the tokenizer does at span boundaries.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False).rstrip())
        spans.append((start, end))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"]
    labels = [
        token if any(s <= a < e for s, e in spans) else IGNORE_INDEX
        for token, (a, _b) in zip(input_ids, encoded["offset_mapping"])
    ]
    if max_seq_len is not None:
        input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
    return {"input_ids": input_ids, "labels": labels}


def mask_segments(tokenizer, messages: list[dict[str, str]], max_seq_len: int | None = None,
                  encoded: dict[str, list[int]] | None = None) -> list[tuple[str, bool]]:
    """The rendered conversation as runs of (text, trained) — what the loss-mask viewer draws.

    Pass `encoded` (tokenize_chat's output) when it is already at hand, to skip tokenizing again.
    """
    if encoded is None:
        encoded = tokenize_chat(tokenizer, messages, max_seq_len)
    segments: list[tuple[list[int], bool]] = []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        trained = label != IGNORE_INDEX
        if segments and segments[-1][1] == trained:
            segments[-1][0].append(token)
        else:
            segments.append(([token], trained))
    return [(tokenizer.decode(ids), trained) for ids, trained in segments]


def mask_problems(tokenizer, messages: list[dict[str, str]], encoded: dict[str, list[int]] | None = None) -> list[str]:
    """Checks that the mask trains what it should: every assistant turn and its end-of-turn token, no prompt text.

    `encoded` is tokenize_chat's untruncated output for these messages, if already computed.
    """
    segments = mask_segments(tokenizer, messages, encoded=encoded)
    trained = "".join(text for text, on in segments if on)
    masked = "".join(text for text, on in segments if not on)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    problems = []
    for message in messages:
        content = message["content"].strip()
        if message["role"] == "assistant" and content not in trained:
            problems.append("an assistant turn is not trained")
        # A reply that quotes the prompt ("Thanks" -> "Thanks for ...") contains it legitimately.
        if message["role"] in ("user", "system") and content in trained and not any(content in r for r in replies):
            problems.append(f"{message['role']} text is trained")
    eos = tokenizer.eos_token
    if eos and trained.count(eos) < sum(m["role"] == "assistant" for m in messages):
        problems.append(f"the end-of-turn token {eos} is not trained, so the model may never stop")
    if not masked and len(messages) > 1:
        problems.append("nothing is masked")
    return sorted(set(problems))


def prompt_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to (not including) its last assistant turn: what the model is asked."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def reference_answer(messages: list[dict[str, str]]) -> str:
    return [m for m in messages if m["role"] == "assistant"][-1]["content"]


def drop_near_duplicate_rows(rows: list[dict[str, Any]], threshold: float) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): all but the first row of each near-duplicate cluster are dropped.

    Each dropped record says which row it repeats and keeps its messages and meta, so it can be restored.
    """
    dropped = []
    drop: set[int] = set()
    for cluster in near_duplicate_clusters([row_text(r) for r in rows], threshold):
        kept = rows[cluster[0]]["meta"]
        for i in cluster[1:]:
            meta = rows[i]["meta"]
            position = next((meta[k] for k in POSITION_KEYS if k in meta), None)
            dropped.append({"source": meta.get("source"), "position": position,
                            "reason": f"near_duplicate of {describe_provenance(kept)}", "messages": rows[i]["messages"],
                            "meta": meta})
            drop.add(i)
    return [row for i, row in enumerate(rows) if i not in drop], dropped


def redact_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "messages": [{**m, "content": redact_pii(m["content"])} for m in row["messages"]]}


def format_rows(config: FormatConfig) -> dict[str, Any]:
    """Read data/clean.jsonl, write data/formatted/rows.jsonl (+ dropped.jsonl) and the format report."""
    ws = Workspace(config.workspace)
    rows = read_jsonl(ws.require(ws.clean, "01_collect"))
    clean_rows = len(rows)
    dropped: list[dict[str, Any]] = []
    if config.drop_near_duplicates:
        rows, dropped = drop_near_duplicate_rows(rows, config.near_duplicate_threshold)
    redacted_rows = 0
    if config.redact_pii:
        redacted = [redact_row(row) for row in rows]
        redacted_rows = sum(a["messages"] != b["messages"] for a, b in zip(rows, redacted))
        rows = redacted
        dropped = [{**d, "messages": redact_row(d)["messages"]} for d in dropped]
    # Always written (possibly empty), so a file from an earlier run never lingers.
    write_jsonl(ws.dropped, dropped)

    tokenizer = load_tokenizer(config.base_model)
    out, lengths, trained, over = [], [], [], []
    problems: dict[str, int] = {}
    problem_rows, first_problem = 0, None
    for row in rows:
        full = tokenize_chat(tokenizer, row["messages"])
        found = mask_problems(tokenizer, row["messages"], encoded=full)
        if found:
            problem_rows += 1
            for problem in found:
                problems[problem] = problems.get(problem, 0) + 1
            if first_problem is None:
                first_problem = {**row["meta"], "problems": found}
        n_tokens = len(full["input_ids"])
        n_trained = sum(label != IGNORE_INDEX for label in full["labels"])
        kept_trained = sum(label != IGNORE_INDEX for label in full["labels"][: config.max_seq_len])
        out.append({**row, "n_tokens": n_tokens, "n_trained": n_trained,
                    "over_max": n_tokens > config.max_seq_len, "trained_cut": n_trained - kept_trained})
        lengths.append(n_tokens)
        trained.append(n_trained)
        if n_tokens > config.max_seq_len:
            over.append({**row["meta"], "n_tokens": n_tokens, "trained_cut": n_trained - kept_trained})
    write_jsonl(ws.formatted, out)
    report = {
        "base_model": config.base_model,
        "max_seq_len": config.max_seq_len,
        "redact_pii": config.redact_pii,
        "drop_near_duplicates": config.drop_near_duplicates,
        "near_duplicate_threshold": config.near_duplicate_threshold,
        "clean_rows": clean_rows,
        "rows": len(out),
        "dropped_near_duplicates": len(dropped),
        "redacted_rows": redacted_rows,
        "tokens": summary_stats(lengths),
        "trained_tokens": summary_stats(trained),
        "over_max_seq_len": len(over),
        "over_max_examples": over[:20],
        "example": tokenizer.apply_chat_template(rows[0]["messages"], tokenize=False) if rows else "",
        # {problem: rows with it}; empty when every row's mask is right.
        "mask_problems": dict(sorted(problems.items())),
        "mask_problem_rows": problem_rows,
        "first_mask_problem": first_problem,
    }
    write_json(ws.format_report, report)
    return report

"""Stage 02: apply the model's chat template, count real tokens, build the loss mask.

The loss mask decides what the model learns: by default only assistant turns (and
their end-of-turn token) are trained; system, user and tool text is context, not target.

Two optional clean-ups, suggested by the quality report (nbkit.data.quality; nbkit.data.near_duplicates, nbkit.data.pii), run first:
near-duplicates can be dropped (kept in data/formatted/dropped.jsonl, never lost silently)
and personal data replaced with placeholders.

With the replay guard on (the default), the base model's own answers to general prompts are written
beside the rows (data/formatted/replay.jsonl, see nbkit.data.replay); 03 puts a share of them into train.

The chat template, the tokens and the loss mask themselves are nbkit.model.loss_mask.

Rows that cannot be trained as written are set aside in dropped.jsonl as well, each with
its reason: rows whose tools or tool calls the chat template leaves out (training on them
would teach the model answers to tools it was never shown) and rows with no trained token
within max_seq_len (they add nothing but a zero loss).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from nbkit.core.config import Config, field
from nbkit.core.errors import ChatTemplateError, DataError
from nbkit.core.files import file_records, read_jsonl, write_json, write_jsonl
from nbkit.core.workspace import POSITION_KEYS, Workspace, describe_provenance
from nbkit.data.near_duplicates import near_duplicate_clusters, row_text, validate_threshold
from nbkit.data.pii import redact_pii
from nbkit.data.quality import record_replay_off
from nbkit.data.quality_stats import summary_stats
from nbkit.data.replay import DEFAULT_SHARE, MAX_SHARE, write_pool
from nbkit.model.chat_templates import end_of_turn, has_thinking_switch
from nbkit.model.loader import EMBEDDED_MODEL, load_tokenizer
from nbkit.model.loss_mask import (
    IGNORE_INDEX,
    answers_without_end_of_turn,
    encode_chat,
    is_trained,
    mask_problems,
    render,
    unrendered_tools,
    uses_tools,
)

# Why format_rows sets a row aside (the prefix of its dropped.jsonl `reason`, the keys of `rejected_rows`).
TOOLS_NOT_RENDERED = "tools_not_rendered"
TEMPLATE_ERROR = "template_error"
NO_TRAINED_TOKENS = "no_trained_tokens"
REJECTIONS = (TOOLS_NOT_RENDERED, TEMPLATE_ERROR, NO_TRAINED_TOKENS)


@dataclass
class FormatConfig(Config):
    """Which model's chat template to apply and how long examples may be."""

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    base_model: str = field(EMBEDDED_MODEL, "Model whose tokenizer and chat template are used (Hub id or path).")
    max_seq_len: int = field(512, "Longest example in tokens; longer ones are flagged and truncated in training.")
    thinking: bool = field(
        False,
        "Templates with a thinking switch (Qwen3): True trains the model to write its (empty) think block "
        "before each answer; False, the default, puts the empty block in the prompt instead, as the "
        "template's enable_thinking=False does. Kept the same in training, evaluation and export.",
    )
    redact_pii: bool = field(
        False, "Replace emails, phone numbers, card numbers, IPs and API keys with placeholders before training."
    )
    drop_near_duplicates: bool = field(
        False, "Keep one row of each near-duplicate cluster found by the quality report."
    )
    near_duplicate_threshold: float = field(
        0.8, "Similarity (0.5-1.0) from which two rows count as near-duplicates; 1.0 finds exact copies only."
    )
    replay_guard: bool = field(
        True,
        "Mix the base model's own answers to general prompts into training (replay_share of train), so the "
        "tuned model keeps answering ordinary requests as before; generated once per model and cached.",
    )
    replay_share: float = field(
        DEFAULT_SHARE, "Share of the training split that is replay rows when replay_guard is on (0.05-0.5)."
    )

    def validate(self) -> None:
        self.require(self.max_seq_len > 0, "max_seq_len", f"must be > 0, got {self.max_seq_len}")
        self.require(
            0.05 <= self.replay_share <= MAX_SHARE,
            "replay_share",
            f"must be between 0.05 and {MAX_SHARE}, got {self.replay_share}",
            f"{DEFAULT_SHARE} is a good default; set replay_guard = False to turn replay off",
        )
        validate_threshold(self, "near_duplicate_threshold")


def describe_template(tokenizer, config: FormatConfig) -> dict[str, Any]:
    """Which chat template the rows are rendered with, what closes an answer, and what a thinking switch does —
    the format report's "chat_template" section, with a one-line summary for the notebook."""
    source = tokenizer.nbkit_template
    eot = end_of_turn(tokenizer)
    switch = has_thinking_switch(tokenizer.chat_template)
    if source == "model":
        summary = f"Chat template: {config.base_model}'s own; answers end with {eot}."
    elif source == "plain":
        summary = (
            f"Chat template: {config.base_model} has none (a base model) and its vocabulary has no known turn "
            f"tokens, so rows are rendered as plain '### User:' / '### Assistant:' turns, each answer closed "
            f"by its EOS token {eot}; the tuned model learns that format."
        )
    else:
        summary = (
            f"Chat template: {config.base_model} has none (a base model); its vocabulary already has the "
            f"{source} turn tokens, so rows use that family's instruct template; answers end with {eot}."
        )
    if switch:
        summary += (
            " Thinking: on — every trained answer starts with the model's think block (empty in this data)."
            if config.thinking
            else " Thinking: off — the empty think block is part of the prompt, not "
            "trained (set thinking = True to train it)."
        )
    elif config.thinking:
        warnings.warn(
            f"thinking = True is ignored: the chat template of {config.base_model} has no thinking switch.",
            stacklevel=3,
        )
    return {"source": source, "end_of_turn": eot, "thinking_switch": switch, "summary": summary}


# -- rows -----------------------------------------------------------------------------------


def dropped_record(row: dict[str, Any], reason: str) -> dict[str, Any]:
    """What dropped.jsonl keeps of a row set aside: where it came from, why, and all of it, so it can be restored."""
    meta = row.get("meta", {})
    position = next((meta[k] for k in POSITION_KEYS if k in meta), None)
    record = {
        "source": meta.get("source"),
        "position": position,
        "reason": reason,
        "messages": row["messages"],
        "meta": meta,
    }
    if "tools" in row:
        record["tools"] = row["tools"]
    return record


def drop_near_duplicate_rows(rows: list[dict[str, Any]], threshold: float) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): all but the first row of each near-duplicate cluster are dropped.

    Each dropped record says which row it repeats and keeps its messages and meta, so it can be restored.
    """
    dropped = []
    drop: set[int] = set()
    for cluster in near_duplicate_clusters([row_text(r) for r in rows], threshold):
        kept = rows[cluster[0]]["meta"]
        for i in cluster[1:]:
            dropped.append(dropped_record(rows[i], f"near_duplicate of {describe_provenance(kept)}"))
            drop.add(i)
    return [row for i, row in enumerate(rows) if i not in drop], dropped


def _redact_values(value: Any) -> Any:
    if isinstance(value, str):
        return redact_pii(value)
    if isinstance(value, dict):
        return {k: _redact_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_values(v) for v in value]
    return value


def redact_message(message: dict[str, Any]) -> dict[str, Any]:
    """The message with personal data replaced in its text and in its tool calls' arguments."""
    out = {**message, "content": redact_pii(message.get("content") or "")}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": _redact_values(call["function"].get("arguments"))}}
            if isinstance(call.get("function"), dict)
            else call
            for call in message["tool_calls"]
        ]
    return out


def redact_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "messages": [redact_message(m) for m in row["messages"]]}


def _not_rendered_reason(model: str, missing: list[str]) -> str:
    return (
        f"{TOOLS_NOT_RENDERED}: the chat template of {model} does not render {', '.join(missing)}, so training "
        "would lose them; use a model whose chat template supports tools, or remove the tools from this row"
    )


def _template_error_reason(model: str, row: dict[str, Any], error: ChatTemplateError) -> str:
    if uses_tools(row):
        return (
            f"{TOOLS_NOT_RENDERED}: the chat template of {model} cannot render this row's tools, tool calls or "
            f"tool results ({error}); use a model whose chat template supports tools, or remove the tools "
            "from this row"
        )
    return (
        f"{TEMPLATE_ERROR}: the chat template of {model} cannot render this row ({error}); fix the row, or "
        "use a model whose chat template accepts it"
    )


def _no_trained_reason(messages: list[dict[str, Any]], n_tokens: int, n_trained: int, max_seq_len: int) -> str:
    if not any(is_trained(m) for m in messages):
        why = (
            "every assistant turn has weight 0, so the row is all context; give the replies the model should "
            "learn weight 1 (or no weight), or remove the row"
        )
    elif n_trained:
        why = (
            f"the row is {n_tokens} tokens and its trained answer starts after max_seq_len={max_seq_len}, so "
            "truncation leaves nothing to learn; raise max_seq_len or shorten the prompt"
        )
    else:
        why = (
            "the loss mask trains no token: the assistant turns were not found in the text the chat template "
            "renders; see mask_problems in the format report, or use the model's own chat template"
        )
    return f"{NO_TRAINED_TOKENS}: {why}"


def format_rows(config: FormatConfig) -> dict[str, Any]:
    """Read data/clean.jsonl, write data/formatted/rows.jsonl (+ dropped.jsonl) and the format report.

    Raises DataError when no row is left with a trained token (training would see a loss of 0 throughout).
    """
    ws = Workspace(config.workspace)
    ws.checked(ws.collect_report, "01_collect", required=False)
    rows = read_jsonl(ws.require(ws.clean, "01_collect"))
    clean_rows = len(rows)
    dropped: list[dict[str, Any]] = []
    if config.drop_near_duplicates:
        rows, dropped = drop_near_duplicate_rows(rows, config.near_duplicate_threshold)
    near_duplicates = len(dropped)
    redacted_rows = 0
    if config.redact_pii:
        redacted = [redact_row(row) for row in rows]
        redacted_rows = sum(a["messages"] != b["messages"] for a, b in zip(rows, redacted))
        rows = redacted
        dropped = [{**d, "messages": redact_row(d)["messages"]} for d in dropped]

    tokenizer = load_tokenizer(config.base_model, thinking=config.thinking)
    template = describe_template(tokenizer, config)
    print(template["summary"], flush=True)
    out, lengths, trained, over = [], [], [], []
    problems: dict[str, int] = {}
    problem_rows, first_problem = 0, None
    rejected = dict.fromkeys(REJECTIONS, 0)
    first_reason: dict[str, str] = {}
    without_end_of_turn = cut_rows = 0

    def reject(row: dict[str, Any], reason: str) -> None:
        category = reason.split(":", 1)[0]
        rejected[category] += 1
        first_reason.setdefault(category, f"{describe_provenance(row.get('meta', {}))}: {reason}")
        dropped.append(dropped_record(row, reason))

    for row in rows:
        messages, tools = row["messages"], row.get("tools")
        # A template that drops tools or tool calls would train answers to tools the model never sees.
        try:
            missing = unrendered_tools(tokenizer, messages, tools) if uses_tools(row) else []
            full = None if missing else encode_chat(tokenizer, messages, tools)
        except ChatTemplateError as error:
            reject(row, _template_error_reason(config.base_model, row, error))
            continue
        if missing:
            reject(row, _not_rendered_reason(config.base_model, missing))
            continue
        found = mask_problems(tokenizer, messages, encoded=full)
        if found:
            problem_rows += 1
            for problem in found:
                problems[problem] = problems.get(problem, 0) + 1
            if first_problem is None:
                first_problem = {**row["meta"], "problems": found}
        n_tokens = len(full["input_ids"])
        n_trained = sum(label != IGNORE_INDEX for label in full["labels"])
        kept_trained = sum(label != IGNORE_INDEX for label in full["labels"][: config.max_seq_len])
        if not kept_trained:  # all labels -100: the row adds a loss of 0 and nothing to learn
            reject(row, _no_trained_reason(messages, n_tokens, n_trained, config.max_seq_len))
            continue
        without_end_of_turn += answers_without_end_of_turn(tokenizer, full)
        cut_rows += kept_trained < n_trained
        out.append(
            {
                **row,
                "n_tokens": n_tokens,
                "n_trained": n_trained,
                "over_max": n_tokens > config.max_seq_len,
                "trained_cut": n_trained - kept_trained,
            }
        )
        lengths.append(n_tokens)
        trained.append(n_trained)
        if n_tokens > config.max_seq_len:
            over.append({**row["meta"], "n_tokens": n_tokens, "trained_cut": n_trained - kept_trained})
    # Always written (possibly empty), so a file from an earlier run never lingers.
    write_jsonl(ws.dropped, dropped)
    write_jsonl(ws.formatted, out)
    report = {
        "base_model": config.base_model,
        "max_seq_len": config.max_seq_len,
        "thinking": config.thinking,
        # which chat template rendered the rows (the model's own, or one nbkit chose) and its end of turn
        "chat_template": template,
        "redact_pii": config.redact_pii,
        "drop_near_duplicates": config.drop_near_duplicates,
        "near_duplicate_threshold": config.near_duplicate_threshold,
        # clean_rows == rows + dropped_rows; dropped_rows == dropped_near_duplicates + sum(rejected_rows)
        "clean_rows": clean_rows,
        "rows": len(out),
        "dropped_near_duplicates": near_duplicates,
        # {reason: rows set aside for it}: tools the template does not render, a template that raised, nothing trained
        "rejected_rows": rejected,
        "dropped_rows": len(dropped),
        "redacted_rows": redacted_rows,
        "tokens": summary_stats(lengths),
        "trained_tokens": summary_stats(trained),
        "over_max_seq_len": len(over),
        "over_max_examples": over[:20],
        # Over the kept rows: trained answers with no trained end-of-turn token (the model may never stop), and
        # rows whose trained tokens max_seq_len cuts (the model learns answers that stop mid-way, or never).
        "answers_without_end_of_turn": without_end_of_turn,
        "answers_cut_by_max_seq_len": cut_rows,
        "example": render(tokenizer, out[0]["messages"], out[0].get("tools")) if out else "",
        # {problem: rows with it}, over every row the template renders; empty when every row's mask is right.
        "mask_problems": dict(sorted(problems.items())),
        "mask_problem_rows": problem_rows,
        "first_mask_problem": first_problem,
    }
    report["replay"] = write_pool(config, tokenizer, len(out))
    if report["replay"].get("off_reason"):
        record_replay_off(config.workspace, report["replay"]["off_reason"])
    report["files"] = file_records(ws.formatted, ws.dropped, ws.replay)  # written first: 03 checks them
    write_json(ws.format_report, report)
    if rows and not out:
        causes = "; ".join(f"{n} {category} (first: {first_reason[category]})" for category, n in rejected.items() if n)
        raise DataError(
            f"no row of {ws.clean} is left to train on with {config.base_model} at max_seq_len="
            f"{config.max_seq_len}: {causes}. Every label would be -100, so the loss would be 0 and "
            f"training would learn nothing — fix what the reasons say, then run this step again "
            f"(the rows are kept in {ws.dropped})."
        )
    return report

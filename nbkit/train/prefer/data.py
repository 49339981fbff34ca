"""What a preference run trains on: the pairs (DPO) or the training prompts with their references (GRPO), a few pairs held
out for the eval loss, rows cut to fit the parent's length, and GRPO's rewards (the task's per-row score, valid JSON)."""

from __future__ import annotations

import json
import random
from typing import Any

from nbkit.core.errors import DataError, WorkspaceError
from nbkit.core.files import file_record, read_jsonl
from nbkit.core.metrics import kind_of, parse_json, row_score
from nbkit.core.rows import prompt_messages, reference_answer
from nbkit.core.workspace import Workspace
from nbkit.model.chat_templates import final_answer
from nbkit.model.generation import answer_budget
from nbkit.train.prefer.config import EVAL_MIN_PAIRS, EVAL_SHARE, PAIRS_CELL, PreferConfig
from nbkit.train.runtime import say


def read_pairs(ws: Workspace) -> list[dict[str, Any]]:
    """prompt/chosen/rejected of each pair (provenance dropped), checked against the pair contract."""
    if not ws.pairs.is_file():
        raise WorkspaceError(
            f"no preference pairs at {ws.pairs} — run {PAIRS_CELL} first, or write pairs there in its format."
        )
    ws.checked(ws.pairs_report, PAIRS_CELL, required=False)
    pairs = []
    for line, pair in enumerate(read_jsonl(ws.pairs), start=1):
        prompt, chosen, rejected = (pair.get(k) for k in ("prompt", "chosen", "rejected"))
        if not (
            isinstance(prompt, list)
            and prompt
            and prompt[-1].get("role") == "user"
            and all(isinstance(a, list) and len(a) == 1 and a[0].get("role") == "assistant" for a in (chosen, rejected))
        ):
            raise DataError(
                f"{ws.pairs} line {line}: expected a prompt ending with a user turn and one assistant "
                f"message each in chosen and rejected — fix or delete that line, or run {PAIRS_CELL}."
            )
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    if not pairs:
        raise DataError(f"{ws.pairs} holds no pairs — run {PAIRS_CELL} again with more sources.")
    return pairs


def grpo_rows(ws: Workspace) -> list[dict[str, Any]]:
    """Prompts and their answers from the training split (never validation/test), replay rows left out."""
    from nbkit.core.rows import is_replay

    rows = [r for r in read_jsonl(ws.require(ws.split("train"), "03_split")) if not is_replay(r)]
    return [{"prompt": prompt_messages(r["messages"]), "reference": reference_answer(r["messages"])} for r in rows]


def hold_out(pairs: list[dict[str, Any]], seed: int) -> tuple[list[dict], list[dict]]:
    """(train, eval): the pairs of ~10% of the prompts held out, once there are enough pairs."""
    if len(pairs) < EVAL_MIN_PAIRS:
        say(
            f"{len(pairs)} pairs: too few to hold some out ({EVAL_MIN_PAIRS} or more), so no eval loss or reward "
            "accuracy on unseen pairs is logged; 05 still evaluates the run on the test split."
        )
        return pairs, []
    keys = [json.dumps(p["prompt"], sort_keys=True) for p in pairs]
    order = sorted(set(keys))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(EVAL_SHARE * len(order)))])
    return [p for p, k in zip(pairs, keys) if k not in held], [p for p, k in zip(pairs, keys) if k in held]


def fitting(config: PreferConfig, rows: list[dict[str, Any]], tokenizer, answers: list[str], parent_max: int):
    """(config with its lengths filled where 0, the rows whose prompt fits max_prompt_length)."""
    total = config.max_length or parent_max
    answer = config.max_completion_length or min(answer_budget(tokenizer, answers), total // 2)
    config = config.replace(
        max_length=total, max_completion_length=answer, max_prompt_length=config.max_prompt_length or total - answer
    )
    texts = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    kept = [
        r
        for r, t in zip(rows, texts)
        if len(tokenizer(t, add_special_tokens=False)["input_ids"]) <= config.max_prompt_length
    ]
    if len(kept) < len(rows):
        say(
            f"Set aside {len(rows) - len(kept)} of {len(rows)} prompts longer than max_prompt_length="
            f"{config.max_prompt_length} tokens (raise max_length or max_prompt_length to keep them)."
        )
    if not kept:
        raise DataError(
            f"every prompt is longer than max_prompt_length={config.max_prompt_length} tokens — raise "
            "max_length (or max_prompt_length)."
        )
    return config, kept


def answer_text(completion: Any) -> str:
    """A GRPO completion's text (conversational ones are [{"role": "assistant", ...}]), think block left out."""
    return final_answer(completion[-1]["content"] if isinstance(completion, list) else completion)


def task_score(completions: list, reference: list[str], kind: list[str], **_: Any) -> list[float]:
    """Reward: each answer's task score against its training row's answer (05's row_score, 0-1)."""
    return [row_score(answer_text(c), r, k) for c, r, k in zip(completions, reference, kind)]


def valid_json(completions: list, **_: Any) -> list[float]:
    """Reward (JSON tasks): 1 for an answer that parses as JSON, else 0 — the format before the fields."""
    return [float(parse_json(answer_text(c)) is not None) for c in completions]


def training_data(config: PreferConfig, ws: Workspace, tokenizer, parent_max: int, pairs: list | None = None):
    """(config resolved, train rows, eval rows, what the record says about the data); DPO's `pairs` as
    `read_pairs` returned them (read here when not given)."""
    if config.method == "dpo":
        rows = read_pairs(ws) if pairs is None else pairs
        answers = [p[k][0]["content"] for p in rows for k in ("chosen", "rejected")]
        config, kept = fitting(config, rows, tokenizer, answers, parent_max)
        train, held = hold_out(kept, config.seed)
        return (
            config,
            train,
            held,
            {
                "pairs": {
                    "file": str(ws.pairs),
                    **file_record(ws.pairs),
                    "train": len(train),
                    "eval": len(held),
                    "set_aside": len(rows) - len(kept),
                }
            },
        )
    rows = grpo_rows(ws)
    kind = kind_of([r["reference"] for r in rows])
    config, kept = fitting(config, rows, tokenizer, [r["reference"] for r in rows], parent_max)
    return (
        config,
        [{**r, "kind": kind} for r in kept],
        [],
        {"prompts": {"train": len(kept), "kind": kind, "set_aside": len(rows) - len(kept)}},
    )

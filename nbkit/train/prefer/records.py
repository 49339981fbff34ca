"""A preference pair as 06 keeps it (`make_pair`: prompt, chosen, rejected, source, origin; `prompt_key` to
deduplicate) and preference records as users' files hold them: TRL's prompt/chosen/rejected (text, message lists, or chosen and
rejected conversations that share their prompt) and OpenAI's preference fine-tuning layout (input.messages,
preferred_output, non_preferred_output). Each record becomes (prompt messages, chosen text, rejected text), or a
RecordError that says what is wrong with it; nbkit.train.prefer.pairs reads the files and applies the leakage rule."""

from __future__ import annotations

import json
from typing import Any

from nbkit.core.messages import (
    BAD_ROLE_ORDER,
    DATA_TYPE,
    MISSING_COLUMN,
    MISSING_CONTENT,
    MISSING_MESSAGES,
    RecordError,
    validate_messages,
)
from nbkit.core.rows import prompt_messages


def parse_preference(record: Any) -> tuple[list[dict[str, str]], str, str]:
    """(prompt messages, chosen text, rejected text) from TRL's or OpenAI's layout, or RecordError."""
    if not isinstance(record, dict):
        raise RecordError(DATA_TYPE, f"expected a JSON object, got {type(record).__name__}")
    if {"input", "preferred_output", "non_preferred_output"} & set(record):  # OpenAI preference fine-tuning
        messages = record["input"].get("messages") if isinstance(record.get("input"), dict) else None
        return (
            prompt_turns(messages, "input.messages"),
            answer_text(record.get("preferred_output"), "preferred_output"),
            answer_text(record.get("non_preferred_output"), "non_preferred_output"),
        )
    if "chosen" not in record or "rejected" not in record:
        raise RecordError(
            MISSING_COLUMN,
            f"found keys {', '.join(map(str, record)) or 'none'}; expected "
            "prompt/chosen/rejected (TRL) or input/preferred_output/"
            "non_preferred_output (OpenAI)",
        )
    chosen, worse = record["chosen"], record["rejected"]
    if "prompt" in record:
        text = record["prompt"]
        prompt = [{"role": "user", "content": text}] if isinstance(text, str) else text
        return prompt_turns(prompt, "prompt"), answer_text(chosen, "chosen"), answer_text(worse, "rejected")
    if not (isinstance(chosen, list) and isinstance(worse, list)):
        raise RecordError(
            MISSING_COLUMN,
            "no `prompt`: chosen and rejected must then be conversations "
            "(message lists) that start with the same prompt",
        )
    shared = 0
    while shared < min(len(chosen), len(worse)) and chosen[shared] == worse[shared]:
        shared += 1
    return (
        prompt_turns(chosen[:shared], "the prompt chosen and rejected share"),
        answer_text(chosen[shared:], "chosen"),
        answer_text(worse[shared:], "rejected"),
    )


def prompt_turns(messages: Any, name: str) -> list[dict[str, str]]:
    """The prompt as {"role", "content"} messages, checked as stage 01 checks a conversation: a system message
    only first, text in every turn, turns alternating, a user turn last."""
    if not isinstance(messages, list) or not messages:
        raise RecordError(MISSING_MESSAGES, f"`{name}` must be a non-empty list of messages")
    if not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        raise RecordError(BAD_ROLE_ORDER, f"`{name}` must end with a user turn")
    try:  # an answer after the prompt makes it a conversation stage 01 would check
        checked = validate_messages(messages + [{"role": "assistant", "content": "answer"}])
    except RecordError as err:
        raise RecordError(err.category, f"`{name}`: {err}") from None
    return [{"role": m["role"], "content": m["content"]} for m in checked[:-1]]


def answer_text(value: Any, name: str) -> str:
    """An answer given as text or as a list of one assistant message."""
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise RecordError(BAD_ROLE_ORDER, f"`{name}` must be one assistant message")
        value = value[0].get("content")
    if not isinstance(value, str) or not value.strip():
        raise RecordError(MISSING_CONTENT, f"`{name}` has empty or non-text content")
    return value


def asked(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """A row's prompt (up to its last assistant turn) as plain {"role", "content"} messages."""
    return [{"role": m["role"], "content": m["content"]} for m in prompt_messages(messages)]


def prompt_key(prompt: list[dict[str, Any]]) -> str:
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)


def make_pair(prompt: list[dict[str, str]], chosen: str, rejected: str, source: str, origin: dict) -> dict:
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "source": source,
        "origin": origin,
    }


def squash(text: str) -> str:
    return " ".join(text.split())

"""A chat row's parts that every stage reads: the prompt (every turn before the last answer), the reference
answer (the last assistant turn), and whether the row is the replay guard's."""

from __future__ import annotations

from typing import Any


def prompt_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to (not including) its last assistant turn: what the model is asked."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def reference_answer(messages: list[dict[str, str]]) -> str:
    return [m for m in messages if m["role"] == "assistant"][-1]["content"]


def is_replay(row: dict[str, Any]) -> bool:
    return bool(row.get("meta", {}).get("replay"))

"""A conversation as every stage keeps it: a list of {"role", "content"} messages (plus a name, a training
weight, tool calls), checked by `validate_messages`; a record that cannot be used raises `RecordError` with one of
the rejection categories below (written to rejected.jsonl as `category`)."""

from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "assistant")
MESSAGE_ROLES = ROLES + ("tool",)  # tool results answer an assistant's tool_calls
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id"}

# Rejection categories (rejected.jsonl `category`).
INVALID_JSON = "invalid_json"
DATA_TYPE = "data_type"
MISSING_MESSAGES = "missing_messages"
MISSING_COLUMN = "missing_column"
EMPTY_CONVERSATION = "empty_conversation"
MESSAGE_MISSING_KEY = "message_missing_key"
UNRECOGNIZED_KEY = "unrecognized_key"
UNRECOGNIZED_ROLE = "unrecognized_role"
MISSING_CONTENT = "missing_content"
NO_ASSISTANT = "no_assistant_message"
BAD_ROLE_ORDER = "bad_role_order"
BAD_WEIGHT = "bad_weight"
BAD_TOOLS = "bad_tools"
AMBIGUOUS_COLUMNS = "ambiguous_columns"
CELL_COUNT = "wrong_cell_count"
DUPLICATE = "duplicate"


class RecordError(Exception):
    """A record cannot be used; `category` is machine-readable, the message is for people."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise RecordError(DATA_TYPE, f"`messages` must be a list, got {type(messages).__name__}")
    if not messages:
        raise RecordError(EMPTY_CONVERSATION, "`messages` is empty")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(DATA_TYPE, f"messages[{i}] must be an object, got {type(message).__name__}")
        calls = message.get("tool_calls")
        required = ("role",) if calls else ("role", "content")  # OpenAI: a tool call needs no content
        missing = [k for k in required if k not in message]
        if missing:
            raise RecordError(MESSAGE_MISSING_KEY, f"messages[{i}] has no `{missing[0]}`")
        extra = sorted(set(message) - MESSAGE_KEYS)
        if extra:
            raise RecordError(
                UNRECOGNIZED_KEY,
                f"messages[{i}] has unrecognized key `{extra[0]}` (allowed: {', '.join(sorted(MESSAGE_KEYS))})",
            )
        role = message["role"]
        if role not in MESSAGE_ROLES:
            hint = " (OpenAI's legacy function messages: write them as `tool` messages)" if role == "function" else ""
            raise RecordError(
                UNRECOGNIZED_ROLE,
                f"messages[{i}] has role {role!r}; use one of "
                f"{', '.join(MESSAGE_ROLES)} (or map it with `roles`){hint}",
            )
        content = message.get("content")
        if calls and content is None:
            content = ""
        if not isinstance(content, str) or not (content.strip() or calls):
            raise RecordError(MISSING_CONTENT, f"messages[{i}] ({role}) has empty or non-text content")
        out: dict[str, Any] = {"role": role, "content": content}
        if message.get("name") is not None:
            out["name"] = str(message["name"])
        if "weight" in message:
            out["weight"] = _weight(i, role, message["weight"])
        if calls:
            if role != "assistant":
                raise RecordError(
                    BAD_TOOLS, f"messages[{i}] ({role}) has `tool_calls`; only assistant messages call tools"
                )
            out["tool_calls"] = _tool_calls(i, calls)
        if role == "tool" and message.get("tool_call_id") is not None:
            out["tool_call_id"] = str(message["tool_call_id"])
        clean.append(out)
    _check_order(clean)
    return clean


def _weight(i: int, role: str, weight: Any) -> int:
    if role != "assistant":
        raise RecordError(BAD_WEIGHT, f"messages[{i}] ({role}) has a `weight`; only assistant messages have one")
    if isinstance(weight, bool) or weight not in (0, 1):
        raise RecordError(BAD_WEIGHT, f"messages[{i}] has weight {weight!r}; use 0 (context, not trained) or 1")
    return int(weight)


def _tool_calls(i: int, calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls with their JSON `arguments` decoded (chat templates render a mapping)."""
    if not isinstance(calls, list):
        raise RecordError(BAD_TOOLS, f"messages[{i}].tool_calls must be a list, got {type(calls).__name__}")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RecordError(BAD_TOOLS, f"messages[{i}].tool_calls[{j}] needs a `function` with a `name`")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as err:
                raise RecordError(
                    BAD_TOOLS,
                    f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON "
                    f"({err.msg} at column {err.colno})",
                ) from None
        if not isinstance(arguments, dict):
            raise RecordError(BAD_TOOLS, f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON object")
        out.append(
            {
                **({"id": str(call["id"])} if call.get("id") is not None else {}),
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        )
    return out


def _check_order(messages: list[dict[str, Any]]) -> None:
    """After an optional system message: user, assistant, user, ...; an assistant's tool_calls are
    answered by one or more tool messages, and an assistant message follows them."""
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise RecordError(NO_ASSISTANT, "no assistant message: nothing to learn from this example")
    if "system" in roles[1:]:
        raise RecordError(
            BAD_ROLE_ORDER,
            f"system message at position {roles.index('system', 1)}; only the first message may be a system message",
        )
    start = 1 if roles[0] == "system" else 0
    expected: tuple[str, ...] = ("user",)
    for position in range(start, len(messages)):
        role = roles[position]
        if role not in expected:
            wanted = " or ".join(repr(r) for r in expected)
            raise RecordError(
                BAD_ROLE_ORDER,
                f"messages[{position}] is {role!r} where {wanted} was expected "
                "(turns must alternate user, assistant, starting with user; tool "
                "messages answer an assistant's tool_calls)",
            )
        if role == "user":
            expected = ("assistant",)
        elif role == "assistant":
            expected = ("tool",) if messages[position].get("tool_calls") else ("user",)
        else:  # tool
            expected = ("tool", "assistant")
    if expected == ("tool",):
        raise RecordError(
            BAD_ROLE_ORDER, f"messages[{len(messages) - 1}] calls a tool but no `tool` message answers it"
        )

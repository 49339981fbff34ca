"""Turn one input record into canonical chat messages, or say exactly why it cannot be used.

Recognised schemas (first match wins):
    messages                    [{"role", "content"}, ...]        (OpenAI / TRL chat)
    conversations               [{"from", "value"}, ...]          (ShareGPT)
    instruction, input, output                                    (Alpaca)
    prompt, completion                                            (prompt-completion)

Checks follow the chat-format checks users know from hosted fine-tuning services, so a
rejected row's category tells them what to fix.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "name"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "system": "system", "bot": "assistant"}

# Rejection categories (rejected.jsonl `category`).
INVALID_JSON = "invalid_json"
NOT_UTF8 = "not_utf8"
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
DUPLICATE = "duplicate"


class RecordError(Exception):
    """A record cannot be used; `category` is machine-readable, the message is for people."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category


def to_messages(record: Any, *, tabular: bool = False) -> list[dict[str, str]]:
    """Canonical, validated messages for one record, or RecordError."""
    if not isinstance(record, dict):
        raise RecordError(DATA_TYPE, f"expected an object with a `messages` list, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
    elif "conversations" in record:
        messages = _from_sharegpt(record["conversations"])
    elif "instruction" in record and "output" in record:
        prompt = str(record.get("instruction") or "")
        extra = record.get("input")
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    elif "prompt" in record and "completion" in record:
        messages = [{"role": "user", "content": record["prompt"]},
                    {"role": "assistant", "content": record["completion"]}]
    else:
        keys = ", ".join(map(str, record)) or "none"
        category = MISSING_COLUMN if tabular else MISSING_MESSAGES
        raise RecordError(category, f"no `messages` list (found keys: {keys}); expected messages, conversations, "
                                    "instruction/output or prompt/completion")
    return validate_messages(messages)


def _from_sharegpt(turns: Any) -> list[dict[str, Any]]:
    if not isinstance(turns, list):
        raise RecordError(DATA_TYPE, f"`conversations` must be a list, got {type(turns).__name__}")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError(MESSAGE_MISSING_KEY, f"conversations[{i}] needs `from` and `value`")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise RecordError(UNRECOGNIZED_ROLE, f"conversations[{i}] has unknown speaker {turn['from']!r}")
        out.append({"role": role, "content": turn["value"]})
    return out


def validate_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list):
        raise RecordError(DATA_TYPE, f"`messages` must be a list, got {type(messages).__name__}")
    if not messages:
        raise RecordError(EMPTY_CONVERSATION, "`messages` is empty")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(DATA_TYPE, f"messages[{i}] must be an object, got {type(message).__name__}")
        missing = [k for k in ("role", "content") if k not in message]
        if missing:
            raise RecordError(MESSAGE_MISSING_KEY, f"messages[{i}] has no `{missing[0]}`")
        extra = sorted(set(message) - MESSAGE_KEYS)
        if extra:
            raise RecordError(UNRECOGNIZED_KEY, f"messages[{i}] has unrecognized key `{extra[0]}` "
                                                f"(allowed: role, content, name)")
        role = message["role"]
        if role not in ROLES:
            raise RecordError(UNRECOGNIZED_ROLE, f"messages[{i}] has role {role!r}; use one of {', '.join(ROLES)}")
        content = message["content"]
        if not isinstance(content, str) or not content.strip():
            raise RecordError(MISSING_CONTENT, f"messages[{i}] ({role}) has empty or non-text content")
        clean.append({"role": role, "content": content})
    _check_order(clean)
    return clean


def _check_order(messages: list[dict[str, str]]) -> None:
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise RecordError(NO_ASSISTANT, "no assistant message: nothing to learn from this example")
    if "system" in roles[1:]:
        raise RecordError(BAD_ROLE_ORDER, f"system message at position {roles.index('system', 1)}; "
                                          "only the first message may be a system message")
    turns = roles[1:] if roles[0] == "system" else roles
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            position = i + (len(roles) - len(turns))
            raise RecordError(BAD_ROLE_ORDER, f"messages[{position}] is {role!r} where {expected!r} was expected "
                                              "(turns must alternate user, assistant, starting with user)")

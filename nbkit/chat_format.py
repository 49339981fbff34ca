"""Turn one input record into canonical chat messages, or say exactly why it cannot be used.

Recognised schemas (first match wins):
    messages                    [{"role", "content"}, ...]        (OpenAI / TRL chat)
    conversations               [{"from", "value"}, ...]          (ShareGPT)
    instruction, input, output                                    (Alpaca)
    prompt, completion                                            (prompt-completion)

With Alpaca or prompt-completion records an optional `system` text becomes the system
message. Other column and role names are mapped first (`apply_mapping`), so a file with
`question`/`answer` columns or `human`/`bot` speakers needs no conversion script.

Checks follow the chat-format checks users know from hosted fine-tuning services, so a
rejected row's category tells them what to fix.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

ROLES = ("system", "user", "assistant")
# What a source column can be mapped to (CollectConfig.columns).
RECOGNISED_COLUMNS = ("messages", "conversations", "instruction", "input", "output", "prompt", "completion",
                      "system", "label")
STRUCTURED_COLUMNS = ("messages", "conversations")
# Turned into messages, so not copied into a row's meta.
SCHEMA_COLUMNS = ("instruction", "input", "output", "prompt", "completion")
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
        messages = _with_system(record, [{"role": "user", "content": prompt},
                                         {"role": "assistant", "content": record["output"]}])
    elif "prompt" in record and "completion" in record:
        messages = _with_system(record, [{"role": "user", "content": record["prompt"]},
                                         {"role": "assistant", "content": record["completion"]}])
    else:
        keys = ", ".join(map(str, record)) or "none"
        category = MISSING_COLUMN if tabular else MISSING_MESSAGES
        raise RecordError(category, f"no `messages` list (found keys: {keys}); expected messages, conversations, "
                                    "instruction/output or prompt/completion (map other names with `columns`)")
    return validate_messages(messages)


def uses_system_column(record: dict[str, Any]) -> bool:
    """Whether `system` became the system message (so it is not a side field for meta)."""
    return not ({"messages", "conversations"} & set(record))


def _with_system(record: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system = record.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return messages  # an empty system cell means "no system prompt", not an error
    return [{"role": "system", "content": system}] + messages


# -- mapping other layouts onto the recognised one ----------------------------------------

def check_mapping(columns: Any, roles: Any) -> list[tuple[str, str]]:
    """Problems with CollectConfig.columns / roles as (field, message) pairs; empty when both are fine."""
    problems = []
    for name, value, allowed, what in (("columns", columns, RECOGNISED_COLUMNS, "a recognised name"),
                                       ("roles", roles, ROLES, "a role")):
        if not isinstance(value, Mapping):
            problems.append((name, f"must be a dict like {_example(name)}, got {type(value).__name__}"))
            continue
        for key, target in value.items():
            if not isinstance(key, str) or not key:
                problems.append((name, f"has the key {key!r}; keys must be non-empty text"))
            elif target not in allowed:
                problems.append((name, f"maps {key!r} to {target!r}, which is not {what} (use one of "
                                       f"{', '.join(allowed)})"))
    return problems


def _example(name: str) -> str:
    return '{"question": "prompt", "answer": "completion"}' if name == "columns" else '{"human": "user"}'


def apply_mapping(record: Any, columns: Mapping[str, str] | None = None, roles: Mapping[str, str] | None = None,
                  *, tabular: bool = False) -> Any:
    """Rename columns, decode table cells that hold JSON, then rename roles; returns a new record.

    Runs before schema detection. A mapped column wins over an existing column with the
    target name. The input is never modified (in-memory sources belong to the caller).
    """
    if not isinstance(record, dict):
        return record
    if columns:
        out = {k: v for k, v in record.items() if k not in columns}
        for key, target in columns.items():
            if key in record:
                out[target] = record[key]
        record = out
    if tabular:
        record = _decode_cells(record)
    if roles:
        record = dict(record)
        if isinstance(record.get("messages"), list):
            record["messages"] = [_rename(m, "role", roles) for m in record["messages"]]
        if isinstance(record.get("conversations"), list):
            record["conversations"] = [_rename(t, "from", roles) for t in record["conversations"]]
    return record


def map_role(name: Any, roles: Mapping[str, str]) -> Any:
    """`roles[name]`, matched exactly first and then ignoring case; unmapped names pass through."""
    if not isinstance(name, str):
        return name
    if name in roles:
        return roles[name]
    lowered = {str(k).lower(): v for k, v in roles.items()}
    return lowered.get(name.lower(), name)


def _rename(message: Any, key: str, roles: Mapping[str, str]) -> Any:
    if not isinstance(message, dict) or key not in message:
        return message
    return {**message, key: map_role(message[key], roles)}


def _decode_cells(record: dict[str, Any]) -> dict[str, Any]:
    """Table cells: a messages/conversations column may hold JSON text; Arrow fills absent struct keys with None.

    Only the structured columns are decoded, so an answer that *is* JSON text stays text.
    """
    out = dict(record)
    for key in STRUCTURED_COLUMNS:
        value = out.get(key)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # left as text: validation reports the wrong type with the row number
        if isinstance(value, list):
            # Arrow stores a list of structs with every key any message had; drop the unset ones,
            # but keep role/content/from/value even when None so validation names what is missing.
            value = [{k: v for k, v in m.items() if v is not None or k in ("role", "content", "from", "value")}
                     if isinstance(m, dict) else m for m in value]
        if key in out:
            out[key] = value
    return out


# -- plain text -------------------------------------------------------------------------

TEXT_HEADER = re.compile(r"^###\s*([A-Za-z][\w -]*?)\s*:?\s*$")
TEXT_FORMAT = "### User, the question, ### Assistant, the answer (optionally ### System first)"


def parse_text_block(text: str, roles: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One `.txt` example -> {"messages": [...]} (roles as written; `apply_mapping` renames them).

    A block is a run of non-blank lines: `### System` (optional), then `### User` and
    `### Assistant` headers, each followed by its text. Headers are matched ignoring case;
    names in `roles` count as headers too. Other `###` lines are ordinary text.
    """
    headers = set(ROLES) | {str(k).lower() for k in (roles or {})}
    messages: list[dict[str, Any]] = []
    lines: list[str] = []
    for line in text.splitlines():
        match = TEXT_HEADER.match(line.strip())
        if match and match.group(1).lower() in headers:
            if messages:
                messages[-1]["content"] = "\n".join(lines)
            messages.append({"role": match.group(1).lower(), "content": ""})
            lines = []
        elif not messages:
            raise RecordError(MISSING_MESSAGES, f"text block does not start with a `### User` or `### System` "
                                                f"header; write each example as {TEXT_FORMAT}")
        else:
            lines.append(line)
    if not messages:
        raise RecordError(MISSING_MESSAGES, f"empty text block; write each example as {TEXT_FORMAT}")
    messages[-1]["content"] = "\n".join(lines)
    return {"messages": messages}


def _from_sharegpt(turns: Any) -> list[dict[str, Any]]:
    if not isinstance(turns, list):
        raise RecordError(DATA_TYPE, f"`conversations` must be a list, got {type(turns).__name__}")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError(MESSAGE_MISSING_KEY, f"conversations[{i}] needs `from` and `value`")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise RecordError(UNRECOGNIZED_ROLE, f"conversations[{i}] has unknown speaker {turn['from']!r} "
                                                 "(map it with `roles`, e.g. {\"bot\": \"assistant\"})")
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
            raise RecordError(UNRECOGNIZED_ROLE, f"messages[{i}] has role {role!r}; use one of {', '.join(ROLES)} "
                                                 "(or map it with `roles`)")
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

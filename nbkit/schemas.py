"""Stage 01's record schemas: turn one input record into canonical chat messages, or say exactly why it cannot be used.

Recognised schemas (first match wins):
    messages                    [{"role", "content"}, ...]        (OpenAI / TRL chat)
    conversations               [{"from", "value"}, ...]          (ShareGPT)
    instruction, input, output                                    (Alpaca)
    prompt, completion                                            (prompt-completion)

With Alpaca or prompt-completion records an optional `system` text becomes the system
message. Other column and role names are mapped first (`apply_mapping`); common two-column
layouts (question/answer, query/response, input/output, text/label, ...) and Dolly's
instruction/context/response are recognised without a mapping, ignoring case
(`recognise_layout`), so most spreadsheets need no conversion script.

OpenAI's chat fine-tuning format is read as documented: per-message `weight` (0: the
assistant message is context, not trained), `name`, a record-level `tools` list, assistant
`tool_calls` (their JSON `arguments` decoded) and `tool` messages. Canonical messages keep
those keys; everything else is {"role", "content"}.

Checks follow the chat-format checks users know from hosted fine-tuning services, so a
rejected row's category tells them what to fix.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

ROLES = ("system", "user", "assistant")
MESSAGE_ROLES = ROLES + ("tool",)  # tool results answer an assistant's tool_calls
# What a source column can be mapped to (CollectConfig.columns).
RECOGNISED_COLUMNS = ("messages", "conversations", "instruction", "input", "output", "prompt", "completion",
                      "system", "label")
STRUCTURED_COLUMNS = ("messages", "conversations")
# Turned into messages, so not copied into a row's meta.
SCHEMA_COLUMNS = ("instruction", "input", "output", "prompt", "completion")
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id"}
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


def record_tools(record: Any) -> list[dict[str, Any]] | None:
    """The record's OpenAI `tools` list, validated (None when it has none), or RecordError."""
    if not isinstance(record, dict) or record.get("tools") in (None, []):
        if isinstance(record, dict) and record.get("functions"):
            raise RecordError(BAD_TOOLS, "uses OpenAI's legacy `functions`; write them as `tools` "
                                         '([{"type": "function", "function": {...}}]) and calls as `tool_calls`')
        return None
    tools = record["tools"]
    if not isinstance(tools, list):
        raise RecordError(BAD_TOOLS, f"`tools` must be a list, got {type(tools).__name__}")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RecordError(BAD_TOOLS, f"tools[{i}] needs a `function` with a `name` "
                                         '(OpenAI\'s {"type": "function", "function": {"name": ..., "parameters": ...}})')
    return tools


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
    """`map_record` without the description of the layout it recognised."""
    return map_record(record, columns, roles, tabular=tabular)[0]


def map_record(record: Any, columns: Mapping[str, str] | None = None, roles: Mapping[str, str] | None = None,
               *, tabular: bool = False) -> tuple[Any, str | None]:
    """(record, layout): rename columns, recognise a common layout, decode table cells that hold JSON,
    then rename roles. `layout` describes a recognised layout ("question → user, answer → assistant").

    Runs before schema detection. A mapped column wins over an existing column with the
    target name. The input is never modified (in-memory sources belong to the caller).
    """
    if not isinstance(record, dict):
        return record, None
    if columns:
        record = _renamed(record, {k: v for k, v in columns.items() if k in record})
    record, layout = recognise_layout(record)
    if tabular:
        record = _decode_cells(record)
    if roles:
        record = dict(record)
        if isinstance(record.get("messages"), list):
            record["messages"] = [_rename(m, "role", roles) for m in record["messages"]]
        if isinstance(record.get("conversations"), list):
            record["conversations"] = [_rename(t, "from", roles) for t in record["conversations"]]
    return record, layout


# Two-column layouts that leave no doubt which side is the user's and which the assistant's, matched
# ignoring case: (user column, assistant column). Checked after the exactly named schemas above.
PAIRS = (
    ("question", "answer"), ("question", "response"), ("query", "response"), ("query", "answer"),
    ("prompt", "response"), ("prompt", "answer"), ("prompt", "output"), ("prompt", "completion"),
    ("instruction", "response"), ("instruction", "answer"),
    ("input", "output"), ("input", "response"), ("input", "target"), ("source", "target"), ("text", "label"),
    ("context", "response"), ("request", "response"), ("user", "assistant"), ("human", "assistant"),
    ("human", "gpt"),
)
SYSTEM_COLUMNS = ("system", "system_prompt", "system prompt")


def recognise_layout(record: Any) -> tuple[Any, str | None]:
    """(record, description): a record in a common layout renamed onto a recognised schema.

    The description says what was applied ("question → user, answer → assistant"); None when the
    record already uses a recognised schema or no layout fits (validation then names the keys).
    Two pairs that fit with different columns are not guessed between: RecordError names them.
    """
    if not isinstance(record, dict) or _has_schema(record):
        return record, None
    by_lower: dict[str, str] = {}
    for key in record:
        if isinstance(key, str):
            by_lower.setdefault(key.strip().lower(), key)
    for name in STRUCTURED_COLUMNS:  # "Messages", "CONVERSATIONS"
        if name in by_lower:
            return _renamed(record, {by_lower[name]: name}), f"{by_lower[name]} → {name}"
    mapping: dict[str, str] = {}
    if "instruction" in by_lower and "context" in by_lower and "response" in by_lower:  # Dolly
        mapping = {by_lower["instruction"]: "instruction", by_lower["context"]: "input",
                   by_lower["response"]: "output"}
        text = f"{by_lower['instruction']} + {by_lower['context']} → user, {by_lower['response']} → assistant"
    elif "instruction" in by_lower and "output" in by_lower:  # Alpaca in other capitals
        mapping = {by_lower["instruction"]: "instruction", by_lower["output"]: "output"}
        if "input" in by_lower:
            mapping[by_lower["input"]] = "input"
        user = " + ".join(k for k in (by_lower["instruction"], by_lower.get("input")) if k)
        text = f"{user} → user, {by_lower['output']} → assistant"
    else:
        fits = [(u, a) for u, a in PAIRS if u in by_lower and a in by_lower]
        if not fits:
            return record, None
        if len({u for u, _ in fits}) > 1 or len({a for _, a in fits}) > 1:
            pairs = "; ".join(f"{by_lower[u]}/{by_lower[a]}" for u, a in fits)
            raise RecordError(AMBIGUOUS_COLUMNS, f"more than one column pair could be the conversation ({pairs}); "
                                                 "say which with `columns`, e.g. "
                                                 f'{{"{by_lower[fits[0][0]]}": "prompt", '
                                                 f'"{by_lower[fits[0][1]]}": "completion"}}')
        user, assistant = fits[0]
        mapping = {by_lower[user]: "prompt", by_lower[assistant]: "completion"}
        text = f"{by_lower[user]} → user, {by_lower[assistant]} → assistant"
    system = next((by_lower[name] for name in SYSTEM_COLUMNS if name in by_lower), None)
    if system and system not in mapping:
        mapping[system] = "system"
        text = f"{system} → system, " + text
    renamed = _renamed(record, mapping)
    label = next((k for k, v in mapping.items() if v == "completion" and k.strip().lower() == "label"), None)
    if label:  # a classification file: the label is also what split stratifies on
        renamed["label"] = record[label]
    return renamed, text


def _has_schema(record: dict[str, Any]) -> bool:
    keys = set(record)
    return bool(set(STRUCTURED_COLUMNS) & keys) or {"instruction", "output"} <= keys or \
        {"prompt", "completion"} <= keys


def _renamed(record: dict[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in mapping}
    out.update({target: record[key] for key, target in mapping.items()})
    return out


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
            raise RecordError(UNRECOGNIZED_KEY, f"messages[{i}] has unrecognized key `{extra[0]}` "
                                                f"(allowed: {', '.join(sorted(MESSAGE_KEYS))})")
        role = message["role"]
        if role not in MESSAGE_ROLES:
            hint = " (OpenAI's legacy function messages: write them as `tool` messages)" if role == "function" else ""
            raise RecordError(UNRECOGNIZED_ROLE, f"messages[{i}] has role {role!r}; use one of "
                                                 f"{', '.join(MESSAGE_ROLES)} (or map it with `roles`){hint}")
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
                raise RecordError(BAD_TOOLS, f"messages[{i}] ({role}) has `tool_calls`; only assistant messages call tools")
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
                raise RecordError(BAD_TOOLS, f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON "
                                             f"({err.msg} at column {err.colno})") from None
        if not isinstance(arguments, dict):
            raise RecordError(BAD_TOOLS, f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON object")
        out.append({**({"id": str(call["id"])} if call.get("id") is not None else {}), "type": "function",
                    "function": {"name": function["name"], "arguments": arguments}})
    return out


def _check_order(messages: list[dict[str, Any]]) -> None:
    """After an optional system message: user, assistant, user, ...; an assistant's tool_calls are
    answered by one or more tool messages, and an assistant message follows them."""
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise RecordError(NO_ASSISTANT, "no assistant message: nothing to learn from this example")
    if "system" in roles[1:]:
        raise RecordError(BAD_ROLE_ORDER, f"system message at position {roles.index('system', 1)}; "
                                          "only the first message may be a system message")
    start = 1 if roles[0] == "system" else 0
    expected = ("user",)
    for position in range(start, len(messages)):
        role = roles[position]
        if role not in expected:
            wanted = " or ".join(repr(r) for r in expected)
            raise RecordError(BAD_ROLE_ORDER, f"messages[{position}] is {role!r} where {wanted} was expected "
                                              "(turns must alternate user, assistant, starting with user; tool "
                                              "messages answer an assistant's tool_calls)")
        if role == "user":
            expected = ("assistant",)
        elif role == "assistant":
            expected = ("tool",) if messages[position].get("tool_calls") else ("user",)
        else:  # tool
            expected = ("tool", "assistant")
    if expected == ("tool",):
        raise RecordError(BAD_ROLE_ORDER, f"messages[{len(messages) - 1}] calls a tool but no `tool` message "
                                          "answers it")

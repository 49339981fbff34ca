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
from collections.abc import Mapping
from typing import Any

from nbkit.core.messages import (
    AMBIGUOUS_COLUMNS,
    BAD_TOOLS,
    DATA_TYPE,
    MESSAGE_MISSING_KEY,
    MISSING_COLUMN,
    MISSING_MESSAGES,
    ROLES,
    UNRECOGNIZED_ROLE,
    RecordError,
    validate_messages,
)

# What a source column can be mapped to (CollectConfig.columns).
RECOGNISED_COLUMNS = (
    "messages",
    "conversations",
    "instruction",
    "input",
    "output",
    "prompt",
    "completion",
    "system",
    "label",
)
STRUCTURED_COLUMNS = ("messages", "conversations")
# Turned into messages, so not copied into a row's meta.
SCHEMA_COLUMNS = ("instruction", "input", "output", "prompt", "completion")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
    "bot": "assistant",
}

NOT_UTF8 = "not_utf8"


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
        messages = _with_system(
            record, [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
        )
    elif "prompt" in record and "completion" in record:
        messages = _with_system(
            record,
            [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}],
        )
    else:
        keys = ", ".join(map(str, record)) or "none"
        category = MISSING_COLUMN if tabular else MISSING_MESSAGES
        raise RecordError(
            category,
            f"no `messages` list (found keys: {keys}); expected messages, conversations, "
            "instruction/output or prompt/completion (map other names with `columns`)",
        )
    return validate_messages(messages)


def record_tools(record: Any) -> list[dict[str, Any]] | None:
    """The record's OpenAI `tools` list, validated (None when it has none), or RecordError."""
    if not isinstance(record, dict) or record.get("tools") in (None, []):
        if isinstance(record, dict) and record.get("functions"):
            raise RecordError(
                BAD_TOOLS,
                "uses OpenAI's legacy `functions`; write them as `tools` "
                '([{"type": "function", "function": {...}}]) and calls as `tool_calls`',
            )
        return None
    tools = record["tools"]
    if not isinstance(tools, list):
        raise RecordError(BAD_TOOLS, f"`tools` must be a list, got {type(tools).__name__}")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RecordError(
                BAD_TOOLS,
                f"tools[{i}] needs a `function` with a `name` "
                '(OpenAI\'s {"type": "function", "function": {"name": ..., "parameters": ...}})',
            )
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
    for name, value, allowed, what in (
        ("columns", columns, RECOGNISED_COLUMNS, "a recognised name"),
        ("roles", roles, ROLES, "a role"),
    ):
        if not isinstance(value, Mapping):
            problems.append((name, f"must be a dict like {_example(name)}, got {type(value).__name__}"))
            continue
        for key, target in value.items():
            if not isinstance(key, str) or not key:
                problems.append((name, f"has the key {key!r}; keys must be non-empty text"))
            elif target not in allowed:
                problems.append(
                    (name, f"maps {key!r} to {target!r}, which is not {what} (use one of {', '.join(allowed)})")
                )
    return problems


def _example(name: str) -> str:
    return '{"question": "prompt", "answer": "completion"}' if name == "columns" else '{"human": "user"}'


def apply_mapping(
    record: Any,
    columns: Mapping[str, str] | None = None,
    roles: Mapping[str, str] | None = None,
    *,
    tabular: bool = False,
) -> Any:
    """`map_record` without the description of the layout it recognised."""
    return map_record(record, columns, roles, tabular=tabular)[0]


def map_record(
    record: Any,
    columns: Mapping[str, str] | None = None,
    roles: Mapping[str, str] | None = None,
    *,
    tabular: bool = False,
) -> tuple[Any, str | None]:
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
    ("question", "answer"),
    ("question", "response"),
    ("query", "response"),
    ("query", "answer"),
    ("prompt", "response"),
    ("prompt", "answer"),
    ("prompt", "output"),
    ("prompt", "completion"),
    ("instruction", "response"),
    ("instruction", "answer"),
    ("input", "output"),
    ("input", "response"),
    ("input", "target"),
    ("source", "target"),
    ("text", "label"),
    ("context", "response"),
    ("request", "response"),
    ("user", "assistant"),
    ("human", "assistant"),
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
        mapping = {by_lower["instruction"]: "instruction", by_lower["context"]: "input", by_lower["response"]: "output"}
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
            raise RecordError(
                AMBIGUOUS_COLUMNS,
                f"more than one column pair could be the conversation ({pairs}); "
                "say which with `columns`, e.g. "
                f'{{"{by_lower[fits[0][0]]}": "prompt", '
                f'"{by_lower[fits[0][1]]}": "completion"}}',
            )
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
    return bool(set(STRUCTURED_COLUMNS) & keys) or {"instruction", "output"} <= keys or {"prompt", "completion"} <= keys


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
            value = [
                {k: v for k, v in m.items() if v is not None or k in ("role", "content", "from", "value")}
                if isinstance(m, dict)
                else m
                for m in value
            ]
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
            raise RecordError(
                MISSING_MESSAGES,
                f"text block does not start with a `### User` or `### System` "
                f"header; write each example as {TEXT_FORMAT}",
            )
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
            raise RecordError(
                UNRECOGNIZED_ROLE,
                f"conversations[{i}] has unknown speaker {turn['from']!r} "
                '(map it with `roles`, e.g. {"bot": "assistant"})',
            )
        out.append({"role": role, "content": turn["value"]})
    return out

"""The chat template applied to a row, its tokens, and the loss mask: what the model reads and what it learns.

By default only assistant turns (and their end-of-turn token, read off the template: nbkit.model.chat_templates) are
trained; system, user and tool text is context, not target, and so is an assistant turn with `"weight": 0` (the
OpenAI fine-tuning convention). The row's tool definitions reach the template (`apply_chat_template(tools=...)`);
`unrendered_tools` tells when a template leaves them out. Stage 02 (nbkit.data.formatting), training, evaluation and
the mask viewer all use this.
"""

from __future__ import annotations

import json
from typing import Any

from nbkit.core.errors import ChatTemplateError
from nbkit.model.chat_templates import end_of_turn

IGNORE_INDEX = -100  # label value that PyTorch's cross-entropy skips


def is_trained(message: dict[str, Any]) -> bool:
    """Whether the loss covers this message: assistant turns, except those marked `"weight": 0` (context)."""
    return message["role"] == "assistant" and message.get("weight", 1) != 0


def render(tokenizer, messages: list[dict[str, Any]], tools: list[dict] | None = None, **kwargs: Any) -> str:
    """The conversation as the model reads it: its chat template applied, with the row's tool definitions."""
    try:
        return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False, **kwargs)
    except Exception as error:  # templates raise on what they do not support (jinja's raise_exception, bad keys)
        raise ChatTemplateError(f"the chat template raised {type(error).__name__}: {error}") from error


def assistant_turns(
    tokenizer, messages: list[dict[str, Any]], tools: list[dict] | None = None
) -> list[tuple[int, int, int]]:
    """(message index, start, end): where each assistant turn lies in the rendered conversation, in characters.

    The span runs from the end of the prompt-with-generation-header to the end of the conversation-up-to-this-turn,
    so it holds whatever the template writes for the turn: the reply, its tool calls, its end-of-turn token.
    Some templates write a turn differently once more turns follow (Qwen3 leaves out the think block of answers
    before the last question); such a turn is found in the full text instead: its content, after the messages
    before it, through the next end of turn.
    """
    full = render(tokenizer, messages, tools)
    turns, cursor = [], 0
    for i, message in enumerate(messages):
        content = (message.get("content") or "").strip()
        if message["role"] == "assistant":
            prompt = render(tokenizer, messages[:i], tools, add_generation_prompt=True)
            upto = render(tokenizer, messages[: i + 1], tools).rstrip()
            if full.startswith(upto) and upto.startswith(prompt):
                turns.append((i, len(prompt), len(upto)))
            else:
                start = full.find(content, cursor) if content else -1
                eot = end_of_turn(tokenizer) or ""
                end = full.find(eot, start + len(content)) if start >= 0 and eot else -1
                if end < 0:
                    raise ChatTemplateError(
                        "the chat template writes an assistant turn differently when more "
                        "turns follow, and the turn could not be found in the full text"
                    )
                turns.append((i, start, end + len(eot)))
        found = full.find(content, cursor) if content else -1
        if found >= 0:
            cursor = found + len(content)
    return turns


def encode_chat(tokenizer, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> dict[str, list]:
    """tokenize_chat's untruncated output plus the character `offsets` of each token and the trained `spans`."""
    text = render(tokenizer, messages, tools)
    spans = [(s, e) for i, s, e in assistant_turns(tokenizer, messages, tools) if is_trained(messages[i])]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    # A token that straddles the start of an answer ("]{" in SentencePiece after Mistral's "[/INST]") is trained:
    # it is the first thing the answer must produce.
    labels = [
        token if any(a < e and b > s for s, e in spans) else IGNORE_INDEX
        for token, (a, b) in zip(encoded["input_ids"], offsets)
    ]
    return {"input_ids": list(encoded["input_ids"]), "labels": labels, "offsets": offsets, "spans": spans}


def tokenize_chat(
    tokenizer, messages: list[dict[str, Any]], max_seq_len: int | None = None, tools: list[dict] | None = None
) -> dict[str, list[int]]:
    """input_ids and labels for one conversation; labels are IGNORE_INDEX outside trained assistant turns.

    The assistant spans are found on the rendered text (see assistant_turns), then mapped to tokens through
    the offsets, which stays right whatever the tokenizer does at span boundaries. Turns with weight 0 and
    the tool definitions (`tools`, rendered by the template) are context.
    """
    encoded = encode_chat(tokenizer, messages, tools)
    input_ids, labels = encoded["input_ids"], encoded["labels"]
    if max_seq_len is not None:
        input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
    return {"input_ids": input_ids, "labels": labels}


def mask_segments(
    tokenizer,
    messages: list[dict[str, Any]],
    max_seq_len: int | None = None,
    encoded: dict[str, list[int]] | None = None,
    tools: list[dict] | None = None,
) -> list[tuple[str, bool]]:
    """The rendered conversation as runs of (text, trained) — what the loss-mask viewer draws.

    Pass `encoded` (tokenize_chat's output) when it is already at hand, to skip tokenizing again.
    """
    if encoded is None:
        encoded = tokenize_chat(tokenizer, messages, max_seq_len, tools=tools)
    segments: list[tuple[list[int], bool]] = []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        trained = label != IGNORE_INDEX
        if segments and segments[-1][1] == trained:
            segments[-1][0].append(token)
        else:
            segments.append(([token], trained))
    return [(tokenizer.decode(ids), trained) for ids, trained in segments]


def mask_problems(
    tokenizer,
    messages: list[dict[str, Any]],
    encoded: dict[str, list[int]] | None = None,
    tools: list[dict] | None = None,
) -> list[str]:
    """Checks that the mask trains what it should: every trained assistant turn (its reply, its tool calls and
    its end-of-turn token), and no context (system, user, tool or weight-0 assistant text).

    `encoded` is tokenize_chat's untruncated output for these messages, if already computed.
    """
    segments = mask_segments(tokenizer, messages, encoded=encoded, tools=tools)
    trained = "".join(text for text, on in segments if on)
    masked = "".join(text for text, on in segments if not on)
    # A reply that quotes the prompt ("Thanks" -> "Thanks for ...") contains it legitimately.
    replies = [m["content"] for m in messages if is_trained(m)]
    replies += [
        str(v)
        for m in messages
        if is_trained(m)
        for call in m.get("tool_calls") or []
        for v in argument_values(tool_call_parts(call)[1])
    ]
    problems = []
    for message in messages:
        content = (message.get("content") or "").strip()  # a tool-call turn may have no text
        if is_trained(message):
            if content not in trained:
                problems.append("an assistant turn is not trained")
            if any(tool_call_parts(call)[0] not in trained for call in message.get("tool_calls") or []):
                problems.append("an assistant tool call is not trained")
        elif content and content in trained and not any(content in r for r in replies):
            problems.append(
                "a weight-0 assistant turn is trained"
                if message["role"] == "assistant"
                else f"{message['role']} text is trained"
            )
    eot = end_of_turn(tokenizer)
    if eot and trained.count(eot) < sum(is_trained(m) for m in messages):
        problems.append(f"the end-of-turn token {eot} is not trained, so the model may never stop")
    if not masked and len(messages) > 1:
        problems.append("nothing is masked")
    return sorted(set(problems))


def answers_without_end_of_turn(tokenizer, encoded: dict[str, list]) -> int:
    """Trained assistant turns with no trained end-of-turn token (encode_chat's output): each teaches the model
    to run on past its answer."""
    eot = end_of_turn(tokenizer)
    if not eot:
        return 0
    missing = 0
    for start, end in encoded["spans"]:
        ids = [
            token
            for token, label, (a, b) in zip(encoded["input_ids"], encoded["labels"], encoded["offsets"])
            if a < end and b > start and label != IGNORE_INDEX
        ]
        missing += eot not in tokenizer.decode(ids)
    return missing


# -- tools --------------------------------------------------------------------------------


def uses_tools(row: dict[str, Any]) -> bool:
    """Whether a row carries tool definitions, tool calls or tool results."""
    return bool(row.get("tools")) or any(m.get("tool_calls") or m["role"] == "tool" for m in row["messages"])


def tool_call_parts(call: dict[str, Any]) -> tuple[str, Any]:
    """(function name, arguments) of an OpenAI tool call (`{"function": {...}}`, or the function itself)."""
    function = call.get("function", call)
    return str(function.get("name", "")), function.get("arguments", {})


def argument_values(arguments: Any) -> list[Any]:
    """Every key and leaf value of a tool call's arguments (a dict, or JSON text that decodes to one)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return [arguments]
    if isinstance(arguments, dict):
        return [v for key, value in arguments.items() for v in [str(key), *argument_values(value)]]
    if isinstance(arguments, list):
        return [v for value in arguments for v in argument_values(value)]
    return [arguments]


def _appears(value: Any, text: str) -> bool:
    """Whether a value shows in rendered text, written plainly or as JSON (`"a\\nb"`, `true`)."""
    if isinstance(value, str):
        forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    else:
        forms = {json.dumps(value), str(value)}
    return any(form in text for form in forms)


def unrendered_tools(tokenizer, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> list[str]:
    """What of a row's tools the chat template leaves out of the rendered text; empty when it renders it all.

    A tool definition must add its function name to the text (a template that ignores `tools` renders the
    same text with and without them); a tool call's name and arguments must appear in its assistant turn;
    a tool result must appear somewhere. Raises ChatTemplateError when the template raises.
    """
    text = render(tokenizer, messages, tools)
    missing = []
    if tools:
        bare = render(tokenizer, messages)
        for tool in tools:
            name = str(tool.get("function", tool).get("name", ""))
            if not name or text.count(name) <= bare.count(name):
                missing.append(f"the tool definition {name!r}")
    turns = {i: text[start:end] for i, start, end in assistant_turns(tokenizer, messages, tools)}
    for i, message in enumerate(messages):
        for call in message.get("tool_calls") or []:
            name, arguments = tool_call_parts(call)
            turn = turns.get(i, "")
            if not name or name not in turn or not all(_appears(v, turn) for v in argument_values(arguments)):
                missing.append(f"the tool call {name!r}")
        if message["role"] == "tool" and (message.get("content") or "").strip() not in text:
            missing.append(f"the tool result for {message.get('tool_call_id') or message.get('name') or 'a call'}")
    return list(dict.fromkeys(missing))

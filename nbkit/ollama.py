"""An Ollama Modelfile for an exported GGUF: FROM, a TEMPLATE that renders like the model's chat template,
its stop tokens and the system prompt the training data used.

Ollama renders prompts with Go's text/template over `.Messages` (each with `.Role` and `.Content`). The
model's own template is Jinja, and no general translation exists; but chat templates of the per-message kind
(ChatML, Llama 3, ...) are "a fixed text before the first message, the message, a fixed separator and role
header before each next one, and a generation header at the end". Those texts are read off the model's own
template by rendering a conversation whose contents are markers (`template_parts`), written into a Go template
of that shape, and checked: `render_parts` (the same shape in Python) must reproduce the chat template exactly
on fixed conversations, else no Modelfile is written (`OllamaError` says why). A test renders the written
TEMPLATE with Go's text/template itself.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.errors import OllamaError

MARKS = {"system": "\x01SYSTEM\x01", "user": "\x01USER-1\x01", "assistant": "\x01ASSISTANT-1\x01",
         "user2": "\x01USER-2\x01"}
# Conversations the translated template must render exactly as the chat template does.
CHECKS = (
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"},
     {"role": "user", "content": "Tell me a joke.\nA short one."}],
    [{"role": "system", "content": "You triage tickets."}, {"role": "user", "content": "Login fails"},
     {"role": "assistant", "content": "{\"team\": \"auth\"}"}, {"role": "user", "content": "Invoice wrong"}],
)


@dataclass(frozen=True)
class TemplateParts:
    """The fixed texts of a per-message chat template."""

    first: dict[str, str]  # before the first message, by its role (system or user)
    separator: str  # after every message (its end-of-turn) and before the next role header
    header: dict[str, str]  # role header before a message that is not the first
    generation: str  # what opens the assistant's answer, after the separator


def _render(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def template_parts(tokenizer) -> TemplateParts:
    """Read the fixed texts off the tokenizer's chat template; OllamaError when it is not per-message."""
    sys_, user, assistant, user2 = (MARKS[k] for k in ("system", "user", "assistant", "user2"))
    full = _render(tokenizer, [{"role": "system", "content": sys_}, {"role": "user", "content": user},
                               {"role": "assistant", "content": assistant}, {"role": "user", "content": user2}])
    no_system = _render(tokenizer, [{"role": "user", "content": user}])
    try:
        head, rest = full.split(sys_)
        to_user, rest = rest.split(user)
        to_assistant, rest = rest.split(assistant)
        to_user2, tail = rest.split(user2)
        head_user = no_system.split(user)[0]
    except ValueError:
        raise OllamaError("the chat template does not write each message's content once, in order") from None
    separator = _common_prefix([to_user, to_assistant, to_user2, tail])
    parts = TemplateParts(first={"system": head, "user": head_user}, separator=separator,
                          header={"user": to_user[len(separator):], "assistant": to_assistant[len(separator):]},
                          generation=tail[len(separator):])
    if to_user2 != separator + parts.header["user"]:
        raise OllamaError("the chat template writes a user turn differently after a system message and after an "
                          "assistant message")
    for messages in CHECKS:
        if render_parts(parts, messages) != _render(tokenizer, messages):
            raise OllamaError(f"the chat template renders {json.dumps(messages)[:80]}... in a way a per-message "
                              "TEMPLATE cannot reproduce")
    return parts


def _common_prefix(texts: list[str]) -> str:
    prefix = texts[0]
    for text in texts[1:]:
        while not text.startswith(prefix):
            prefix = prefix[:-1]
    return prefix


def render_parts(parts: TemplateParts, messages: list[dict[str, str]]) -> str:
    """The prompt the Go TEMPLATE of `go_template(parts)` renders for `messages` (same shape, in Python)."""
    out = []
    for i, message in enumerate(messages):
        if i == 0:
            out.append(parts.first.get(message["role"], parts.first["user"]))
        else:
            out.append(parts.separator + parts.header.get(message["role"], parts.header["user"]))
        out.append(message["content"])
    return "".join(out) + parts.separator + parts.generation


def _go(text: str) -> str:
    """A Go string literal (Go accepts UTF-8 and JSON's escapes for control characters)."""
    return json.dumps(text, ensure_ascii=False)


def go_template(parts: TemplateParts) -> str:
    """The TEMPLATE: one line of Go text/template actions, every fixed text as a quoted literal (so no
    whitespace of the template's own layout reaches the prompt)."""
    return ("{{- range $i, $m := .Messages }}"
            "{{- if eq $i 0 }}{{ if eq $m.Role \"system\" }}" + "{{ " + _go(parts.first["system"]) + " }}"
            "{{ else }}{{ " + _go(parts.first["user"]) + " }}{{ end }}"
            "{{- else }}{{ " + _go(parts.separator) + " }}"
            "{{- if eq $m.Role \"assistant\" }}{{ " + _go(parts.header["assistant"]) + " }}"
            "{{ else }}{{ " + _go(parts.header["user"]) + " }}{{ end }}{{ end }}"
            "{{- $m.Content }}{{ end }}"
            "{{ " + _go(parts.separator + parts.generation) + " }}")


def stop_tokens(tokenizer, model_dir: str | Path) -> list[str]:
    """The end-of-turn token and every other token the model's generation config stops at."""
    from transformers import GenerationConfig

    from nbkit.models import end_of_turn_ids

    found = (Path(model_dir) / "generation_config.json").is_file()
    config = GenerationConfig.from_pretrained(model_dir) if found else None
    return [tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(config, tokenizer)]


def data_system_prompt(rows: list[dict[str, Any]]) -> str | None:
    """The system prompt most training rows share (at least half of them), else None."""
    prompts = Counter(r["messages"][0]["content"] for r in rows if r["messages"][0]["role"] == "system")
    if not prompts:
        return None
    prompt, count = prompts.most_common(1)[0]
    return prompt if count * 2 >= len(rows) else None


def modelfile(gguf_name: str, parts: TemplateParts, stops: list[str], system: str | None) -> str:
    """The Modelfile text, for a GGUF file next to it."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go_template(parts)}"""']
    lines += [f"PARAMETER stop {_go(stop)}" for stop in stops]
    if system:
        if '"""' in system:
            raise OllamaError('the system prompt contains """, which a Modelfile cannot quote')
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def write_modelfile(out_dir: str | Path, gguf_name: str, tokenizer, model_dir: str | Path,
                    train_rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Write out_dir/Modelfile next to the GGUF; returns its path, the commands to run it, stops and system."""
    parts = template_parts(tokenizer)
    stops = stop_tokens(tokenizer, model_dir)
    system = data_system_prompt(train_rows)
    path = Path(out_dir) / "Modelfile"
    path.write_text(modelfile(gguf_name, parts, stops, system), encoding="utf-8")
    return {"path": str(path), "stop": stops, "system": system, "name": name,
            "commands": [f"cd {Path(out_dir).resolve()}", f"ollama create {name} -f Modelfile", f"ollama run {name}"]}

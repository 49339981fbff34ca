"""An Ollama Modelfile for an exported GGUF: FROM, a TEMPLATE that renders like the model's chat template,
its stop tokens and the system prompt the training data used.

Ollama renders prompts with Go's text/template over `.Messages` (each with `.Role` and `.Content`). The
model's own template is Jinja, and no general translation exists; but the chat templates of the families users
tune (ChatML with or without a default system prompt, Qwen3, Llama 3.x, Phi-3.5, Gemma 3, Mistral) are "a fixed
text before the first message, a fixed text between two messages that depends on their roles, and a fixed text
after the last one (its end of turn and the generation prompt)", with the system prompt in one of two places:
- where it stands, first (its own turn: ChatML, Llama 3, Phi; or the start of the first user turn: Gemma 3);
- inside the LAST user turn (Mistral Nemo: `[INST]{system}\\n\\n{user}[/INST]`).
Those texts are read off the model's own template by rendering conversations whose contents are markers
(`template_parts`), written into a Go template of that shape (`go_template`), and checked: `render_parts` (the
same shape in Python) must reproduce the chat template exactly on the conversations `CHECKS`, else no Modelfile
is written (`OllamaError` says why). A test renders the written TEMPLATE with Go's text/template itself.

What the TEMPLATE does not do, by design or because Go templates cannot:
- a leading BOS the chat template writes is left out when the tokenizer adds BOS itself (the GGUF then says
  add_bos_token and Ollama prepends it: written in the TEMPLATE too, the prompt would start with two);
- texts of the day are fixed at export: Llama 3.1+ writes "Today Date: <strftime_now>", read here once;
- contents are written as sent: Gemma and Llama trim them (`| trim`), which Go templates cannot; Qwen3 rewrites
  earlier answers that contain `</think>`; tool calls, images and empty contents are not covered;
- the checked conversations end with a user turn, as Ollama's prompts for a reply do.
`notes` (in write_modelfile's record) names the trimming, and a BOS the tokenizer adds that the template lacks.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.core.errors import OllamaError
from nbkit.core.files import write_text

MARKS = {
    "system": "\x01SYSTEM\x01",
    "user": "\x01USER-1\x01",
    "assistant": "\x01ASSISTANT-1\x01",
    "user2": "\x01USER-2\x01",
}
# Conversations the translated template must render exactly as the chat template does (roles alternate, as
# Gemma's and Mistral's templates require; each ends with a user turn, as a prompt for a reply does).
CHECKS = (
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Tell me a joke.\nA short one."},
    ],
    [
        {"role": "system", "content": "You triage tickets."},
        {"role": "user", "content": "Login fails"},
        {"role": "assistant", "content": '{"team": "auth"}'},
        {"role": "user", "content": "Invoice wrong"},
    ],
    [
        {"role": "system", "content": "You answer in lists.\nNo more than three items."},
        {"role": "user", "content": "Fruits?"},
        {"role": "assistant", "content": "- apple\n- pear"},
        {"role": "user", "content": "Colours?"},
        {"role": "assistant", "content": "- red\n\n- blue"},
        {"role": "user", "content": 'Quotes " and {{ braces }} and ünïcode'},
    ],
    [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "Two"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "Three\n\nand a line"},
    ],
)
OLLAMA_QUANTIZE = ("q4_K_M", "q4_K_S", "q8_0")  # what `ollama create --quantize` accepts (from F16/BF16/F32)


@dataclass(frozen=True)
class TemplateParts:
    """The fixed texts of a chat template of the shape this module translates."""

    first: dict[str, str]  # before the first message's content, by its role ("system" or "user")
    between: dict[str, str]  # between two contents, by "previous>next" role: system>user, user>assistant, ...
    end: str  # after the last (user) message: its end of turn and the generation prompt
    # (before, after) the system prompt when it goes inside the last user turn; None: it stays where it stands
    system_in_last: tuple[str, str] | None = None
    bos: str = ""  # the chat template's leading BOS, left out of the TEMPLATE: the runtime adds it


def _render(tokenizer, messages: list[dict[str, str]]) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # the template raises on this layout (e.g. Gemma 2 on a system message)
        raise OllamaError(f"the chat template refuses the conversation {json.dumps(messages)[:80]}...: {err}") from None


def _split(text: str, marks: list[str]) -> list[str]:
    """The texts before, between and after `marks`, each written once and in this order; else ValueError."""
    pieces = []
    for mark in marks:
        if text.count(mark) != 1:
            raise ValueError(mark)
        before, text = text.split(mark)
        pieces.append(before)
    return [*pieces, text]


def adds_bos(tokenizer) -> bool:
    """Whether tokenizing adds BOS by itself: what nbkit.export.gguf writes as the GGUF's add_bos_token."""
    return tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]


def template_parts(tokenizer) -> TemplateParts:
    """Read the fixed texts off the tokenizer's chat template, checked on CHECKS; OllamaError when it has
    another shape. Texts of the day (Llama 3.1+'s "Today Date") are read now: the TEMPLATE keeps the export's."""
    S, U, A, U2 = (MARKS[k] for k in ("system", "user", "assistant", "user2"))
    # Rendered once, at export: a date the template writes (Llama 3.1+'s strftime_now) becomes a fixed text.
    full = _render(
        tokenizer,
        [
            {"role": "system", "content": S},
            {"role": "user", "content": U},
            {"role": "assistant", "content": A},
            {"role": "user", "content": U2},
        ],
    )
    plain = _render(
        tokenizer,
        [{"role": "user", "content": U}, {"role": "assistant", "content": A}, {"role": "user", "content": U2}],
    )
    try:
        head_user, user_assistant, assistant_user, end = _split(plain, [U, A, U2])
        order = sorted((S, U, A, U2), key=full.find) if all(full.count(m) == 1 for m in (S, U, A, U2)) else None
        between = {"user>assistant": user_assistant, "assistant>user": assistant_user}
        if order == [S, U, A, U2]:  # first: its own turn, or the start of the first user turn (Gemma 3)
            head_system, between["system>user"] = _split(full, order)[:2]
            first, fold = {"system": head_system, "user": head_user}, None
        elif order == [U, A, S, U2]:  # inside the last user turn (Mistral): skipped where it stands
            to_system, fold = _split(full, order)[2:4]
            if not to_system.startswith(assistant_user):
                raise OllamaError(
                    "the chat template changes the last user turn's header when it carries the system prompt"
                )
            fold = (to_system[len(assistant_user) :], fold)
            first, between["system>user"] = {"system": head_user, "user": head_user}, ""
        else:
            raise OllamaError("the chat template writes the system prompt neither first nor inside the last user turn")
    except ValueError:
        raise OllamaError("the chat template does not write each message's content once") from None
    bos = tokenizer.bos_token or ""
    if bos and adds_bos(tokenizer) and all(text.startswith(bos) for text in first.values()):
        first = {role: text[len(bos) :] for role, text in first.items()}
    else:
        bos = ""
    parts = TemplateParts(first=first, between=between, end=end, system_in_last=fold, bos=bos)
    for messages in CHECKS:
        if parts.bos + render_parts(parts, messages) != _render(tokenizer, messages):
            raise OllamaError(
                f"the chat template renders {json.dumps(messages)[:80]}... in a way a TEMPLATE of "
                "fixed texts between messages cannot reproduce"
            )
    return parts


def render_parts(parts: TemplateParts, messages: list[dict[str, str]]) -> str:
    """The prompt the Go TEMPLATE of `go_template(parts)` renders for `messages` (same steps, in Python)."""
    folded = parts.system_in_last is not None
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    out, previous = [], ""
    for i, message in enumerate(messages):
        role = message["role"]
        if folded and role == "system":
            continue
        if not previous:
            out.append(parts.first["system" if role == "system" else "user"])
        elif previous == "system":
            out.append(parts.between["system>user"])
        else:
            out.append(parts.between["user>assistant" if role == "assistant" else "assistant>user"])
        if folded and role == "user" and i == len(messages) - 1 and system is not None:
            out.append(parts.system_in_last[0] + system + parts.system_in_last[1])
        out.append(message["content"])
        previous = role
    return "".join(out) + parts.end


def _go(text: str) -> str:
    """A Go string literal (Go accepts UTF-8 and JSON's escapes for control characters)."""
    return json.dumps(text, ensure_ascii=False)


def go_template(parts: TemplateParts) -> str:
    """The TEMPLATE: one line of Go text/template actions, every fixed text as a quoted literal (so no
    whitespace of the template's own layout reaches the prompt). `$prev` is the previous message's role."""

    def say(text: str) -> str:
        return "{{ " + _go(text) + " }}" if text else ""

    folded = parts.system_in_last is not None
    system = "(index $.Messages 0)"
    return (
        '{{- $prev := "" }}{{- range $i, $m := .Messages }}'
        + ('{{- if ne $m.Role "system" }}' if folded else "")
        + '{{- if eq $prev "" }}{{ if eq $m.Role "system" }}'
        + say(parts.first["system"])
        + "{{ else }}"
        + say(parts.first["user"])
        + "{{ end }}"
        + '{{- else if eq $prev "system" }}'
        + say(parts.between["system>user"])
        + '{{- else if eq $m.Role "assistant" }}'
        + say(parts.between["user>assistant"])
        + "{{- else }}"
        + say(parts.between["assistant>user"])
        + "{{ end }}"
        + (
            '{{- if and (eq $m.Role "user") (eq (len (slice $.Messages $i)) 1) (eq '
            + system
            + '.Role "system") }}'
            + say(parts.system_in_last[0])
            + "{{ "
            + system
            + ".Content }}"
            + say(parts.system_in_last[1])
            + "{{ end }}"
            if folded
            else ""
        )
        + "{{- $m.Content }}{{ $prev = $m.Role }}"
        + ("{{ end }}" if folded else "")
        + "{{- end }}"
        + say(parts.end)
    )


def notes(tokenizer) -> list[str]:
    """What the chat template does that the TEMPLATE does not, for contents unlike CHECKS'."""
    content = " " + MARKS["user"] + "\n"
    text = _render(tokenizer, [{"role": "user", "content": content}])
    found = []
    if content not in text:
        found.append(
            "the chat template trims each message's content and Go templates cannot: Ollama writes "
            "contents as sent, so send them without surrounding whitespace"
        )
    if adds_bos(tokenizer) and not text.startswith(tokenizer.bos_token):  # training renders add no BOS
        found.append(
            f"the tokenizer adds {tokenizer.bos_token} and the chat template writes none: Ollama starts "
            "every prompt with a BOS the model was not trained with"
        )
    return found


def stop_tokens(tokenizer, model_dir: str | Path) -> list[str]:
    """The end-of-turn token and every other token the model's generation config stops at."""
    from transformers import GenerationConfig

    from nbkit.model.generation import end_of_turn_ids

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


def write_modelfile(
    out_dir: str | Path,
    gguf_name: str,
    tokenizer,
    model_dir: str | Path,
    train_rows: list[dict[str, Any]],
    name: str,
    quantize: str | None = None,
) -> dict[str, Any]:
    """Write out_dir/Modelfile next to the GGUF; returns its path, the commands to run it, stops, system,
    quantize and notes. With `quantize` (e.g. "q4_K_M") the GGUF is F16 and `ollama create` quantizes it."""
    if quantize is not None and quantize.lower() not in {q.lower() for q in OLLAMA_QUANTIZE}:
        raise OllamaError(
            f"`quantize` must be one of {', '.join(OLLAMA_QUANTIZE)} (what `ollama create --quantize` "
            f"accepts), got {quantize!r}"
        )
    parts = template_parts(tokenizer)
    stops = stop_tokens(tokenizer, model_dir)
    system = data_system_prompt(train_rows)
    path = Path(out_dir) / "Modelfile"
    write_text(path, modelfile(gguf_name, parts, stops, system))
    create = (
        f"ollama create --quantize {quantize} {name} -f Modelfile" if quantize else f"ollama create {name} -f Modelfile"
    )
    return {
        "path": str(path),
        "stop": stops,
        "system": system,
        "name": name,
        "quantize": quantize,
        "notes": notes(tokenizer),
        "commands": [f"cd {Path(out_dir).resolve()}", create, f"ollama run {name}"],
    }

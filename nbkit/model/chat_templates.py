"""Chat templates per family: what closes an assistant turn, and a template for checkpoints that ship none.

End of turn. A model learns to stop by seeing, at the end of every trained answer, the text its chat template
closes an assistant turn with. That is not always the tokenizer's `eos_token`: Gemma closes turns with
`<end_of_turn>` (its EOS is `<eos>`), Phi-3.5 with `<|end|>` (EOS `<|endoftext|>`), and base Qwen or Llama
tokenizers call `<|endoftext|>` / `<|end_of_text|>` EOS while their templates close with `<|im_end|>` / `<|eot_id|>`.
So the end of turn is read off the template itself (`end_of_turn`): a conversation whose answer is a marker is
rendered with a next user turn and without one, and what both write right after the marker is the end of turn.
The loss mask, generation stops, runaway counts and the exports all use it.

Base models. A checkpoint with no chat template gets one (`template_for`): the family's own instruct template when
its vocabulary already has that family's turn tokens (Gemma 3, Qwen's ChatML, Llama 3), so nothing is added and the
tuned model speaks its family's format; else a plain-text template whose turns end with the tokenizer's EOS. Why not
add ChatML tokens (TRL's `clone_chat_template`): new tokens start as random embeddings that a LoRA adapter cannot
train without also training (and exporting) the whole embedding and output matrices; a text template needs no new
token, trains with any method and exports like the base.

Thinking. Qwen3's template writes an empty `<think>\\n\\n</think>\\n\\n` before every final answer unless
`enable_thinking` is false, when it puts that empty block in the generation prompt instead. `with_thinking` sets the
choice as the template's default, so training, evaluation and every export (the template travels with the merged
model and into the GGUF) render the same way.
"""

from __future__ import annotations

import re
from typing import Any

# Gemma 3 instruct's template (text turns): role "model", the system prompt folded into the first user turn.
GEMMA3 = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
# ChatML, as Qwen2.5's template writes it without tools (Qwen's default system prompt left out).
CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
# Llama 3's turn format (without the dated system header of 3.1+).
LLAMA3 = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)
# Any other vocabulary: plain text turns, each answer closed by the tokenizer's EOS.
PLAIN = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{%- else -%}{{ '### Assistant:\n' + message['content'] + eos_token + '\n\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Assistant:\n' }}{%- endif -%}"
)
# name -> (template, the turn tokens the vocabulary must already have)
FAMILY_TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gemma3": (GEMMA3, ("<start_of_turn>", "<end_of_turn>")),
    "chatml": (CHATML, ("<|im_start|>", "<|im_end|>")),
    "llama3": (LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
}
THINKING_SWITCH = "enable_thinking"
THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_MARK = "\x01ANSWER\x01"


def template_for(tokenizer) -> tuple[str, str]:
    """(name, template) for a tokenizer without a chat template: its family's, else the plain-text one."""
    vocab = tokenizer.get_vocab()
    for name, (template, tokens) in FAMILY_TEMPLATES.items():
        if all(token in vocab for token in tokens):
            return name, template
    return "plain", PLAIN


def with_thinking(template: str, thinking: bool) -> str:
    """The template with `enable_thinking` defaulting to `thinking` (an explicit render argument still wins)."""
    value = "true" if thinking else "false"
    return "{%- if enable_thinking is not defined %}{%- set enable_thinking = " + value + " %}{%- endif %}" + template


def has_thinking_switch(template: str | None) -> bool:
    return bool(template) and THINKING_SWITCH in template


def end_of_turn(tokenizer) -> str | None:
    """The text the chat template closes an assistant turn with (whitespace around it left out), or None when
    the template writes nothing after an answer. Read once per template and kept on the tokenizer."""
    cached = getattr(tokenizer, "_nbkit_end_of_turn", None)
    if cached and cached[0] == tokenizer.chat_template:
        return cached[1]
    value = _read_end_of_turn(tokenizer)
    tokenizer._nbkit_end_of_turn = (tokenizer.chat_template, value)
    return value


def _read_end_of_turn(tokenizer) -> str | None:
    def after(messages: list[dict[str, Any]]) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return text[text.index(_MARK) + len(_MARK) :]

    turn = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _MARK}]
    try:
        last, followed = after(turn), after([*turn, {"role": "user", "content": "More"}])
    except Exception:  # a template that refuses this conversation: nothing to read
        return None
    # Compared token by token, so a shared start of two different special tokens ("<|" of <|endoftext|> and
    # <|user|> after Phi's "<|end|>\n") is not taken for part of the end of turn.
    last_ids, followed_ids = (tokenizer.encode(t, add_special_tokens=False) for t in (last, followed))
    common = 0
    while common < min(len(last_ids), len(followed_ids)) and last_ids[common] == followed_ids[common]:
        common += 1
    return tokenizer.decode(last_ids[:common]).strip() or last.strip() or None


def end_of_turn_token_id(tokenizer) -> int | None:
    """The id of the end of turn when it is one token of the vocabulary (`<|im_end|>`, `<end_of_turn>`, ...)."""
    text = end_of_turn(tokenizer)
    if not text:
        return None
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def final_answer(text: str) -> str:
    """A generated answer without the think block a thinking model writes first (empty or not), stripped."""
    return THINK_BLOCK.sub("", text, count=1).strip()

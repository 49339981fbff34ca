"""The Modelfile's TEMPLATE renders a conversation exactly as the model's chat template does, checked with
Go's text/template itself (what Ollama renders with)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess

import pytest

from nbkit.ollama import (CHECKS, OllamaError, data_system_prompt, go_template, modelfile, render_parts,
                          stop_tokens, template_parts)

GO = shutil.which("go")

# Ollama hands the template its messages as .Messages (Role, Content); this program does the same.
RENDER_GO = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

func main() {
	text, _ := os.ReadFile(os.Args[1])
	var conversations [][]Message
	raw, _ := os.ReadFile(os.Args[2])
	if err := json.Unmarshal(raw, &conversations); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("t").Parse(string(text)))
	var out []string
	for _, messages := range conversations {
		var b []byte
		w := &writer{&b}
		if err := tmpl.Execute(w, map[string]any{"Messages": messages}); err != nil {
			panic(err)
		}
		out = append(out, string(b))
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

type writer struct{ b *[]byte }

func (w *writer) Write(p []byte) (int, error) { *w.b = append(*w.b, p...); return len(p), nil }
"""

# Llama 3's chat template, as its tokenizer_config.json carries it (shortened to the parts that render here).
LLAMA3 = ("{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
          "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
          "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- 'Cutting Knowledge Date: December 2023\\n\\n' }}"
          "{{- system_message }}{{- '<|eot_id|>' }}{%- for message in messages %}"
          "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}"
          "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
# Llama 2's: the system prompt goes inside the first user turn, which a per-message TEMPLATE cannot write.
LLAMA2 = ("{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'] + "
          "'\\n<</SYS>>\\n\\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
          "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}")


@pytest.fixture(scope="module")
def templated(tokenizer):
    """A copy of the embedded tokenizer with another chat template."""
    def make(template: str):
        copied = copy.deepcopy(tokenizer)
        copied.chat_template = template
        return copied
    return make


def go_render(tmp_path, template: str, conversations: list) -> list[str]:
    (tmp_path / "render.go").write_text(RENDER_GO)
    (tmp_path / "template.txt").write_text(template)
    (tmp_path / "conversations.json").write_text(json.dumps(conversations))
    env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path / "gopath"), "GO111MODULE": "off"}
    result = subprocess.run([GO, "run", str(tmp_path / "render.go"), str(tmp_path / "template.txt"),
                             str(tmp_path / "conversations.json")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(GO is None, reason="needs Go (Debian's golang-go; `make test` installs it as root)")
@pytest.mark.parametrize("which", ["embedded", "llama3"])
def test_the_go_template_renders_like_the_chat_template(tmp_path, tokenizer, templated, which):
    tok = tokenizer if which == "embedded" else templated(LLAMA3)
    parts = template_parts(tok)
    conversations = [list(c) for c in CHECKS] + [[{"role": "user", "content": 'Quotes " and {{ braces }} and ünïcode'}]]
    rendered = go_render(tmp_path, go_template(parts), conversations)
    expected = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    assert rendered == expected


def test_the_embedded_templates_parts_and_modelfile(tokenizer, tmp_path):
    parts = template_parts(tokenizer)
    assert parts.separator == "<|im_end|>\n<|im_start|>" and parts.generation == "assistant\n"
    assert "You are a helpful AI assistant named SmolLM" in parts.first["user"]  # the template's default system
    assert render_parts(parts, CHECKS[1]) == tokenizer.apply_chat_template(CHECKS[1], tokenize=False,
                                                                            add_generation_prompt=True)
    text = modelfile("run-q8_0.gguf", parts, ["<|im_end|>"], "You triage support tickets.")
    lines = text.splitlines()
    assert lines[0] == "FROM ./run-q8_0.gguf" and lines[1].startswith('TEMPLATE """{{- range $i, $m := .Messages }}')
    assert 'PARAMETER stop "<|im_end|>"' in lines and lines[-1] == 'SYSTEM """You triage support tickets."""'


def test_a_template_that_is_not_per_message_is_refused(templated):
    with pytest.raises(OllamaError, match="cannot reproduce|differently"):
        template_parts(templated(LLAMA2))


def test_stop_tokens_and_the_datas_system_prompt(tokenizer, tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    assert stop_tokens(tokenizer, tmp_path) == ["<|im_end|>", "<|endoftext|>"]
    rows = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": str(i)}]} for i in range(3)]
    rows.append({"messages": [{"role": "user", "content": "no system"}]})
    assert data_system_prompt(rows) == "S"
    assert data_system_prompt(rows[3:]) is None

"""The Modelfile's TEMPLATE renders a conversation exactly as the model's chat template does, checked with
Go's text/template itself (what Ollama renders with), for every family users tune."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess

import pytest

from nbkit.core.errors import OllamaError
from nbkit.export.ollama import (
    CHECKS,
    data_system_prompt,
    go_template,
    modelfile,
    render_parts,
    stop_tokens,
    template_parts,
    write_modelfile,
)

GO = shutil.which("go")
needs_go = pytest.mark.skipif(GO is None, reason="needs Go (Debian's golang-go; `make test` installs it as root)")

# Ollama hands the template its messages as .Messages (pointers to Role, Content, ...) and every system prompt,
# joined, as .System (template.Execute in ollama/ollama); parsed with missingkey=zero. This program does the same.
RENDER_GO = """package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

func main() {
	text, _ := os.ReadFile(os.Args[1])
	var conversations [][]*Message
	raw, _ := os.ReadFile(os.Args[2])
	if err := json.Unmarshal(raw, &conversations); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(string(text)))
	var out []string
	for _, messages := range conversations {
		var system []string
		for _, m := range messages {
			if m.Role == "system" {
				system = append(system, m.Content)
			}
		}
		var b bytes.Buffer
		data := map[string]any{"System": strings.Join(system, "\\n\\n"), "Messages": messages, "Response": ""}
		if err := tmpl.Execute(&b, data); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""

# Llama 3's chat template, as its tokenizer_config.json carries it (shortened to the parts that render here).
LLAMA3 = (
    "{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- 'Cutting Knowledge Date: December 2023\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Llama 2's: the system prompt inside the first user turn, answers closed by EOS.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + content + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content + ' ' + eos_token }}{% endif %}{% endfor %}"
)
# ChatGLM2's: numbered rounds, a text that changes from turn to turn, which no TEMPLATE of fixed texts writes.
ROUNDS = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[Round ' ~ (loop.index0 // 2 + 1) ~ ']\\n\\n问：' + message['content'] + '\\n\\n答：' }}"
    "{% else %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
)
# Gemma 2's refuses a system message.
NO_SYSTEM = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<start_of_turn>' + message['role'] + '\\n' + message['content'] + '<end_of_turn>\\n' }}{% endfor %}"
)
FAMILY_NAMES = ("qwen2.5", "qwen3", "llama3.2", "phi3.5", "mistral", "gemma3")


@pytest.fixture(scope="module")
def templated(tokenizer):
    """A copy of the embedded tokenizer with another chat template."""

    def make(template: str):
        copied = copy.deepcopy(tokenizer)
        copied.chat_template = template
        return copied

    return make


@pytest.fixture(scope="module")
def go_renderer(tmp_path_factory):
    """render(template, conversations) -> the prompts Go's text/template writes; the program built once."""
    if GO is None:
        pytest.skip("needs Go (Debian's golang-go; `make test` installs it as root)")
    folder = tmp_path_factory.mktemp("go")
    (folder / "render.go").write_text(RENDER_GO)
    env = {**os.environ, "GOCACHE": str(folder / "gocache"), "GOPATH": str(folder / "gopath"), "GO111MODULE": "off"}
    built = subprocess.run(
        [GO, "build", "-o", str(folder / "render"), str(folder / "render.go")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr

    def render(template: str, conversations: list) -> list[str]:
        (folder / "template.txt").write_text(template, encoding="utf-8")
        (folder / "conversations.json").write_text(json.dumps(conversations), encoding="utf-8")
        result = subprocess.run(
            [str(folder / "render"), str(folder / "template.txt"), str(folder / "conversations.json")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    return render


def _expected(tok, conversations: list) -> list[str]:
    return [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]


@needs_go
@pytest.mark.parametrize("family", ["embedded", *FAMILY_NAMES])
def test_the_modelfiles_template_renders_like_each_familys_chat_template(
    family, tokenizer, family_model, go_renderer, tmp_path
):
    from nbkit.model.loader import EMBEDDED_MODEL, load_tokenizer, resolve_model

    if family == "embedded":
        tok, model_dir, end_of_turn = tokenizer, resolve_model(EMBEDDED_MODEL), "<|im_end|>"
    else:
        import families

        model_dir = family_model(family)
        tok, end_of_turn = load_tokenizer(str(model_dir)), families.FAMILIES[family].end_of_turn
    record = write_modelfile(tmp_path, "run-q8_0.gguf", tok, model_dir, [], name="nbkit-run")
    text = (tmp_path / "Modelfile").read_text(encoding="utf-8")
    template = re.search(r'^TEMPLATE """(.*)"""$', text, re.M).group(1)
    conversations = [list(c) for c in CHECKS]
    rendered = go_renderer(template, conversations)
    # A leading BOS the chat template writes is left to the runtime when the tokenizer adds it (no double BOS).
    bos = template_parts(tok).bos
    assert bos in ("", tok.bos_token) and (not bos or tok("a")["input_ids"][0] == tok.bos_token_id)
    assert [bos + r for r in rendered] == _expected(tok, conversations)
    assert end_of_turn in record["stop"] and record["stop"][0] == end_of_turn
    assert f'PARAMETER stop "{end_of_turn}"' in text.splitlines()
    if family == "qwen3":  # thinking off by default: the generation prompt closes an empty think block
        assert rendered[0].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert "<think>" not in rendered[2].split("<|im_start|>assistant\n<think>")[0]  # not in earlier answers
    if family == "qwen2.5":  # no system message: Qwen's default one, written by the first user turn's header
        assert rendered[0].startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    if family in ("gemma3", "llama3.2"):  # they trim contents; Go templates cannot, and the record says so
        assert any("trims" in note for note in record["notes"])


@needs_go
@pytest.mark.parametrize("which", ["llama3", "llama2"])
def test_templates_written_here_render_alike_under_go(templated, go_renderer, which):
    tok = templated({"llama3": LLAMA3, "llama2": LLAMA2}[which])
    parts = template_parts(tok)
    assert parts.bos == ""  # the embedded tokenizer adds no BOS of its own
    conversations = [list(c) for c in CHECKS]
    assert go_renderer(go_template(parts), conversations) == _expected(tok, conversations)


def test_the_embedded_templates_parts_and_modelfile(tokenizer, tmp_path):
    parts = template_parts(tokenizer)
    assert parts.between["user>assistant"] == "<|im_end|>\n<|im_start|>assistant\n"
    assert parts.end == "<|im_end|>\n<|im_start|>assistant\n" and parts.system_in_last is None
    assert "You are a helpful AI assistant named SmolLM" in parts.first["user"]  # the template's default system
    assert render_parts(parts, CHECKS[1]) == tokenizer.apply_chat_template(
        CHECKS[1], tokenize=False, add_generation_prompt=True
    )
    text = modelfile("run-q8_0.gguf", parts, ["<|im_end|>"], "You triage support tickets.")
    lines = text.splitlines()
    assert lines[0] == "FROM ./run-q8_0.gguf" and lines[1].startswith('TEMPLATE """{{- $prev := "" }}')
    assert 'PARAMETER stop "<|im_end|>"' in lines and lines[-1] == 'SYSTEM """You triage support tickets."""'


def test_the_system_prompt_folded_into_the_last_user_turn(family_model):
    """Mistral Nemo writes `[INST]{system}\\n\\n{user}[/INST]` in the LAST user turn only."""
    from nbkit.model.loader import load_tokenizer

    tok = load_tokenizer(str(family_model("mistral")))
    parts = template_parts(tok)
    assert parts.system_in_last == ("", "\n\n") and parts.bos == "<s>"
    assert (
        render_parts(parts, CHECKS[3]) == '[INST]Login fails[/INST]{"team": "auth"}</s>[INST]You triage '
        "tickets.\n\nInvoice wrong[/INST]"
    )


def test_quantize_writes_ollamas_quantizing_command(tokenizer, tmp_path):
    from nbkit.model.loader import EMBEDDED_MODEL, resolve_model

    record = write_modelfile(
        tmp_path, "run-f16.gguf", tokenizer, resolve_model(EMBEDDED_MODEL), [], "nbkit-run", quantize="q4_K_M"
    )
    assert record["quantize"] == "q4_K_M"
    assert record["commands"][1:] == ["ollama create --quantize q4_K_M nbkit-run -f Modelfile", "ollama run nbkit-run"]
    assert (tmp_path / "Modelfile").read_text().startswith("FROM ./run-f16.gguf\n")
    plain = write_modelfile(tmp_path, "run-q8_0.gguf", tokenizer, resolve_model(EMBEDDED_MODEL), [], "nbkit-run")
    assert plain["quantize"] is None and plain["commands"][1] == "ollama create nbkit-run -f Modelfile"
    with pytest.raises(OllamaError, match="`quantize` must be one of"):
        write_modelfile(tmp_path, "run-f16.gguf", tokenizer, resolve_model(EMBEDDED_MODEL), [], "x", quantize="q2_K")


@pytest.mark.parametrize("template, reason", [(ROUNDS, "cannot reproduce"), (NO_SYSTEM, "System role not supported")])
def test_a_template_no_template_of_fixed_texts_writes_is_refused(templated, template, reason):
    with pytest.raises(OllamaError, match=reason):
        template_parts(templated(template))


def test_stop_tokens_and_the_datas_system_prompt(tokenizer, tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    assert stop_tokens(tokenizer, tmp_path) == ["<|im_end|>", "<|endoftext|>"]
    rows = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": str(i)}]} for i in range(3)]
    rows.append({"messages": [{"role": "user", "content": "no system"}]})
    assert data_system_prompt(rows) == "S"
    assert data_system_prompt(rows[3:]) is None

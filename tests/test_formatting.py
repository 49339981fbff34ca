"""Stage 02 formatting with the quality fixes: redaction, dropping near-duplicates, mask checks on every row."""

from __future__ import annotations

import copy
import json

import pytest

from nbkit.core.errors import ConfigError, DataError
from nbkit.core.files import read_jsonl, write_jsonl
from nbkit.core.workspace import Workspace
from nbkit.data.collect import CollectConfig, collect
from nbkit.data.formatting import FormatConfig, format_rows, redact_row
from nbkit.model.loader import EMBEDDED_MODEL
from nbkit.model.loss_mask import (
    IGNORE_INDEX,
    answers_without_end_of_turn,
    encode_chat,
    mask_problems,
    mask_segments,
    render,
    tokenize_chat,
    unrendered_tools,
)

SYSTEM = {"role": "system", "content": "Triage the ticket."}
TICKET = (
    "Hello, I ordered a pair of headphones three weeks ago and the tracking page still says the parcel is "
    "waiting at the depot. I need them for a trip next Friday, so could you check with the carrier and "
    "tell me when it will arrive? Thanks a lot, Maria"
)
OTHERS = [
    "My invoice for March shows the wrong amount and I was charged twice for the Pro plan, please refund one.",
    "The app crashes every time I open the export menu on my phone since the update yesterday.",
    "Can I change the email address on my account? I moved to a new company and lost the old inbox.",
    "Is there a student discount for the yearly plan? Just curious, no rush at all.",
]


def chat(user: str, answer: str = "ok") -> dict:
    return {"messages": [SYSTEM, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


@pytest.fixture
def messy_workspace(tmp_path):
    """Ten rows collected from a list: a reworded copy, an exact-after-normalizing copy, and personal data."""
    records = [
        chat(TICKET, "shipping"),
        chat(OTHERS[0] + " Reach me at maria.lopez@example.com or 415-555-2671.", "billing"),
        chat(TICKET.replace("Thanks a lot", "Thanks so much"), "shipping"),
        chat(OTHERS[1], "technical"),
        chat(TICKET.lower(), "shipping"),
        chat(OTHERS[2], "account"),
        chat(OTHERS[3] + " My card is 4111 1111 1111 1111.", "billing"),
        chat("Order #48213 from 2024-03-15 never came, it cost $49.99.", "shipping"),
        chat("Server 10.0.0.12 rejects token=Ab12Cd34Ef56Gh78Ij90 since Monday.", "technical"),
        chat("Where do I download my invoices for last year?", "billing"),
    ]
    collect(CollectConfig(workspace=str(tmp_path), sources=[records]))
    return tmp_path


@pytest.fixture
def shared_tokenizer(monkeypatch, tokenizer):
    """format_rows loads its tokenizer by name; hand it the session's copy to keep the tests fast."""
    monkeypatch.setattr("nbkit.data.formatting.load_tokenizer", lambda name, **_: tokenizer)
    return tokenizer


def test_new_fields_have_defaults_help_and_validation():
    config = FormatConfig()
    assert (config.redact_pii, config.drop_near_duplicates, config.near_duplicate_threshold) == (False, False, 0.8)
    helps = FormatConfig.help()
    assert helps["redact_pii"].startswith("Replace emails, phone numbers, card numbers, IPs and API keys")
    assert "near-duplicate cluster" in helps["drop_near_duplicates"]
    with pytest.raises(ConfigError, match="`near_duplicate_threshold` must be between 0.5 and 1.0, got 1.5"):
        FormatConfig(near_duplicate_threshold=1.5)
    with pytest.raises(ConfigError, match="`redact_pii` must be True or False"):
        FormatConfig(redact_pii="yes")
    changed = FormatConfig(redact_pii=True, near_duplicate_threshold=0.9)
    assert FormatConfig.from_dict(json.loads(changed.to_json())) == changed


def test_defaults_change_nothing_and_still_write_an_empty_dropped_file(messy_workspace, shared_tokenizer):
    ws = Workspace(messy_workspace)
    dropped_path = ws.formatted.parent / "dropped.jsonl"
    dropped_path.parent.mkdir(parents=True, exist_ok=True)
    dropped_path.write_text('{"stale": "from an earlier run"}\n')
    report = format_rows(FormatConfig(workspace=str(messy_workspace)))
    assert report["rows"] == report["clean_rows"] == 10
    assert report["dropped_near_duplicates"] == report["redacted_rows"] == 0
    assert dropped_path.read_text() == ""
    rows = read_jsonl(ws.formatted)
    assert "maria.lopez@example.com" in rows[1]["messages"][1]["content"]


def test_redaction_and_dropping_keep_the_accounting_honest(messy_workspace, shared_tokenizer):
    ws = Workspace(messy_workspace)
    clean = read_jsonl(ws.clean)
    report = format_rows(FormatConfig(workspace=str(messy_workspace), redact_pii=True, drop_near_duplicates=True))
    rows = read_jsonl(ws.formatted)
    dropped = read_jsonl(ws.formatted.parent / "dropped.jsonl")

    assert report["rows"] + report["dropped_near_duplicates"] == report["clean_rows"] == len(clean) == 10
    assert len(rows) == report["rows"] == 8 and len(dropped) == 2
    first = clean[0]["meta"]
    assert [d["position"] for d in dropped] == [clean[2]["meta"]["index"], clean[4]["meta"]["index"]]
    assert all(d["reason"] == f"near_duplicate of {first['source']} index {first['index']}" for d in dropped)
    assert all(d["source"] == "<list>" and d["messages"][1]["content"] for d in dropped)
    # every kept row and every dropped row is accounted for exactly once
    kept_positions = {r["meta"]["index"] for r in rows}
    assert kept_positions | {d["position"] for d in dropped} == {r["meta"]["index"] for r in clean}

    text = json.dumps(rows)
    for secret in (
        "maria.lopez@example.com",
        "415-555-2671",
        "4111 1111 1111 1111",
        "10.0.0.12",
        "Ab12Cd34Ef56Gh78Ij90",
    ):
        assert secret not in text
    assert "Reach me at [EMAIL] or [PHONE]." in rows[1]["messages"][1]["content"]
    assert "Order #48213 from 2024-03-15 never came, it cost $49.99." in text  # not personal data
    assert report["redacted_rows"] == 3
    saved = json.loads(ws.format_report.read_text())
    assert saved["redact_pii"] is True and saved["dropped_near_duplicates"] == 2


def test_mask_problems_are_counted_over_every_row(messy_workspace, tokenizer, monkeypatch):
    """A template that forgets the end-of-turn token for some replies: each such row is counted."""
    broken = copy.deepcopy(tokenizer)
    broken.chat_template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
        "{% if not (message['role'] == 'assistant' and message['content'] == 'technical') %}{{ '<|im_end|>' }}"
        "{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    monkeypatch.setattr("nbkit.data.formatting.load_tokenizer", lambda name, **_: broken)
    report = format_rows(FormatConfig(workspace=str(messy_workspace)))
    (problem,) = report["mask_problems"]
    assert "end-of-turn token" in problem
    assert report["mask_problems"][problem] == report["mask_problem_rows"] == 2  # the two "technical" rows
    assert report["first_mask_problem"]["index"] == 3 and report["first_mask_problem"]["problems"] == [problem]
    assert report["answers_without_end_of_turn"] == 2 and report["rows"] == 10  # counted, not dropped


def test_a_reply_that_quotes_the_prompt_is_not_a_mask_problem(tokenizer):
    messages = [{"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "Thanks to you too!"}]
    assert mask_problems(tokenizer, messages) == []
    encoded = tokenize_chat(tokenizer, messages)
    assert mask_problems(tokenizer, messages, encoded=encoded) == mask_problems(tokenizer, messages)


# -- weight 0, tools, rows with nothing to learn (issue 12) ------------------------------------------------------

# Qwen2.5-Instruct's chat template (tools in the system turn, tool calls as <tool_call> JSON, tool results as
# <tool_response> inside a user turn), written out here so the test needs no download.
QWEN25_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}"
    '{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}'
    '{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}'
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within '
    '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}'
    "{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}{{- \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}"
    "{%- endif %}{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_MESSAGES = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ],
    },
    {"role": "tool", "content": "18 degrees and sunny", "tool_call_id": "call_1"},
    {"role": "assistant", "content": "It is 18 degrees and sunny in Paris."},
]
WEIGHTED = [
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "Nope.", "weight": 0},
    {"role": "user", "content": "Please say hi."},
    {"role": "assistant", "content": "Hi there!", "weight": 1},
]


@pytest.fixture
def tool_tokenizer(tokenizer):
    """The embedded tokenizer with a chat template that renders tools and tool calls."""
    aware = copy.deepcopy(tokenizer)
    aware.chat_template = QWEN25_TEMPLATE
    return aware


def write_clean(root, rows: list[dict]) -> Workspace:
    """A workspace whose data/clean.jsonl holds these rows (as collect writes them), numbered by index."""
    ws = Workspace(root)
    ws.clean.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(ws.clean, [{**row, "meta": {"source": "<list>", "index": i}} for i, row in enumerate(rows)])
    return ws


def trained_and_masked(tokenizer, encoded) -> tuple[str, str]:
    ids = encoded["input_ids"]
    return (
        tokenizer.decode([t for t, label in zip(ids, encoded["labels"]) if label != IGNORE_INDEX]),
        tokenizer.decode([t for t, label in zip(ids, encoded["labels"]) if label == IGNORE_INDEX]),
    )


def test_a_weight_0_turn_is_context_and_the_weight_1_turn_is_trained_with_its_end_of_turn(tokenizer):
    encoded = tokenize_chat(tokenizer, WEIGHTED)
    trained, masked = trained_and_masked(tokenizer, encoded)
    assert trained == "Hi there!<|im_end|>"  # the weighted reply and its end-of-turn token, nothing else
    assert "Nope.<|im_end|>" in masked
    # every token of the weight-0 reply is -100
    text = render(tokenizer, WEIGHTED)
    start = text.index("Nope.")
    offsets = encode_chat(tokenizer, WEIGHTED)["offsets"]
    in_reply = [label for label, (a, _b) in zip(encoded["labels"], offsets) if start <= a < start + len("Nope.")]
    assert in_reply and all(label == IGNORE_INDEX for label in in_reply)
    # not a mask problem: the end-of-turn check counts trained turns only
    assert mask_problems(tokenizer, WEIGHTED) == []
    assert answers_without_end_of_turn(tokenizer, encode_chat(tokenizer, WEIGHTED)) == 0
    unweighted = [{k: v for k, v in m.items() if k != "weight"} for m in WEIGHTED]
    both = trained_and_masked(tokenizer, tokenize_chat(tokenizer, unweighted))[0]
    assert both == "Nope.<|im_end|>Hi there!<|im_end|>"


def test_the_mask_viewer_shows_a_weight_0_turn_as_context(tokenizer):
    from nbkit.widgets.format import mask_viewer

    segments = mask_segments(tokenizer, WEIGHTED)
    assert [text for text, on in segments if on] == ["Hi there!<|im_end|>"]
    assert any("Nope." in text for text, on in segments if not on)
    view = mask_viewer(tokenizer, [{"messages": WEIGHTED}], 512).view.value
    trained_spans = [part.split("</span>")[0] for part in view.split('class="nbkit-trained"')[1:]]
    assert len(trained_spans) == 1 and "Hi there!" in trained_spans[0] and "Nope." not in trained_spans[0]
    assert "Nope." in view


def test_a_tool_aware_template_renders_the_tools_and_trains_the_call_but_not_the_result(tool_tokenizer):
    assert unrendered_tools(tool_tokenizer, TOOL_MESSAGES, [WEATHER_TOOL]) == []
    encoded = tokenize_chat(tool_tokenizer, TOOL_MESSAGES, tools=[WEATHER_TOOL])
    trained, masked = trained_and_masked(tool_tokenizer, encoded)
    assert trained == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
        "It is 18 degrees and sunny in Paris.<|im_end|>"
    )
    assert "<tool_response>\n18 degrees and sunny\n</tool_response>" in masked  # the tool result is context
    assert '"description": "Current weather in a city."' in masked  # so are the tool definitions
    assert mask_problems(tool_tokenizer, TOOL_MESSAGES, tools=[WEATHER_TOOL]) == []
    # without the definitions the same row renders differently: tools reach the template
    assert tokenize_chat(tool_tokenizer, TOOL_MESSAGES)["input_ids"] != encoded["input_ids"]


def test_a_tool_aware_template_keeps_tool_rows_and_training_tokenizes_their_tools(
    tmp_path, tool_tokenizer, monkeypatch
):
    from nbkit.train.sft import tokenized_split
    from nbkit.widgets.format import mask_viewer

    monkeypatch.setattr("nbkit.data.formatting.load_tokenizer", lambda name, **_: tool_tokenizer)
    ws = write_clean(tmp_path, [{"messages": TOOL_MESSAGES, "tools": [WEATHER_TOOL]}, chat(OTHERS[0], "billing")])
    report = format_rows(FormatConfig(workspace=str(tmp_path)))
    assert report["rows"] == 2 and report["rejected_rows"] == {
        "tools_not_rendered": 0,
        "template_error": 0,
        "no_trained_tokens": 0,
    }
    assert report["mask_problems"] == {} and report["answers_without_end_of_turn"] == 0
    assert "<tools>" in report["example"] and "get_weather" in report["example"]
    rows = read_jsonl(ws.formatted)
    assert rows[0]["tools"] == [WEATHER_TOOL] and rows[0]["messages"][1]["tool_calls"][0]["id"] == "call_1"
    dataset = tokenized_split(rows, tool_tokenizer, 512)
    assert dataset[0] == tokenize_chat(tool_tokenizer, TOOL_MESSAGES, 512, tools=[WEATHER_TOOL])
    view = mask_viewer(tool_tokenizer, rows, 512).view.value  # the viewer shows the tools, as context
    assert "&lt;tools&gt;" in view.split('class="nbkit-trained"')[0] and "get_weather" in view


def test_tool_rows_the_embedded_template_cannot_render_are_dropped_with_the_reason(tmp_path, shared_tokenizer):
    # the embedded SmolLM2 template renders neither tool definitions nor tool calls
    assert unrendered_tools(shared_tokenizer, TOOL_MESSAGES, [WEATHER_TOOL]) == [
        "the tool definition 'get_weather'",
        "the tool call 'get_weather'",
    ]
    ws = write_clean(
        tmp_path,
        [
            chat(OTHERS[0], "billing"),
            {"messages": TOOL_MESSAGES, "tools": [WEATHER_TOOL]},
            chat(OTHERS[1], "technical"),
            {"messages": TOOL_MESSAGES[:2] + TOOL_MESSAGES[2:]},
        ],
    )
    report = format_rows(FormatConfig(workspace=str(tmp_path)))
    assert report["rows"] == 2 and report["rejected_rows"]["tools_not_rendered"] == 2
    assert report["rows"] + report["dropped_rows"] == report["clean_rows"] == 4
    assert [r["meta"]["index"] for r in read_jsonl(ws.formatted)] == [0, 2]
    first, second = read_jsonl(ws.dropped)
    assert set(first) == {"source", "position", "reason", "messages", "meta", "tools"}
    assert (first["source"], first["position"], first["tools"], first["messages"]) == (
        "<list>",
        1,
        [WEATHER_TOOL],
        TOOL_MESSAGES,
    )
    assert first["reason"] == (
        f"tools_not_rendered: the chat template of {EMBEDDED_MODEL} does not render the tool definition "
        "'get_weather', the tool call 'get_weather', so training would lose them; use a model whose chat template "
        "supports tools, or remove the tools from this row"
    )
    assert second["position"] == 3 and "tools" not in second  # tool calls without definitions: still lost
    assert "does not render the tool call 'get_weather'," in second["reason"]
    saved = json.loads(ws.format_report.read_text())
    assert saved["rejected_rows"] == report["rejected_rows"]


def test_a_template_that_raises_on_a_row_drops_it_instead_of_crashing(tmp_path, tokenizer, monkeypatch):
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = (
        "{% for message in messages %}{% if message['role'] == 'tool' %}"
        "{{ raise_exception('Tool messages are not supported') }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    monkeypatch.setattr("nbkit.data.formatting.load_tokenizer", lambda name, **_: strict)
    ws = write_clean(tmp_path, [{"messages": TOOL_MESSAGES}, chat(OTHERS[2], "account")])
    report = format_rows(FormatConfig(workspace=str(tmp_path)))
    assert report["rows"] == 1 and report["rejected_rows"]["tools_not_rendered"] == 1
    (dropped,) = read_jsonl(ws.dropped)
    assert dropped["reason"].startswith(f"tools_not_rendered: the chat template of {EMBEDDED_MODEL} cannot render")
    assert "Tool messages are not supported" in dropped["reason"]


def test_cut_answers_are_counted_and_rows_with_nothing_to_learn_are_dropped(tmp_path, shared_tokenizer):
    long_text = " ".join(OTHERS * 3)  # well over 64 tokens
    rows = [
        chat(OTHERS[3], "billing"),
        chat("Where is my parcel?", long_text),  # answer cut: counted, kept
        chat(long_text, "shipping"),  # answer after max_seq_len: nothing trained
        {
            "messages": [
                SYSTEM,
                {"role": "user", "content": OTHERS[2]},
                {"role": "assistant", "content": "account", "weight": 0},
            ]
        },  # all context
        chat(OTHERS[1], "technical"),
    ]
    ws = write_clean(tmp_path, rows)
    report = format_rows(FormatConfig(workspace=str(tmp_path), max_seq_len=64))
    assert [r["meta"]["index"] for r in read_jsonl(ws.formatted)] == [0, 1, 4]
    assert report["answers_cut_by_max_seq_len"] == 1 and report["answers_without_end_of_turn"] == 0
    assert report["rejected_rows"] == {"tools_not_rendered": 0, "template_error": 0, "no_trained_tokens": 2}
    assert report["rows"] + report["dropped_rows"] == report["clean_rows"] == 5
    cut, context = read_jsonl(ws.dropped)
    assert cut["position"] == 2 and cut["reason"].startswith("no_trained_tokens: the row is ")
    assert "starts after max_seq_len=64" in cut["reason"] and "raise max_seq_len" in cut["reason"]
    assert context["position"] == 3 and context["reason"] == (
        "no_trained_tokens: every assistant turn has weight 0, so the row is all context; give the replies the "
        "model should learn weight 1 (or no weight), or remove the row"
    )
    assert report["mask_problems"] == {}  # a weight-0 turn is not "not trained"


def test_a_set_with_no_trained_token_at_all_refuses_to_format(tmp_path, shared_tokenizer):
    rows = [
        {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok", "weight": 0}]}
        for text in OTHERS
    ]
    ws = write_clean(tmp_path, rows)
    with pytest.raises(DataError, match=r"no row of .*clean\.jsonl is left to train on") as info:
        format_rows(FormatConfig(workspace=str(tmp_path)))
    message = str(info.value)
    assert "4 no_trained_tokens" in message and "every assistant turn has weight 0" in message
    assert "the loss would be 0" in message and "dropped.jsonl" in message
    assert len(read_jsonl(ws.dropped)) == 4 and read_jsonl(ws.formatted) == []  # no stale rows for 03


def test_training_refuses_a_split_with_no_trained_token_before_loading_a_model(tmp_path, tokenizer, monkeypatch):
    from nbkit.core.train_config import TrainConfig
    from nbkit.train.sft import build_trainer, tokenized_split

    weighted_out = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "weight": 0}]}
    ]
    with pytest.raises(DataError, match=r"nothing to learn: none of the 1 rows .* max_seq_len=512"):
        tokenized_split(weighted_out, tokenizer, 512)
    plain = [chat(OTHERS[0], "billing")]
    with pytest.raises(DataError, match="raise max_seq_len"):
        tokenized_split(plain, tokenizer, 8)  # the prompt alone fills 8 tokens
    assert any(label != IGNORE_INDEX for label in tokenized_split(plain, tokenizer, 512)[0]["labels"])

    ws = Workspace(tmp_path)
    ws.splits.mkdir(parents=True)
    write_jsonl(ws.split("train"), weighted_out)
    write_jsonl(ws.split("validation"), [])
    ws.manifest.write_text("{}")
    monkeypatch.setattr("nbkit.train.sft.formatted_tokenizer", lambda config: tokenizer)
    monkeypatch.setattr("nbkit.train.sft.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(DataError, match="nothing to learn"):
        build_trainer(TrainConfig(workspace=str(tmp_path)), tmp_path / "run")


def test_redaction_reaches_tool_call_arguments():
    message = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "c",
                "type": "function",
                "function": {
                    "name": "send_mail",
                    "arguments": {"to": "maria.lopez@example.com", "cc": ["x@example.org"]},
                },
            }
        ],
    }
    (call,) = redact_row({"messages": [message]})["messages"][0]["tool_calls"]
    assert call["function"]["arguments"] == {"to": "[EMAIL]", "cc": ["[EMAIL]"]}
    assert message["tool_calls"][0]["function"]["arguments"]["to"] == "maria.lopez@example.com"  # input untouched

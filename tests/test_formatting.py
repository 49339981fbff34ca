"""Stage 02 formatting with the quality fixes: redaction, dropping near-duplicates, mask checks on every row."""

from __future__ import annotations

import copy
import json

import pytest

from nbkit.collect import CollectConfig, collect
from nbkit.errors import ConfigError
from nbkit.formatting import FormatConfig, format_rows, mask_problems, tokenize_chat
from nbkit.workspace import Workspace, read_jsonl

SYSTEM = {"role": "system", "content": "Triage the ticket."}
TICKET = ("Hello, I ordered a pair of headphones three weeks ago and the tracking page still says the parcel is "
          "waiting at the depot. I need them for a trip next Friday, so could you check with the carrier and "
          "tell me when it will arrive? Thanks a lot, Maria")
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
    records = [chat(TICKET, "shipping"),
               chat(OTHERS[0] + " Reach me at maria.lopez@example.com or 415-555-2671.", "billing"),
               chat(TICKET.replace("Thanks a lot", "Thanks so much"), "shipping"),
               chat(OTHERS[1], "technical"),
               chat(TICKET.lower(), "shipping"),
               chat(OTHERS[2], "account"),
               chat(OTHERS[3] + " My card is 4111 1111 1111 1111.", "billing"),
               chat("Order #48213 from 2024-03-15 never came, it cost $49.99.", "shipping"),
               chat("Server 10.0.0.12 rejects token=Ab12Cd34Ef56Gh78Ij90 since Monday.", "technical"),
               chat("Where do I download my invoices for last year?", "billing")]
    collect(CollectConfig(workspace=str(tmp_path), sources=[records]))
    return tmp_path


@pytest.fixture
def shared_tokenizer(monkeypatch, tokenizer):
    """format_rows loads its tokenizer by name; hand it the session's copy to keep the tests fast."""
    monkeypatch.setattr("nbkit.formatting.load_tokenizer", lambda name: tokenizer)
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
    for secret in ("maria.lopez@example.com", "415-555-2671", "4111 1111 1111 1111", "10.0.0.12",
                   "Ab12Cd34Ef56Gh78Ij90"):
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
        "{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    monkeypatch.setattr("nbkit.formatting.load_tokenizer", lambda name: broken)
    report = format_rows(FormatConfig(workspace=str(messy_workspace)))
    (problem,) = report["mask_problems"]
    assert "end-of-turn token" in problem
    assert report["mask_problems"][problem] == report["mask_problem_rows"] == 2  # the two "technical" rows
    assert report["first_mask_problem"]["index"] == 3 and report["first_mask_problem"]["problems"] == [problem]


def test_a_reply_that_quotes_the_prompt_is_not_a_mask_problem(tokenizer):
    messages = [{"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "Thanks to you too!"}]
    assert mask_problems(tokenizer, messages) == []
    encoded = tokenize_chat(tokenizer, messages)
    assert mask_problems(tokenizer, messages, encoded=encoded) == mask_problems(tokenizer, messages)

"""Files in the shapes people have: spreadsheet exports, common column names, OpenAI's fine-tuning JSONL.

tests/fixtures/user_files/ holds one of each (written as Excel and OpenAI's documentation write them);
every valid row must be kept, every bad one rejected at its position, one unreadable file reported
without stopping the others.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nbkit.core import schemas
from nbkit.core.errors import DataError
from nbkit.core.files import read_jsonl
from nbkit.core.messages import RecordError, validate_messages
from nbkit.core.workspace import Workspace
from nbkit.data.collect import CollectConfig, collect, describe_report

USER_FILES = Path(__file__).parent / "fixtures" / "user_files"


def run(tmp_path: Path, sources: list, **config) -> tuple[dict, list[dict], list[dict]]:
    ws = Workspace(tmp_path / "ws")
    report = collect(CollectConfig(workspace=str(ws.root), sources=[str(s) for s in sources], **config))
    return report, read_jsonl(ws.clean), read_jsonl(ws.rejected)


def conversation(row: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in row["messages"]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The whole fixture folder collected once: (report, clean rows by source name, rejected)."""
    tmp = tmp_path_factory.mktemp("user_files")
    report, clean, rejected = run(tmp, [USER_FILES])
    by_file: dict[str, list[dict]] = {}
    for row in clean:
        by_file.setdefault(Path(row["meta"]["source"]).name, []).append(row)
    return report, by_file, rejected


def test_every_valid_row_of_the_folder_is_kept(folder):
    report, by_file, rejected = folder
    assert report["read"] == report["kept"] + report["rejected"]
    assert {name: len(rows) for name, rows in by_file.items()} == {
        "faq.csv": 3,
        "export_semicolon.csv": 2,
        "unicode_text.txt": 2,
        "tickets.tsv": 3,
        "dolly.jsonl": 2,
        "openai_chat.jsonl": 3,
        "faq.xlsx": 2,
    }
    assert sorted((Path(r["source"]).name, r.get("row", r.get("line")), r["category"]) for r in rejected) == [
        ("faq.csv", 3, "missing_content"),  # the answer cell is empty
        ("openai_chat.jsonl", 4, "bad_weight"),
    ]  # weight 0.5


def test_a_file_that_cannot_be_read_is_reported_and_the_others_collected(folder):
    report, _, _ = folder
    [broken] = report["unreadable"]
    assert Path(broken["source"]).name == "broken.json"
    assert "invalid JSON at line 1, column 44" in broken["reason"] and ".jsonl" in broken["fix"]
    assert report["sources"][broken["source"]] == {
        "read": 0,
        "kept": 0,
        "rejected": 0,
        "error": broken["reason"],
        "fix": broken["fix"],
    }
    assert "broken.json: NOT READ — invalid JSON" in describe_report(report)


def test_excel_csv_keeps_quotes_commas_and_line_breaks(folder):
    _, by_file, _ = folder
    rows = by_file["faq.csv"]  # UTF-8 with BOM, CRLF, quoted cells
    assert [r["meta"]["row"] for r in rows] == [1, 2, 4]
    assert conversation(rows[0]) == [
        ("user", "How do I reset my password?"),
        ("assistant", 'Use "Forgot password" on the sign-in page, then follow the e-mail.'),
    ]
    assert rows[1]["messages"][1]["content"] == "Yes. Go to Settings > Billing.\nChanges apply from the next invoice."
    assert rows[0]["meta"]["layout"] == "Question → user, Answer → assistant"


def test_semicolon_and_utf16_tab_exports(folder):
    report, by_file, _ = folder
    semicolon = by_file["export_semicolon.csv"]
    assert conversation(semicolon[0]) == [
        ("user", "Wie kündige ich mein Abo?"),
        ("assistant", "Unter Konto > Abo > Kündigen; die Kündigung gilt zum Monatsende."),
    ]
    unicode_text = by_file["unicode_text.txt"]  # Excel's "Unicode text": UTF-16 LE, tabs, CRLF
    assert [r["meta"]["row"] for r in unicode_text] == [1, 2]
    assert conversation(unicode_text[0]) == [
        ("user", "Where is my order 4411?"),
        ("assistant", "It left our warehouse yesterday; tracking is in your e-mail."),
    ]
    source = next(s for s in report["sources"] if s.endswith("unicode_text.txt"))
    assert report["sources"][source]["layout"] == "Query → user, Response → assistant"


def test_classification_and_dolly_layouts(folder):
    _, by_file, _ = folder
    tickets = by_file["tickets.tsv"]
    assert [(r["messages"][1]["content"], r["meta"]["label"]) for r in tickets] == [
        ("bug", "bug"),
        ("feature", "feature"),
        ("billing", "billing"),
    ]  # label kept in meta for the split
    dolly = by_file["dolly.jsonl"]
    assert dolly[0]["messages"][0]["content"].startswith("Summarise the refund policy in one sentence.\n\nRefunds")
    assert dolly[1]["messages"][0]["content"] == "Name the capital of Kenya."  # an empty context adds nothing
    assert dolly[0]["meta"]["category"] == "summarization"
    assert dolly[0]["meta"]["layout"] == "instruction + context → user, response → assistant"


def test_xlsx_first_sheet_by_default_and_a_named_sheet(folder, tmp_path):
    _, by_file, _ = folder
    assert conversation(by_file["faq.xlsx"][0]) == [
        ("user", "How many seats does the team plan include?"),
        ("assistant", "10"),
    ]  # a number cell reads as its text
    report, clean, _ = run(tmp_path, [USER_FILES / "faq.xlsx"], sheet="Archive")
    assert [conversation(r) for r in clean] == [
        [("user", "Do you offer phone support?"), ("assistant", "Yes, on weekdays from 9 to 17.")]
    ]
    assert clean[0]["meta"]["row"] == 1
    with pytest.raises(DataError, match="has no sheet 'Nope' \\(sheets: FAQ, Archive\\)"):
        run(tmp_path / "other", [USER_FILES / "faq.xlsx"], sheet="Nope")


def test_openai_weight_name_and_tools_as_documented(folder):
    _, by_file, _ = folder
    marv, named, weather = by_file["openai_chat.jsonl"]
    assert [m.get("weight") for m in marv["messages"]] == [None, None, 0, None, 1]
    assert named["messages"][0] == {"role": "user", "content": "Who wrote 'Romeo and Juliet'?", "name": "ada"}
    assert weather["tools"][0]["function"]["name"] == "get_current_weather"
    call = weather["messages"][1]
    assert call["content"] == "" and call["tool_calls"] == [
        {
            "id": "call_id",
            "type": "function",
            "function": {
                "name": "get_current_weather",
                "arguments": {"location": "San Francisco, USA", "format": "celsius"},
            },
        }
    ]
    assert weather["messages"][2] == {"role": "tool", "content": '{"temperature": 14}', "tool_call_id": "call_id"}


def test_common_pairs_are_recognised_ignoring_case():
    cases = {
        ("Question", "Answer"): "Question → user, Answer → assistant",
        ("query", "response"): "query → user, response → assistant",
        ("PROMPT", "Response"): "PROMPT → user, Response → assistant",
        ("input", "output"): "input → user, output → assistant",
        ("instruction", "response"): "instruction → user, response → assistant",
        ("text", "label"): "text → user, label → assistant",
        ("source", "target"): "source → user, target → assistant",
        ("context", "response"): "context → user, response → assistant",
        ("Instruction", "Output"): "Instruction → user, Output → assistant",
    }
    for (user, assistant), layout in cases.items():
        record, described = schemas.map_record({user: "the question", assistant: "the answer", "id": 7})
        assert described == layout
        assert schemas.to_messages(record) == [
            {"role": "user", "content": "the question"},
            {"role": "assistant", "content": "the answer"},
        ], (user, assistant)
    record, described = schemas.map_record({"System Prompt": "Be brief.", "Question": "q", "Answer": "a"})
    assert described == "System Prompt → system, Question → user, Answer → assistant"
    assert schemas.to_messages(record)[0] == {"role": "system", "content": "Be brief."}
    # Already a recognised schema: nothing renamed, nothing described.
    assert schemas.map_record({"prompt": "p", "completion": "c", "answer": "x"})[1] is None


def test_an_explicit_mapping_wins_over_recognition(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_text("question,answer,notes\nWhat?,This.,ignored\n", encoding="utf-8")
    _, clean, _ = run(tmp_path, [path], columns={"question": "prompt", "notes": "completion"})
    assert conversation(clean[0]) == [("user", "What?"), ("assistant", "ignored")]
    assert "layout" not in clean[0]["meta"]


def test_two_possible_pairs_are_not_guessed_between(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_text("question,answer,response\nWhat?,This.,That.\nWho?,Me.,You.\n", encoding="utf-8")
    report, clean, rejected = run(tmp_path, [path])
    assert clean == [] and [r["row"] for r in rejected] == [1, 2]
    problem = report["sources"][str(path)]["problem"]
    assert problem["category"] == "ambiguous_columns" and problem["columns"] == ["question", "answer", "response"]
    assert "question/answer; question/response" in problem["message"]


def test_one_word_for_a_file_whose_delimiter_hides_its_columns(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text('"prompt;completion"\n"Hi;Hello"\n', encoding="utf-8")  # quoted whole: one column
    report, _, rejected = run(tmp_path, [path])
    assert [r["row"] for r in rejected] == [1]
    problem = report["sources"][str(path)]["problem"]
    assert problem["columns"] == ["prompt;completion"] and "reads as one column" in problem["fix"]


def test_a_row_with_more_cells_than_the_header_is_rejected_at_its_row(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_text("question,answer\nWhat?,This.\nHow?,Like this, and that.\nWhy?,Because.\n", encoding="utf-8")
    report, clean, rejected = run(tmp_path, [path])
    assert [r["meta"]["row"] for r in clean] == [1, 3]
    [row] = rejected
    assert (row["row"], row["category"]) == (2, "wrong_cell_count")
    assert "3 cells where the header has 2 (a comma inside a cell" in row["message"]


def test_utf16_jsonl_and_a_non_utf8_csv(tmp_path):
    good = tmp_path / "notepad.jsonl"
    good.write_bytes(
        "\ufeff".encode("utf-16-le")
        + (json.dumps({"question": "Tschüss?", "answer": "Ciao."}) + "\r\n").encode("utf-16-le")
    )
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("question,answer\nCafé?,Oui.\n".encode("cp1252"))
    report, clean, _ = run(tmp_path, [good, latin])
    assert conversation(clean[0]) == [("user", "Tschüss?"), ("assistant", "Ciao.")]
    [unreadable] = report["unreadable"]
    assert unreadable["source"] == str(latin) and "not valid UTF-8 at byte 19 (line 2)" in unreadable["reason"]
    assert "CSV UTF-8" in unreadable["fix"]


def test_every_file_unreadable_stops_with_all_of_them_named(tmp_path):
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match="no file could be read: .*a.json: invalid JSON.*b.json: invalid JSON"):
        run(tmp_path, [tmp_path / "a.json", tmp_path / "b.json"])


def test_a_corrupt_xlsx_is_reported_not_raised(tmp_path):
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(b"PK\x03\x04 not really a workbook")
    shutil.copy(USER_FILES / "tickets.tsv", tmp_path / "tickets.tsv")
    report, clean, _ = run(tmp_path, [bad, tmp_path / "tickets.tsv"])
    assert len(clean) == 3
    assert report["unreadable"][0]["source"] == str(bad) and "cannot be read" in report["unreadable"][0]["reason"]


@pytest.mark.parametrize(
    "messages, category",
    [
        (
            [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "content": "1"},
                {"role": "tool", "content": "2"},
                {"role": "assistant", "content": "done"},
            ],
            None,
        ),  # two tool results for parallel calls
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}], None),
        (
            [{"role": "user", "content": "q"}, {"role": "tool", "content": "1"}, {"role": "assistant", "content": "a"}],
            "bad_role_order",
        ),  # a tool result nobody asked for
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": True}], "bad_weight"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "tool_calls": "f()"}], "bad_tools"),
        (
            [
                {"role": "user", "content": "q", "tool_calls": [{"function": {"name": "f"}}]},
                {"role": "assistant", "content": "a"},
            ],
            "bad_tools",
        ),
        ([{"role": "user", "content": "q"}, {"role": "function", "name": "f", "content": "1"}], "unrecognized_role"),
    ],
)
def test_openai_message_rules(messages, category):
    if category is None:
        assert validate_messages(messages)
        return
    with pytest.raises(RecordError) as info:
        validate_messages(messages)
    assert info.value.category == category


def test_a_table_that_breaks_part_way_keeps_the_rows_before_and_their_counts(tmp_path):
    path = tmp_path / "faq.csv"
    huge = "x" * 200_000  # over csv's field size limit (131,072 characters): the reader stops there
    path.write_text(f"question,answer\nWhat?,This.\nHuge?,{huge}\nAfter?,Lost.\n", encoding="utf-8")
    report, clean, _ = run(tmp_path, [path])
    assert [conversation(r) for r in clean] == [[("user", "What?"), ("assistant", "This.")]]
    entry = report["sources"][str(path)]
    assert (entry["read"], entry["kept"]) == (1, 1) and "not a readable table after line 2" in entry["error"]
    assert f"{path}: NOT READ after 1 records" in describe_report(report)

"""Stage 01 collect: every record read lands in clean.jsonl or rejected.jsonl, with its position."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from nbkit.core.errors import DataError
from nbkit.core.files import read_json, read_jsonl
from nbkit.core.workspace import Workspace
from nbkit.data.collect import SAMPLE_DATA, CollectConfig, collect


def chat(question: str, answer: str = "ok", **extra) -> dict:
    """A valid user/assistant record with optional side fields (label, id, ...)."""
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}


def write_lines(path: Path, lines: list, *, newline: str = "\n", bom: bool = False) -> Path:
    """Write a JSONL-ish file: dicts/lists are JSON-encoded, str written as text, bytes as-is."""
    data = b"\xef\xbb\xbf" if bom else b""
    for line in lines:
        if isinstance(line, bytes):
            data += line
        elif isinstance(line, str):
            data += line.encode("utf-8")
        else:
            data += json.dumps(line).encode("utf-8")
        data += newline.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def run(tmp_path: Path, sources: list) -> tuple[dict, list[dict], list[dict]]:
    """collect() into tmp_path/ws; return (report, clean rows, rejected rows) as read back from disk."""
    ws = Workspace(tmp_path / "ws")
    report = collect(CollectConfig(workspace=str(ws.root), sources=sources))
    return report, read_jsonl(ws.clean), read_jsonl(ws.rejected)


def user_texts(rows: list[dict]) -> list[str]:
    return [m["content"] for r in rows for m in r["messages"] if m["role"] == "user"]


# One concrete bad record per validation category in nbkit/core/schemas.py.
FIRST = chat("first question")
BAD_RECORDS = [
    ("data_type", ["not", "an", "object"]),
    ("data_type", {"messages": "hello"}),
    ("missing_messages", {"ask": "hi", "reply": "there"}),
    ("ambiguous_columns", {"question": "hi", "answer": "there", "response": "again"}),
    (
        "unrecognized_key",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weigth": 0}]},
    ),
    (
        "bad_weight",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 2}]},
    ),
    (
        "bad_weight",
        {"messages": [{"role": "user", "content": "hi", "weight": 0}, {"role": "assistant", "content": "x"}]},
    ),
    (
        "bad_tools",
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{oops"}}],
                },
                {"role": "tool", "content": "1"},
                {"role": "assistant", "content": "x"},
            ]
        },
    ),
    ("bad_tools", {**chat("hi"), "tools": [{"type": "function", "function": {"description": "no name"}}]}),
    ("bad_tools", {**chat("hi"), "functions": [{"name": "legacy"}]}),
    (
        "bad_role_order",
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]},
            ]
        },
    ),
    (
        "bad_role_order",
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "tool", "content": "1"},
                {"role": "assistant", "content": "x"},
            ]
        },
    ),
    ("message_missing_key", {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}),
    ("message_missing_key", {"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}),
    (
        "unrecognized_key",
        {"messages": [{"role": "user", "content": "hi", "mood": "happy"}, {"role": "assistant", "content": "x"}]},
    ),
    ("unrecognized_role", {"messages": [{"role": "customer", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
    ("unrecognized_role", {"conversations": [{"from": "alien", "value": "hi"}, {"from": "gpt", "value": "x"}]}),
    ("missing_content", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}),
    ("missing_content", {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]}),
    ("no_assistant_message", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}),
    ("empty_conversation", {"messages": []}),
    ("bad_role_order", {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "hi"}]}),
    (
        "bad_role_order",
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "x"},
            ]
        },
    ),
    (
        "bad_role_order",
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "x"},
            ]
        },
    ),
    ("duplicate", chat("first question", label="other")),  # same conversation as FIRST
]


# -- JSONL ----------------------------------------------------------------------------------


def test_jsonl_with_bom_and_crlf(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [chat("one"), chat("two"), chat("three")], newline="\r\n", bom=True)
    report, clean, rejected = run(tmp_path, [str(path)])
    assert (report["read"], report["kept"], report["rejected"]) == (3, 3, 0)
    assert rejected == []
    assert user_texts(clean) == ["one", "two", "three"]
    assert [r["meta"]["line"] for r in clean] == [1, 2, 3]
    assert all(r["meta"]["source"] == str(path) for r in clean)


def test_blank_lines_skipped_and_counted_not_rejected(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [chat("one"), "", "   ", chat("two"), "\t"])
    report, clean, rejected = run(tmp_path, [str(path)])
    assert report["blank_lines"] == 3
    assert (report["read"], report["kept"], report["rejected"]) == (2, 2, 0)
    assert rejected == []
    assert [r["meta"]["line"] for r in clean] == [1, 4]


def test_invalid_utf8_line_rejected_with_line_number(tmp_path):
    bad = b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'
    path = write_lines(tmp_path / "in.jsonl", [chat("one"), bad, chat("three")])
    report, clean, rejected = run(tmp_path, [str(path)])
    assert report["by_category"] == {"not_utf8": 1}
    [row] = rejected
    assert row["category"] == "not_utf8"
    assert row["line"] == 2
    assert row["source"] == str(path)
    assert "\\xe9" in row["raw"]
    assert user_texts(clean) == ["one", "three"]


def test_invalid_json_line_rejected_with_line_number(tmp_path):
    broken = '{"messages": [{"role": "user", "content": "hi"}'
    path = write_lines(tmp_path / "in.jsonl", [chat("one"), chat("two"), broken, chat("four")])
    report, clean, rejected = run(tmp_path, [str(path)])
    [row] = rejected
    assert row["category"] == "invalid_json"
    assert row["line"] == 3
    assert row["raw"] == broken
    assert "invalid JSON" in row["message"]
    assert [r["meta"]["line"] for r in clean] == [1, 2, 4]


@pytest.mark.parametrize("category, bad", BAD_RECORDS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(BAD_RECORDS)])
def test_validation_category_rejected_with_position(tmp_path, category, bad):
    path = write_lines(tmp_path / "in.jsonl", [FIRST, bad, chat("last question")])
    report, clean, rejected = run(tmp_path, [str(path)])
    [row] = rejected
    assert set(row) == {"source", "line", "category", "message", "raw"}
    assert row["category"] == category
    assert row["line"] == 2
    assert row["source"] == str(path)
    assert isinstance(row["message"], str) and row["message"]
    assert json.loads(row["raw"]) == bad
    assert user_texts(clean) == ["first question", "last question"]
    assert report["by_category"] == {category: 1}


def test_late_system_message_is_explained(tmp_path):
    bad = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "x"},
            {"role": "system", "content": "s"},
            {"role": "assistant", "content": "y"},
        ]
    }
    _, _, rejected = run(tmp_path, [[bad]])
    assert rejected[0]["category"] == "bad_role_order"
    assert "system message at position 2" in rejected[0]["message"]


def test_duplicate_message_points_to_first_copy(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [FIRST, chat("other"), FIRST])
    report, _, rejected = run(tmp_path, [str(path)])
    assert report["duplicates"] == 1
    assert rejected[0]["line"] == 3
    assert "line 1" in rejected[0]["message"]


def test_duplicate_across_sources(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [FIRST])
    report, clean, rejected = run(tmp_path, [str(path), [FIRST]])
    assert (report["kept"], report["duplicates"]) == (1, 1)
    assert rejected[0]["source"] == "<list>" and rejected[0]["index"] == 0


def test_nothing_lost_with_every_category_interleaved(tmp_path):
    lines, expected = [], Counter()
    for i, (category, bad) in enumerate(BAD_RECORDS):
        lines += [chat(f"good {i}"), bad]
        expected[category] += 1
    lines = [FIRST] + lines + ["", b"\xff\xfe", "{oops"]
    expected.update(["not_utf8", "invalid_json"])
    path = write_lines(tmp_path / "in.jsonl", lines)
    report, clean, rejected = run(tmp_path, [str(path)])

    n_good = 1 + len(BAD_RECORDS)
    assert report["kept"] == len(clean) == n_good
    assert report["rejected"] == len(rejected) == sum(expected.values())
    assert report["read"] == report["kept"] + report["rejected"] == len(lines) - 1  # minus the blank line
    assert report["by_category"] == dict(expected)
    assert report["duplicates"] == 1
    assert report["sources"] == {str(path): {"read": report["read"], "kept": n_good, "rejected": len(rejected)}}
    # every line number is accounted for exactly once
    positions = sorted([r["meta"]["line"] for r in clean] + [r["line"] for r in rejected])
    blank_line = lines.index("") + 1
    assert positions == [n for n in range(1, len(lines) + 1) if n != blank_line]


# -- JSON -----------------------------------------------------------------------------------


def test_json_array_positions_are_indexes(tmp_path):
    path = tmp_path / "in.json"
    path.write_text(json.dumps([chat("a"), {"messages": []}, chat("c")]), encoding="utf-8")
    report, clean, rejected = run(tmp_path, [str(path)])
    assert [r["meta"]["index"] for r in clean] == [0, 2]
    assert all("line" not in r["meta"] for r in clean)
    [row] = rejected
    assert row["index"] == 1 and "line" not in row
    assert row["category"] == "empty_conversation"
    assert report["read"] == 3


def test_json_object_with_data_list(tmp_path):
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"version": 2, "data": [chat("a", label="x"), chat("b", label="y")]}), encoding="utf-8")
    report, clean, rejected = run(tmp_path, [str(path)])
    assert (report["kept"], report["rejected"]) == (2, 0)
    assert user_texts(clean) == ["a", "b"]
    assert [r["meta"]["label"] for r in clean] == ["x", "y"]
    assert [r["meta"]["index"] for r in clean] == [0, 1]


def test_invalid_json_file_raises_data_error(tmp_path):
    path = tmp_path / "in.json"
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match="in.json"):
        run(tmp_path, [str(path)])


# -- tables ---------------------------------------------------------------------------------


def test_csv_prompt_completion_with_multiline_cell(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(
        'prompt,completion,label\n"first line\nsecond line","the answer",a\nplain question,"short, with comma",b\n',
        encoding="utf-8",
    )
    report, clean, rejected = run(tmp_path, [str(path)])
    assert (report["kept"], report["rejected"]) == (2, 0)
    assert clean[0]["messages"] == [
        {"role": "user", "content": "first line\nsecond line"},
        {"role": "assistant", "content": "the answer"},
    ]
    assert clean[1]["messages"][1]["content"] == "short, with comma"
    assert [r["meta"]["row"] for r in clean] == [1, 2]
    assert [r["meta"]["label"] for r in clean] == ["a", "b"]


def test_tsv(tmp_path):
    path = tmp_path / "in.tsv"
    path.write_text("prompt\tcompletion\nhello, world\thi\nsecond\tthere\n", encoding="utf-8")
    report, clean, _ = run(tmp_path, [str(path)])
    assert report["kept"] == 2
    assert user_texts(clean) == ["hello, world", "second"]
    assert clean[1]["messages"][1]["content"] == "there"


def test_csv_missing_columns_rejected_with_one_word_for_the_file(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("Frage,Antwort\nhi,there\nhow,now\n", encoding="utf-8")
    report, clean, rejected = run(tmp_path, [str(path)])
    assert clean == []
    assert report["by_category"] == {"missing_column": 2}
    assert [(r["row"], r["category"]) for r in rejected] == [(1, "missing_column"), (2, "missing_column")]
    assert "Frage" in rejected[0]["message"]
    assert json.loads(rejected[0]["raw"]) == {"Frage": "hi", "Antwort": "there"}
    problem = report["sources"][str(path)]["problem"]
    assert problem["category"] == "missing_column" and problem["columns"] == ["Frage", "Antwort"]
    assert problem["fix"].startswith('columns = {"Frage": "prompt", "Antwort": "completion"}')
    fixed = collect(
        CollectConfig(
            workspace=str(tmp_path / "ws2"),
            sources=[str(path)],
            columns=json.loads(problem["fix"].split("=", 1)[1].split("#")[0]),
        )
    )
    assert fixed["kept"] == 2 and "problem" not in fixed["sources"][str(path)]


def test_csv_messages_column_as_json_text(tmp_path):
    path = tmp_path / "in.csv"
    messages = chat("from csv")["messages"]
    path.write_text("messages\n" + '"' + json.dumps(messages).replace('"', '""') + '"\n', encoding="utf-8")
    report, clean, _ = run(tmp_path, [str(path)])
    assert report["kept"] == 1
    assert clean[0]["messages"] == messages


def test_csv_completion_that_is_json_text_is_kept(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('prompt,completion\nMy card was charged twice,"{""team"": ""billing""}"\n', encoding="utf-8")
    report, clean, rejected = run(tmp_path, [str(path)])
    assert rejected == []
    assert clean[0]["messages"][1]["content"] == '{"team": "billing"}'


def test_parquet_prompt_completion(tmp_path):
    path = tmp_path / "in.parquet"
    pd.DataFrame({"prompt": ["p1", "p2", "p3"], "completion": ["c1", "", "c3"], "label": ["a", "b", "a"]}).to_parquet(
        path
    )
    report, clean, rejected = run(tmp_path, [str(path)])
    assert (report["kept"], report["rejected"]) == (2, 1)
    assert user_texts(clean) == ["p1", "p3"]
    assert [r["meta"]["row"] for r in clean] == [1, 3]
    assert [r["meta"]["label"] for r in clean] == ["a", "a"]
    assert (rejected[0]["row"], rejected[0]["category"]) == (2, "missing_content")


def test_parquet_messages_column(tmp_path):
    path = tmp_path / "in.parquet"
    pd.DataFrame({"messages": [chat("a")["messages"], chat("b", "yes")["messages"]]}).to_parquet(path)
    report, clean, _ = run(tmp_path, [str(path)])
    assert report["kept"] == 2
    assert clean[1]["messages"] == chat("b", "yes")["messages"]


# -- other schemas --------------------------------------------------------------------------


def test_sharegpt_converted_to_messages(tmp_path):
    record = {
        "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello"},
            {"from": "Human", "value": "bye"},
            {"from": "model", "value": "ciao"},
        ],
        "id": "c1",
    }
    path = write_lines(tmp_path / "in.jsonl", [record])
    _, clean, rejected = run(tmp_path, [str(path)])
    assert rejected == []
    assert clean[0]["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
    assert clean[0]["meta"] == {"source": str(path), "line": 1, "id": "c1"}


def test_alpaca_converted_to_messages(tmp_path):
    records = [
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Count", "output": "1 2 3"},
    ]
    path = write_lines(tmp_path / "in.jsonl", records)
    _, clean, rejected = run(tmp_path, [str(path)])
    assert rejected == []
    assert [r["messages"] for r in clean] == [
        [{"role": "user", "content": "Translate\n\nchat"}, {"role": "assistant", "content": "cat"}],
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "1 2 3"}],
    ]
    assert all(set(r["meta"]) == {"source", "line"} for r in clean)  # schema columns are not copied to meta


def test_alpaca_dataframe_with_missing_input(tmp_path):
    df = pd.DataFrame(
        [{"instruction": "Translate", "input": "chat", "output": "cat"}, {"instruction": "Count", "output": "1 2 3"}]
    )
    _, clean, _ = run(tmp_path, [df])
    assert clean[1]["messages"][0]["content"] == "Count"


# -- sources --------------------------------------------------------------------------------


def test_glob_over_several_files_keeps_provenance(tmp_path):
    a = write_lines(tmp_path / "in" / "a.jsonl", [chat("a1"), chat("a2")])
    b = write_lines(tmp_path / "in" / "b.jsonl", ["", chat("b1")])
    write_lines(tmp_path / "in" / "skip.csv", ["prompt,completion", "x,y"])
    report, clean, _ = run(tmp_path, [str(tmp_path / "in" / "*.jsonl")])
    assert [(r["meta"]["source"], r["meta"]["line"]) for r in clean] == [(str(a), 1), (str(a), 2), (str(b), 2)]
    assert set(report["sources"]) == {str(a), str(b)}
    assert report["sources"][str(b)] == {"read": 1, "kept": 1, "rejected": 0}


def test_in_memory_list_of_dicts(tmp_path):
    report, clean, rejected = run(tmp_path, [[chat("a", label="x"), {"oops": 1}, chat("c")]])
    assert [r["meta"] for r in clean] == [
        {"source": "<list>", "index": 0, "label": "x"},
        {"source": "<list>", "index": 2},
    ]
    assert (rejected[0]["source"], rejected[0]["index"], rejected[0]["category"]) == ("<list>", 1, "missing_messages")
    assert report["read"] == 3


def test_dataframe_source(tmp_path):
    df = pd.DataFrame({"prompt": ["p1", "p2"], "completion": ["c1", "c2"], "label": ["a", "b"]})
    report, clean, _ = run(tmp_path, [df])
    assert report["kept"] == 2
    assert [r["meta"] for r in clean] == [
        {"source": "<dataframe>", "row": 1, "label": "a"},
        {"source": "<dataframe>", "row": 2, "label": "b"},
    ]
    assert clean[1]["messages"][1]["content"] == "c2"


def test_glob_matching_nothing_raises_data_error(tmp_path):
    pattern = str(tmp_path / "nowhere" / "*.jsonl")
    with pytest.raises(DataError) as info:
        run(tmp_path, [pattern])
    assert pattern in str(info.value)


def test_missing_path_raises_data_error(tmp_path):
    path = str(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="missing.jsonl"):
        run(tmp_path, [path])


def test_unsupported_file_type_raises_data_error(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("# hi\n")
    with pytest.raises(DataError, match="unsupported"):
        run(tmp_path, [str(path)])


def test_empty_sources_use_bundled_sample(tmp_path):
    report, clean, rejected = run(tmp_path, [])
    assert (report["read"], report["kept"], report["rejected"]) == (400, 400, 0)
    assert rejected == []
    assert Counter(r["meta"]["label"] for r in clean) == {
        "billing": 100,
        "account": 100,
        "shipping": 100,
        "technical": 100,
    }
    assert all(r["meta"]["source"] == str(SAMPLE_DATA) for r in clean)
    assert [r["meta"]["line"] for r in clean] == list(range(1, 401))


# -- workspace contract ---------------------------------------------------------------------


def test_workspace_contract_files(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [chat("a"), "{", chat("b")])
    report = collect(CollectConfig(workspace=str(tmp_path / "ws"), sources=[str(path)]))
    ws = Workspace(tmp_path / "ws")
    for file in (ws.clean, ws.rejected, ws.collect_report):
        assert file.is_file(), file
    assert ws.clean == tmp_path / "ws" / "data" / "clean.jsonl"
    on_disk = read_json(ws.collect_report)
    assert on_disk == report
    assert {"read", "kept", "rejected", "duplicates", "by_category"} <= set(on_disk)
    assert on_disk["read"] == on_disk["kept"] + on_disk["rejected"] == 3
    for row in read_jsonl(ws.clean):
        assert set(row) == {"messages", "meta"}
        assert "source" in row["meta"] and "line" in row["meta"]
    for row in read_jsonl(ws.rejected):
        assert {"source", "line", "category", "message", "raw"} == set(row)


def test_nothing_written_to_current_directory(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run(tmp_path, [[chat("a")]])
    assert list(cwd.iterdir()) == []


# -- datasets: save_to_disk folders, in-memory objects, the Hub -----------------------------


def quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    return datasets


def test_save_to_disk_folder_with_row_provenance(tmp_path):
    datasets = quiet_datasets()
    folder = tmp_path / "saved"
    datasets.Dataset.from_list([chat("a"), {"messages": []}, chat("c")]).save_to_disk(str(folder))
    report, clean, rejected = run(tmp_path, [str(folder)])
    assert (report["read"], report["kept"], report["rejected"]) == (3, 2, 1)
    assert [r["meta"] for r in clean] == [{"source": str(folder), "row": 1}, {"source": str(folder), "row": 3}]
    assert (rejected[0]["source"], rejected[0]["row"], rejected[0]["category"]) == (
        str(folder),
        2,
        "empty_conversation",
    )


def test_dataset_dict_folder_reads_every_split(tmp_path):
    datasets = quiet_datasets()
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        train=datasets.Dataset.from_list([chat("t1", label="x"), chat("t2", label="y")]),
        test=datasets.Dataset.from_list([chat("s1", label="x")]),
    ).save_to_disk(str(folder))
    report, clean, _ = run(tmp_path, [str(folder)])
    assert [(r["meta"]["source"], r["meta"]["row"]) for r in clean] == [
        (f"{folder}:train", 1),
        (f"{folder}:train", 2),
        (f"{folder}:test", 1),
    ]
    assert user_texts(clean) == ["t1", "t2", "s1"]
    assert [r["meta"]["label"] for r in clean] == ["x", "y", "x"]
    assert report["sources"][f"{folder}:test"] == {"read": 1, "kept": 1, "rejected": 0}


def test_folder_holding_a_saved_dataset_and_files(tmp_path):
    """The saved dataset's own state.json/dataset_info.json are not read as data."""
    datasets = quiet_datasets()
    datasets.Dataset.from_list([chat("from arrow")]).save_to_disk(str(tmp_path / "in" / "saved"))
    write_lines(tmp_path / "in" / "a.jsonl", [chat("from jsonl")])
    report, clean, rejected = run(tmp_path, [str(tmp_path / "in")])
    assert rejected == []
    assert sorted(user_texts(clean)) == ["from arrow", "from jsonl"]
    assert set(report["sources"]) == {str(tmp_path / "in" / "a.jsonl"), str(tmp_path / "in" / "saved")}


def test_dataset_objects_in_memory(tmp_path):
    datasets = quiet_datasets()
    # Arrow gives every message the keys any message had (here `name`), filled with None.
    named = {"messages": [{"role": "user", "content": "hi", "name": "ann"}, {"role": "assistant", "content": "yo"}]}
    ds = datasets.Dataset.from_list([named, chat("b")])
    dd = datasets.DatasetDict(train=datasets.Dataset.from_list([chat("c")]))
    report, clean, rejected = run(tmp_path, [ds, dd])
    assert rejected == []
    assert [r["meta"] for r in clean] == [
        {"source": "<dataset>", "row": 1},
        {"source": "<dataset>", "row": 2},
        {"source": "<dataset>:train", "row": 1},
    ]
    # `name` is kept where it was set (OpenAI's speaker name); Arrow's None for the other message is dropped
    assert clean[0]["messages"] == [
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": "yo"},
    ]


def test_hub_id_offline_fails_fast_with_the_fix(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        run(tmp_path, ["hf:nbkit-tests/no-such-dataset:train"])
    message = str(info.value)
    assert "'nbkit-tests/no-such-dataset'" in message
    assert "unreachable" in message and "local file path" in message and "save_to_disk" in message
    assert time.monotonic() - started < 30


def test_hub_id_without_network_fails_before_load_dataset(tmp_path, monkeypatch):
    import datasets

    import nbkit.data.hub as hub_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("load_dataset must not be tried without a connection")

    monkeypatch.setattr(hub_module, "hub_offline", lambda: False)
    monkeypatch.setattr(hub_module, "hub_unreachable", lambda: "ConnectionRefusedError: refused")
    monkeypatch.setattr(datasets, "load_dataset", must_not_run)
    with pytest.raises(DataError, match="HuggingFaceH4/no_robots.*unreachable"):
        run(tmp_path, ["hf:HuggingFaceH4/no_robots"])


def test_hub_unreachable_says_why_quickly_for_a_closed_port(monkeypatch):
    import socket
    import time

    from nbkit.core.network import hub_unreachable

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as sock:  # bind a port, then close it: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    assert "ConnectionRefusedError" in hub_unreachable(f"http://127.0.0.1:{port}", timeout=1.0)
    assert time.monotonic() - started < 3


def test_hub_unreachable_leaves_a_proxy_to_the_hub_client_and_names_a_bad_endpoint(monkeypatch):
    from nbkit.core.network import hub_unreachable

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_unreachable("http://127.0.0.1:9") is None  # a direct probe proves nothing behind a proxy
    monkeypatch.delenv("HTTPS_PROXY")
    for var in ("https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert "not a URL with a host" in hub_unreachable("huggingface.co")


def test_file_readers_do_not_import_the_stages():
    """06 reads preference files through 01's readers: they live in the core and load no stage."""
    import subprocess
    import sys

    code = "import sys, nbkit.core.readers; print(any(m.startswith('nbkit.data') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_hub_id_loaded_with_split_and_provenance(tmp_path, monkeypatch):
    datasets = quiet_datasets()
    calls = []

    def fake_load(name, split=None):
        calls.append((name, split))
        if split:
            return datasets.Dataset.from_list([chat("only train")])
        return datasets.DatasetDict(
            train=datasets.Dataset.from_list([chat("tr")]), test=datasets.Dataset.from_list([chat("te")])
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    _, clean, _ = run(tmp_path, ["hf:org/name:train"])
    assert clean[0]["meta"] == {"source": "hf:org/name:train", "row": 1}
    _, clean, _ = run(tmp_path, ["hf:org/other"])
    assert [r["meta"]["source"] for r in clean] == ["hf:org/other:train", "hf:org/other:test"]
    assert calls == [("org/name", "train"), ("org/other", None)]


def test_malformed_hub_id_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="hf:org/name"):
        run(tmp_path, ["hf:"])


# -- column and role mapping ----------------------------------------------------------------


def run_config(tmp_path: Path, **kwargs) -> tuple[dict, list[dict], list[dict]]:
    ws = Workspace(tmp_path / "ws")
    report = collect(CollectConfig(workspace=str(ws.root), **kwargs))
    return report, read_jsonl(ws.clean), read_jsonl(ws.rejected)


def test_column_mapping_for_tables_and_json(tmp_path):
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text("question,answer,team\nhow?,like this,billing\n", encoding="utf-8")
    json_path = write_lines(tmp_path / "qa.jsonl", [{"question": "why?", "answer": "because"}])
    report, clean, rejected = run_config(
        tmp_path,
        sources=[str(csv_path), str(json_path)],
        columns={"question": "prompt", "answer": "completion", "team": "label"},
    )
    assert rejected == []
    assert [r["messages"] for r in clean] == [
        [{"role": "user", "content": "how?"}, {"role": "assistant", "content": "like this"}],
        [{"role": "user", "content": "why?"}, {"role": "assistant", "content": "because"}],
    ]
    assert clean[0]["meta"] == {"source": str(csv_path), "row": 1, "label": "billing"}


def test_column_mapped_to_messages_is_decoded_from_csv_text(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(
        "dialog\n" + '"' + json.dumps(chat("from csv")["messages"]).replace('"', '""') + '"\n', encoding="utf-8"
    )
    _, clean, rejected = run_config(tmp_path, sources=[str(path)], columns={"dialog": "messages"})
    assert rejected == []
    assert clean[0]["messages"] == chat("from csv")["messages"]


def test_role_mapping_for_messages_and_conversations(tmp_path):
    records = [
        {"messages": [{"role": "human", "content": "hi"}, {"role": "bot", "content": "hello"}]},
        {"conversations": [{"from": "Customer", "value": "help"}, {"from": "agent", "value": "sure"}]},
    ]
    original = json.dumps(records)
    _, clean, rejected = run_config(
        tmp_path,
        sources=[records],
        roles={"human": "user", "bot": "assistant", "customer": "user", "agent": "assistant"},
    )
    assert rejected == []
    assert [[m["role"] for m in r["messages"]] for r in clean] == [["user", "assistant"], ["user", "assistant"]]
    assert json.dumps(records) == original  # the caller's list is not modified


def test_unmapped_role_is_still_rejected(tmp_path):
    records = [{"messages": [{"role": "human", "content": "hi"}, {"role": "bot", "content": "hello"}]}]
    _, _, rejected = run_config(tmp_path, sources=[records], roles={"human": "user"})
    assert rejected[0]["category"] == "unrecognized_role"
    assert "'bot'" in rejected[0]["message"] and "roles" in rejected[0]["message"]


@pytest.mark.parametrize(
    "field_name, value, listed",
    [
        (
            "columns",
            {"question": "questions"},
            "messages, conversations, instruction, input, output, prompt, completion, system, label",
        ),
        ("roles", {"bot": "robot"}, "system, user, assistant"),
        ("columns", ["question"], "dict"),
    ],
)
def test_bad_mapping_is_a_config_error_naming_the_field(field_name, value, listed):
    from nbkit.core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        CollectConfig(**{field_name: value})
    message = str(info.value)
    assert f"`{field_name}`" in message and listed in message


def test_mapping_round_trips_through_the_config(tmp_path):
    config = CollectConfig(columns={"q": "prompt"}, roles={"bot": "assistant"})
    assert CollectConfig.from_dict(json.loads(config.to_json())) == config


def test_system_column_becomes_the_system_message(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("system,prompt,completion,label\nBe brief.,hi,hello,a\n,bye,ciao,b\n", encoding="utf-8")
    alpaca = [{"system": "Translate to French.", "instruction": "Translate", "input": "cat", "output": "chat"}]
    _, clean, rejected = run(tmp_path, [str(path), alpaca])
    assert rejected == []
    assert clean[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    assert clean[1]["messages"][0] == {"role": "user", "content": "bye"}  # an empty system cell adds nothing
    assert clean[2]["messages"][0] == {"role": "system", "content": "Translate to French."}
    assert clean[0]["meta"] == {"source": str(path), "row": 1, "label": "a"}  # system is not copied to meta


def test_system_column_via_mapping(tmp_path):
    records = [{"persona": "You are terse.", "q": "hi", "a": "yo"}]
    _, clean, _ = run_config(
        tmp_path, sources=[records], columns={"persona": "system", "q": "prompt", "a": "completion"}
    )
    assert [m["role"] for m in clean[0]["messages"]] == ["system", "user", "assistant"]


# -- plain text -----------------------------------------------------------------------------

TEXT = """### User
How do I reset my password?
### Assistant
Use "Forgot password".


### System
Answer in one line.
### User:
Where is my parcel?
### assistant
On its way.
### User
And when will it arrive?
### Assistant
Tomorrow. ### not a header
### Next steps are plain text

just some notes
without headers

### User
only a question
"""


def test_txt_blocks_become_examples_and_malformed_blocks_are_rejected(tmp_path):
    path = tmp_path / "chats.txt"
    path.write_text(TEXT, encoding="utf-8")
    report, clean, rejected = run(tmp_path, [str(path)])
    assert [r["meta"]["line"] for r in clean] == [1, 7]
    assert clean[0]["messages"] == [
        {"role": "user", "content": "How do I reset my password?"},
        {"role": "assistant", "content": 'Use "Forgot password".'},
    ]
    assert [m["role"] for m in clean[1]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert clean[1]["messages"][-1]["content"] == "Tomorrow. ### not a header\n### Next steps are plain text"
    assert [(r["line"], r["category"]) for r in rejected] == [(19, "missing_messages"), (22, "no_assistant_message")]
    assert rejected[0]["raw"] == "just some notes\nwithout headers"
    assert "### User" in rejected[0]["message"]
    assert report["blank_lines"] == 4  # separators are counted, never rejected
    assert report["read"] == report["kept"] + report["rejected"] == 4


def test_txt_with_mapped_role_headers_and_bad_bytes(tmp_path):
    path = tmp_path / "chats.txt"
    path.write_bytes(b"### Human\nhi\n### Bot\nhello\n\n### User\ncaf\xe9\n### Assistant\nx\n")
    _, clean, rejected = run_config(tmp_path, sources=[str(path)], roles={"human": "user", "bot": "assistant"})
    assert clean[0]["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert [(r["line"], r["category"]) for r in rejected] == [(6, "not_utf8")]
    assert "line 7" in rejected[0]["message"]


# -- manual examples ------------------------------------------------------------------------


def test_manual_jsonl_is_read_automatically_and_once(tmp_path):
    from nbkit.data.manual import manual_path

    ws = tmp_path / "ws"
    manual = write_lines(manual_path(ws), [chat("by hand"), "", "{oops"])
    report, clean, rejected = run(tmp_path, [[chat("from list")]])
    assert user_texts(clean) == ["from list", "by hand"]
    assert clean[1]["meta"] == {"source": str(manual), "line": 1}
    assert (rejected[0]["source"], rejected[0]["line"]) == (str(manual), 3)
    report, clean, _ = run(tmp_path, [str(manual)])  # listed explicitly: still read once
    assert report["duplicates"] == 0 and user_texts(clean) == ["by hand"]


def test_same_file_from_two_globs_is_read_once(tmp_path):
    path = write_lines(tmp_path / "in" / "a.jsonl", [chat("a")])
    report, _, _ = run(tmp_path, [str(path), str(tmp_path / "in" / "*.jsonl")])
    assert (report["read"], report["duplicates"]) == (1, 0)


def test_add_manual_example_validates_and_appends(tmp_path):
    from nbkit.core.messages import RecordError
    from nbkit.data.manual import add_manual_example, manual_path

    ws = tmp_path / "ws"
    assert add_manual_example(ws, chat("one", label="x")) == 1
    assert add_manual_example(ws, {"q": "two", "a": "ok"}, columns={"q": "prompt", "a": "completion"}) == 2
    with pytest.raises(RecordError) as info:
        add_manual_example(ws, {"messages": [{"role": "user", "content": "no answer"}]})
    assert info.value.category == "no_assistant_message"
    with pytest.raises(RecordError, match="line 1"):
        add_manual_example(ws, chat("one"))
    assert read_jsonl(manual_path(ws)) == [{**chat("one"), "label": "x"}, chat("two")]

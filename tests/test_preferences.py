"""Preference pairs (stage 06): training prompts only, the right side chosen, every bad file line rejected with its
line and reason, duplicates kept once, and metric-ranked pairs sampled from a real SFT run."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from nbkit.core.errors import ConfigError, WorkspaceError
from nbkit.core.files import read_json, read_jsonl
from nbkit.core.workspace import Workspace
from nbkit.data.manual import promote
from nbkit.model.generation import SamplingSettings
from nbkit.train.prefer.config import PairsConfig
from nbkit.train.prefer.pair_report import load_pairs, pairs_table
from nbkit.train.prefer.pairs import build_pairs
from nbkit.train.prefer.records import asked, prompt_key
from nbkit.train.prefer.sampled import choose_rows, sample_rating_pairs, save_preference_rating, sft_run

SYSTEM = {"role": "system", "content": "Triage the ticket."}


def row(question: str, answer: str) -> dict:
    return {
        "messages": [SYSTEM, {"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "meta": {"source": "hand"},
    }


def prompt(question: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": question}]


def write_lines(path, records, prefix: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        prefix + "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8"
    )


@pytest.fixture
def ws(tmp_path):
    """Splits with two training prompts (t1, t2), one validation prompt (v1) and one test prompt (x1), and a
    finished run r1 with 05's predictions."""
    root = tmp_path / "ws"
    write_lines(root / "data/splits/train.jsonl", [row("t1", "A1"), row("t2", "A2")])
    write_lines(root / "data/splits/validation.jsonl", [row("v1", "V1")])
    write_lines(root / "data/splits/test.jsonl", [row("x1", "X1")])
    run = root / "runs" / "r1"
    write_lines(run / "adapter/adapter_config.json", ["{}"])
    (run / "run.json").write_text("{}")
    write_lines(
        run / "eval/predictions.jsonl",
        [
            {"prompt": "x1", "reference": "X1", "base": "base x1", "tuned": "tuned x1"},
            {"prompt": "x2", "reference": "X2", "base": "base x2", "tuned": "tuned x2"},
            {"prompt": "t1", "reference": "A1", "base": "base t1", "tuned": "tuned t1"},
        ],
    )
    return root


def build(root, **kwargs) -> dict:
    return build_pairs(PairsConfig(workspace=str(root), **kwargs), progress=False)


def sides(pair) -> tuple[str, str]:
    return pair["chosen"][0]["content"], pair["rejected"][0]["content"]


def test_ratings_use_training_prompts_only_and_skip_ties(ws):
    write_lines(
        ws / "runs/r1/eval/ratings.jsonl",
        [
            {"prompt": "x1", "choice": "A", "winner": "tuned"},  # a test prompt: never used
            {"prompt": "x2", "choice": "tie", "winner": "tie"},
            {"prompt": "t1", "choice": "B", "winner": "base"},  # a training prompt 05 happened to rate
            {"prompt": "gone", "choice": "A", "winner": "tuned"},
        ],
    )  # no prediction row
    for pair, choice in ((prompt("t2"), "B"), (prompt("t2"), "tie"), (prompt("v1"), "A")):
        save_preference_rating(ws, {"prompt": pair, "A": "first", "B": "second"}, choice)
    report = build(ws, sources=["ratings"])
    pairs = read_jsonl(Workspace(ws).pairs)
    assert [(p["prompt"], sides(p)) for p in pairs] == [
        (prompt("t2"), ("second", "first")),
        (prompt("t1"), ("base t1", "tuned t1")),
    ]
    assert pairs[0]["reference"] == "A2" and pairs[0]["origin"]["choice"] == "B"
    assert pairs[1]["origin"] == {
        "run_id": "r1",
        "file": "runs/r1/eval/ratings.jsonl",
        "record": 3,
        "choice": "B",
        "sides": {"A": "tuned", "B": "base"},
    }
    counts = report["sources"]["rating"]
    assert {k: counts[k] for k in ("read", "built", "kept", "ties", "not_train", "rejected")} == {
        "read": 7,
        "built": 4,
        "kept": 2,
        "ties": 2,
        "not_train": 2,
        "rejected": 1,
    }
    assert any("05 rates the test split" in note for note in report["notes"])
    rejected = read_jsonl(Workspace(ws).pairs_rejected)
    assert rejected[0]["record"] == 4 and "predictions.jsonl" in rejected[0]["reason"]
    assert json.loads(rejected[0]["raw"])["prompt"] == "gone"


def test_save_preference_rating_appends_and_checks_the_choice(ws):
    pair = {"prompt": prompt("t1"), "A": "a", "B": "b", "reference": "A1"}
    record = save_preference_rating(ws, pair, "A")
    assert read_jsonl(Workspace(ws).preference_ratings) == [record] and set(record) == {
        "prompt",
        "A",
        "B",
        "choice",
        "time",
    }
    with pytest.raises(ConfigError, match="`choice`"):
        save_preference_rating(ws, pair, "C")


def test_corrections_pair_the_correction_with_the_model_answer(ws):
    promote(ws, prompt("t1") + [{"role": "assistant", "content": "A1 fixed"}], "r1", model_answer="wrong t1")
    path, line = promote(ws, prompt("t2") + [{"role": "assistant", "content": "A2"}], "r1", model_answer=" A2 ")
    assert "model_answer" not in read_jsonl(path)[line - 1]  # not corrected: nothing to learn a preference from
    promote(ws, prompt("new") + [{"role": "assistant", "content": "fixed"}], "r1", model_answer="wrong")
    report = build(ws, sources=["corrections"])
    pairs = read_jsonl(Workspace(ws).pairs)
    assert len(pairs) == 1 and sides(pairs[0]) == ("A1 fixed", "wrong t1") and pairs[0]["prompt"] == prompt("t1")
    assert pairs[0]["origin"] == {"file": "data/manual.jsonl", "record": 1, "run_id": "r1"}
    assert report["sources"]["correction"]["kept"] == 1 and report["sources"]["correction"]["not_train"] == 1
    assert any("run 01 to 03 again" in note for note in report["notes"])


TRL_AND_OPENAI = [
    {"prompt": "plain question", "chosen": "good", "rejected": "bad"},
    {
        "prompt": prompt("t1"),
        "chosen": [{"role": "assistant", "content": "good t1"}],
        "rejected": [{"role": "assistant", "content": "bad t1"}],
    },
    '{"prompt": "cut off", "chosen": "x"',
    {
        "chosen": prompt("implicit") + [{"role": "assistant", "content": "good i"}],
        "rejected": prompt("implicit") + [{"role": "assistant", "content": "bad i"}],
    },
    {"prompt": prompt("x1"), "chosen": "good x1", "rejected": "bad x1"},  # a test prompt
    {
        "input": {"messages": prompt("v1")},
        "preferred_output": [{"role": "assistant", "content": "good v1"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad v1"}],
    },  # a validation prompt
    {
        "input": {"messages": prompt("openai")},
        "preferred_output": [{"role": "assistant", "content": "good o"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad o"}],
    },
    {"prompt": "same", "chosen": "one  answer", "rejected": "one answer"},
    {"prompt": prompt("t2")[:1], "chosen": "good", "rejected": "bad"},  # no user turn
    {"question": "q", "answer": "a"},
    {"prompt": "plain question", "chosen": "good", "rejected": "bad"},  # a duplicate of line 1
]


def test_preference_files_keep_valid_lines_and_reject_bad_ones_with_line_and_reason(ws):
    path = ws / "prefs.jsonl"
    write_lines(path, TRL_AND_OPENAI, prefix="\ufeff")  # a byte-order mark, as Windows editors write
    report = build(ws, sources=["files"], files=[str(path), str(ws / "missing.jsonl")])
    pairs = read_jsonl(Workspace(ws).pairs)
    assert [(p["prompt"][-1]["content"], sides(p), p["origin"]["line"]) for p in pairs] == [
        ("plain question", ("good", "bad"), 1),
        ("t1", ("good t1", "bad t1"), 2),
        ("implicit", ("good i", "bad i"), 4),
        ("openai", ("good o", "bad o"), 7),
    ]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "plain question"}] and "reference" not in pairs[0]
    assert pairs[1]["reference"] == "A1" and pairs[1]["origin"]["file"] == str(path)
    rejected = {r["line"]: r for r in read_jsonl(Workspace(ws).pairs_rejected)}
    assert set(rejected) == {3, 5, 6, 8, 9, 10, None}
    assert "invalid JSON" in rejected[3]["reason"] and rejected[3]["raw"] == TRL_AND_OPENAI[2]
    assert all("validation or test prompt" in rejected[n]["reason"] for n in (5, 6))
    assert "same answer" in rejected[8]["reason"] and "must end with a user turn" in rejected[9]["reason"]
    assert "input/preferred_output" in rejected[10]["reason"] and "file not found" in rejected[None]["reason"]
    assert report["sources"]["file"] == {
        "read": 11,
        "built": 5,
        "kept": 4,
        "ties": 0,
        "not_train": 0,
        "duplicates": 1,
        "identical": 0,
        "no_margin": 0,
        "rejected": 7,
    }


def test_a_json_array_file_names_each_record_by_its_index(ws):
    path = ws / "prefs.json"
    path.write_text(json.dumps([TRL_AND_OPENAI[0], {"prompt": "q", "chosen": [], "rejected": "b"}]))
    build(ws, sources=["files"], files=[str(path)])
    assert read_jsonl(Workspace(ws).pairs)[0]["origin"] == {"file": str(path), "index": 0}
    rejected = read_jsonl(Workspace(ws).pairs_rejected)
    assert rejected[0]["index"] == 1 and "one assistant message" in rejected[0]["reason"]


def test_the_same_pair_from_two_sources_is_kept_once(ws):
    promote(ws, prompt("t1") + [{"role": "assistant", "content": "A1 fixed"}], "r1", model_answer="wrong t1")
    path = ws / "prefs.jsonl"
    write_lines(path, [{"prompt": prompt("t1"), "chosen": "A1  fixed", "rejected": "wrong t1"}])
    report = build(ws, files=[str(path)], sources=["corrections", "files"])
    assert len(read_jsonl(Workspace(ws).pairs)) == 1 and report["total"] == 1
    assert report["sources"]["correction"]["kept"] == 1 and report["sources"]["file"]["duplicates"] == 1
    assert report["examples"] == [
        {"source": "correction", "prompt": "t1", "chosen": "A1 fixed", "rejected": "wrong t1"}
    ]
    assert read_json(Workspace(ws).pairs_report) == report
    table = pairs_table(load_pairs(ws))
    assert list(table.columns) == ["source", "prompt", "chosen", "rejected"]
    assert table.iloc[0].tolist() == ["correction", "t1", "A1 fixed", "wrong t1"]


def test_nothing_to_build_says_what_to_do(ws):
    report = build(ws, sources=["ratings", "corrections"])
    assert report["total"] == 0 and "No pairs yet" in report["notes"][0]
    assert read_jsonl(Workspace(ws).pairs) == []


def test_the_sft_run_is_the_latest_run_that_is_not_a_preference_run(ws):
    shutil.copytree(ws / "runs/r1", ws / "runs/r2")
    (ws / "runs/r2/run.json").write_text(json.dumps({"parent_run": "r1"}))
    assert sft_run(ws) == "r1" and sft_run(ws, "r2") == "r2"
    shutil.rmtree(ws / "runs")
    assert sft_run(ws, required=False) == ""
    with pytest.raises(WorkspaceError, match="04_train"):
        build(ws, sources=["metric"])


def test_choose_rows_is_seeded_and_zero_means_all():
    rows = [{"i": i} for i in range(10)]
    assert choose_rows(rows, 3, 1) == choose_rows(rows, 3, 1) != choose_rows(rows, 3, 2)
    assert len(choose_rows(rows, 3, 1)) == 3 and len(choose_rows(rows, 50, 1)) == 10
    assert sorted(r["i"] for r in choose_rows(rows, 0, 1)) == list(range(10))


def test_config_round_trips_and_rejects_bad_values(tmp_path):
    config = PairsConfig(
        workspace="w",
        parent_run="r",
        sources=["metric", "files"],
        files=["a.jsonl"],
        samples_per_prompt=3,
        max_prompts=0,
        temperature=0.8,
        top_p=0.9,
        max_new_tokens=20,
        min_margin=0.5,
        seed=7,
    )
    assert PairsConfig.from_dict(config.to_dict()) == config
    assert PairsConfig.load(config.save(tmp_path / "pairs.json")).to_dict() == config.to_dict()
    for name, value in (
        ("sources", []),
        ("sources", ["votes"]),
        ("sources", "metric"),
        ("files", "a.jsonl"),
        ("samples_per_prompt", 1),
        ("max_prompts", -1),
        ("temperature", 0.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("max_new_tokens", -1),
        ("min_margin", 0.0),
        ("min_margin", 1.5),
        ("workspace", ""),
    ):
        with pytest.raises(ConfigError, match=f"`{name}`"):
            PairsConfig(**{name: value})
    with pytest.warns(UserWarning, match="`files` is ignored"):
        PairsConfig(files=["a.jsonl"], sources=["metric"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PairsConfig(files=["a.jsonl"])


# -- on a real SFT run ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_sft(sft_run, tmp_path_factory):
    """A private copy of the shared SFT workspace (its data and run "sft"): build_pairs writes data/preferences/."""
    ws, run_id = sft_run
    root = tmp_path_factory.mktemp("preferences") / "ws"
    shutil.copytree(ws / "data", root / "data")
    shutil.copytree(ws / "runs" / run_id, root / "runs" / run_id)
    return root, run_id


@pytest.fixture(scope="module")
def chat_model(own_sft):
    from nbkit.model.loader import load_chat_model

    return load_chat_model(*own_sft)


@pytest.mark.model
def test_metric_pairs_prefer_the_higher_scoring_sample_on_training_prompts(own_sft, chat_model):
    from nbkit.core.metrics import kind_of, row_score

    root, run_id = own_sft
    report = build_pairs(
        PairsConfig(workspace=str(root), sources=["metric"], max_prompts=5, seed=3),
        progress=False,
        chat_model=chat_model,
    )
    counts = report["sources"]["metric"]
    assert report["run_id"] == run_id and counts["read"] == 5 and counts["kept"] + counts["no_margin"] == 5
    pairs = read_jsonl(Workspace(root).pairs)
    assert pairs, f"no sampled answers differed by min_margin: {counts}"
    train = {prompt_key(asked(r["messages"])): r for r in read_jsonl(Workspace(root).split("train"))}
    kind = kind_of([r["messages"][-1]["content"] for r in train.values() if not r["meta"].get("replay")])
    for pair in pairs:
        origin, (chosen, worse) = pair["origin"], sides(pair)
        assert prompt_key(pair["prompt"]) in train
        reference = pair["reference"]
        assert reference == train[prompt_key(pair["prompt"])]["messages"][-1]["content"]
        assert row_score(chosen, reference, kind) - row_score(worse, reference, kind) >= 0.1
        assert origin["scores"][origin["chosen_index"]] > origin["scores"][origin["rejected_index"]]
        assert len(origin["scores"]) == 4 and origin["metric"] == "field_accuracy"


@pytest.mark.model
def test_sample_rating_pairs_gives_two_answers_to_training_prompts(own_sft, chat_model):
    root, _ = own_sft
    rows = read_jsonl(Workspace(root).split("train"))[:20]
    settings = SamplingSettings(max_new_tokens=8, temperature=1.0, top_p=1.0)
    pairs = sample_rating_pairs(*chat_model, rows, 2, 0, settings)
    assert pairs == sample_rating_pairs(*chat_model, rows, 2, 0, settings)  # seeded
    assert 1 <= len(pairs) <= 2
    prompts = {json.dumps(asked(r["messages"])) for r in rows}
    for pair in pairs:
        assert json.dumps(pair["prompt"]) in prompts and pair["A"] != pair["B"] and pair["reference"]
    save_preference_rating(root, pairs[0], "B")
    report = build_pairs(PairsConfig(workspace=str(root), sources=["ratings"]), progress=False)
    assert report["sources"]["rating"]["kept"] == 1
    assert sides(read_jsonl(Workspace(root).pairs)[0]) == (pairs[0]["B"], pairs[0]["A"])
    with pytest.raises(ConfigError, match="`temperature`"):
        sample_rating_pairs(*chat_model, rows, 2, 0, SamplingSettings(temperature=0))

"""The replay guard (nbkit.data.replay) and the forgetting probe it is judged by (nbkit.evaluate.forgetting)."""

from __future__ import annotations

import json

import pytest

from nbkit.core.files import read_jsonl
from nbkit.core.rows import is_replay
from nbkit.core.workspace import Workspace
from nbkit.data import replay
from nbkit.data.near_duplicates import cross_near_duplicates, normalize_text
from nbkit.evaluate.forgetting import (
    FORGETTING_PROBE,
    KEPT_ENOUGH,
    forgetting_reading,
    forgetting_scores,
    kept_share,
    probe_conversations,
)
from nbkit.model.loader import EMBEDDED_MODEL


def test_replay_fills_the_share_of_the_training_split():
    assert replay.replay_needed(320, 0.15) == 57  # 57 of 377 training rows: 15.1%
    assert replay.replay_needed(85, 0.15) == 15  # exactly 15%: no row more than needed
    assert replay.replay_needed(320, 0.0) == 0 and replay.replay_needed(0, 0.15) == 0
    for n, share in ((10, 0.05), (320, 0.15), (1000, 0.5)):
        rows = replay.replay_needed(n, share)
        assert rows / (n + rows) >= share > (rows - 1) / (n + rows - 1)


def test_probe_and_replay_prompts_never_overlap():
    probe = [q.question for q in FORGETTING_PROBE]
    assert len(probe) >= 40 and len(set(probe)) == len(probe)
    assert {q.kind for q in FORGETTING_PROBE} == {"fact", "arithmetic", "instruction", "formatting", "refusal"}
    assert len(set(replay.REPLAY_PROMPTS)) == len(replay.REPLAY_PROMPTS) >= 120
    assert not {normalize_text(q) for q in probe} & {normalize_text(p) for p in replay.REPLAY_PROMPTS}
    # Not even reworded: no probe question is a near-duplicate of a replay prompt at the kit's own threshold.
    assert cross_near_duplicates(probe, list(replay.REPLAY_PROMPTS), 0.8) == []
    assert all(c == [{"role": "user", "content": q}] for c, q in zip(probe_conversations(), probe))  # no system


def test_the_probe_reads_as_kept_of_the_base_models_right_answers():
    n = len(FORGETTING_PROBE)
    right = [" ".join(q.expected) for q in FORGETTING_PROBE]
    base = right[:40] + ["no idea"] * (n - 40)
    tuned = right[:38] + ['{"team": "billing"}'] * 2 + right[40:41] + ["no idea"] * (n - 41)
    result = forgetting_scores(base, tuned)
    assert (result["base_right"], result["kept"], result["lost"], result["gained"]) == (40, 38, 2, 1)
    assert result["reading"].startswith(f"kept 38 of 40 general answers the base model got right (of {n} questions)")
    assert "got 1 more right" in result["reading"] and "forgot" not in result["reading"]
    assert sum(k["n"] for k in result["by_kind"].values()) == n
    forgot = forgetting_scores(base, ['{"team": "billing"}'] * n)
    assert kept_share(forgot) == 0 < KEPT_ENOUGH and "replay_share" in forgetting_reading(forgot)


def test_replay_answers_are_generated_once_cached_and_marked(tmp_path, monkeypatch):
    monkeypatch.setattr(replay, "cache_dir", lambda: tmp_path)
    rows, report = replay.replay_rows(EMBEDDED_MODEL, 3)
    assert len(rows) == 3 and report["generated"] >= 3 and report["asked"] >= 3
    for row in rows:
        assert row["meta"] == {
            "source": "replay",
            "index": row["meta"]["index"],
            "replay": True,
            "model": EMBEDDED_MODEL,
        } and is_replay(row)
        user, answer = row["messages"]
        assert user == {"role": "user", "content": replay.REPLAY_PROMPTS[row["meta"]["index"]]}
        assert answer["role"] == "assistant" and answer["content"]  # the model's own words, ended by itself
    cached = [json.loads(line) for line in open(report["cache"], encoding="utf-8")]
    assert [c["prompt"] for c in cached] == list(replay.REPLAY_PROMPTS[: len(cached)])

    import nbkit.model.loader

    def no_model(*args, **kwargs):
        raise AssertionError("the cache holds these answers: no model load")

    monkeypatch.setattr(nbkit.model.loader, "load_model", no_model)
    again, second = replay.replay_rows(EMBEDDED_MODEL, 3)
    assert again == rows and second["generated"] == 0
    with pytest.raises(AssertionError, match="no model load"):  # more rows than cached: the model answers the rest
        replay.replay_rows(EMBEDDED_MODEL, 3 + len(cached))


def test_replay_rows_go_to_train_only(prepared_workspace):
    ws = Workspace(prepared_workspace)
    manifest = json.loads(ws.manifest.read_text())
    pool = read_jsonl(ws.replay)
    assert manifest["replay"]["enabled"] and manifest["replay"]["rows"] == 57 == replay.replay_needed(
        320, replay.DEFAULT_SHARE
    )
    assert manifest["sizes"] == {"train": 377, "validation": 40, "test": 40}
    train = read_jsonl(ws.split("train"))
    assert sum(map(is_replay, train)) == 57 and [r["messages"] for r in train if is_replay(r)] != []
    assert {json.dumps(r["messages"]) for r in train if is_replay(r)} <= {json.dumps(r["messages"]) for r in pool}
    for name in ("validation", "test"):
        assert not any(is_replay(r) for r in read_jsonl(ws.split(name))), name
    assert sum(manifest["labels"]["train"].values()) == 320  # the task's labels: replay rows are not a class
    assert all(r["messages"][0]["role"] == "user" for r in pool)  # no task system prompt on a replay row
    report = json.loads(ws.format_report.read_text())["replay"]
    assert report["rows"] == len(pool) >= 57 and report["share"] == replay.DEFAULT_SHARE == 0.15


def test_the_switch_off_leaves_training_without_replay(tmp_path):
    from nbkit.data.collect import CollectConfig, collect
    from nbkit.data.formatting import FormatConfig, format_rows
    from nbkit.data.split import SplitConfig, split_dataset

    ws = Workspace(tmp_path)
    collect(CollectConfig(workspace=str(ws.root)))
    assert format_rows(FormatConfig(workspace=str(ws.root), replay_guard=False))["replay"] == {
        "enabled": False,
        "rows": 0,
    }
    assert read_jsonl(ws.replay) == []
    manifest = split_dataset(SplitConfig(workspace=str(ws.root)))
    assert manifest["replay"]["rows"] == 0 and manifest["sizes"]["train"] == 320
    assert not any(is_replay(r) for r in read_jsonl(ws.split("train")))


def test_replay_share_is_checked():
    from nbkit.core.errors import ConfigError
    from nbkit.data.formatting import FormatConfig

    with pytest.raises(ConfigError, match=r"`replay_share` must be between 0.05 and 0.5, got 0.9 .*replay_guard"):
        FormatConfig(replay_share=0.9)

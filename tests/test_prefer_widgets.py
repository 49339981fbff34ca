"""06's panels in plain pytest: one setting shown once for both configs, ratings saved by the buttons and turned
into pairs, the pair viewer, and nothing sampled under papermill."""

from __future__ import annotations

from nbkit.core.files import read_appended, write_jsonl
from nbkit.core.workspace import Workspace
from nbkit.train.prefer.config import PairsConfig, PreferConfig
from nbkit.train.prefer.pair_report import load_pairs
from nbkit.train.prefer.pairs import build_pairs
from nbkit.widgets import PreferenceRatingPanel, pairs_viewer, prefer_panel, preference_rating

PROMPT = [{"role": "user", "content": "My parcel is late."}]


def workspace_with_train(tmp_path):
    ws = Workspace(tmp_path)
    rows = [{"messages": PROMPT + [{"role": "assistant", "content": '{"team": "shipping"}'}], "meta": {}}]
    write_jsonl(ws.split("train"), rows)
    write_jsonl(ws.split("test"), [])
    return ws


def test_shared_settings_are_edited_once_for_both_configs():
    pairs_config, config = PairsConfig(), PreferConfig()
    panel = prefer_panel(pairs_config, config)
    assert "parent_run" not in panel.pairs.inputs and "temperature" not in panel.pairs.inputs
    panel.training.inputs["parent_run"].value = "20260101-sft"
    panel.training.inputs["temperature"].value = 0.7
    panel.training.inputs["seed"].value = 3
    assert (pairs_config.parent_run, pairs_config.temperature, pairs_config.seed) == ("20260101-sft", 0.7, 3)
    panel.training.inputs["method"].value = "grpo"
    assert config.method == "grpo"
    panel.training.inputs["num_generations"].value = 3  # batch 4 is no multiple of 3: refused, field named
    assert config.num_generations == 4 and "batch_size" in panel.training.error.value
    panel.pairs.inputs["sources"].value = "metric\nbogus"
    assert (
        pairs_config.sources == ["ratings", "corrections", "metric", "files"] and "sources" in panel.pairs.error.value
    )


def test_rating_buttons_save_choices_that_become_pairs(tmp_path):
    ws = workspace_with_train(tmp_path)
    candidates = [
        {
            "prompt": PROMPT,
            "reference": '{"team": "shipping"}',
            "A": '{"team": "billing"}',
            "B": '{"team": "shipping"}',
        },
        {"prompt": PROMPT, "reference": "", "A": "one", "B": "two"},
    ]
    panel = PreferenceRatingPanel(str(tmp_path), candidates)
    assert "My parcel is late." in panel.view.value and panel.progress.value == "rated 0 of 2"
    panel.buttons["B"].click()
    panel.buttons["tie"].click()
    assert panel.progress.value == "rated 2 of 2" and all(b.disabled for b in panel.buttons.values())
    panel.buttons["A"].click()  # nothing left: the error is shown, nothing saved
    assert "every sampled pair is rated" in panel.status.value
    saved = read_appended(ws.preference_ratings)
    assert [r["choice"] for r in saved] == ["B", "tie"]
    report = build_pairs(PairsConfig(workspace=str(tmp_path), sources=["ratings"]))
    assert report["sources"]["rating"]["kept"] == 1 and report["sources"]["rating"]["ties"] == 1
    (pair,) = load_pairs(tmp_path)
    assert (
        pair["chosen"][0]["content"] == '{"team": "shipping"}'
        and pair["rejected"][0]["content"] == '{"team": "billing"}'
    )
    viewer = pairs_viewer([pair])
    assert "nbkit-pair-chosen" in viewer.view.value and "rating" in viewer.view.value


def test_nothing_is_sampled_under_papermill(tmp_path, monkeypatch):
    monkeypatch.setattr("nbkit.widgets.prefer.candidates_to_rate", lambda config: (_ for _ in ()).throw(AssertionError))
    assert preference_rating(PairsConfig(workspace=str(tmp_path)), interactive=False) is None
    assert preference_rating(PairsConfig(workspace=str(tmp_path), rate_prompts=0), interactive=True) is None

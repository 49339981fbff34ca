"""Chat playground on a real (tiny) run: streamed replies equal plain greedy generation, the panel's Send
fills the transcript, and a promoted exchange is a manual example that collect keeps."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from nbkit.core.files import read_jsonl
from nbkit.core.messages import RecordError
from nbkit.core.train_config import TrainConfig
from nbkit.core.workspace import Workspace
from nbkit.data.collect import CollectConfig, collect
from nbkit.data.manual import promote
from nbkit.model.generation import stream_reply
from nbkit.model.loader import load_chat_model
from nbkit.train.sft import train

pytestmark = pytest.mark.model

QUESTION = [{"role": "user", "content": "Where is my parcel? It was due on Monday."}]
FEW = 12  # tokens per reply: enough for several chunks, cheap on 2 CPU cores


@pytest.fixture(scope="module")
def play_workspace(prepared_workspace, tmp_path_factory):
    """A private copy of the prepared workspace's data with a 2-step run "play", its only run (the original
    belongs to other tests, which add runs of their own)."""
    ws = tmp_path_factory.mktemp("playground") / "ws"
    shutil.copytree(prepared_workspace / "data", ws / "data")
    train(
        TrainConfig(
            workspace=str(ws),
            run_id="play",
            max_steps=2,
            batch_size=4,
            max_seq_len=160,
            eval_steps=0,
            lora_r=8,
            lora_alpha=16,
            logging_steps=1,
        ),
        on_log=None,
    )
    return ws


@pytest.fixture(scope="module")
def chat_model(play_workspace):
    return load_chat_model(play_workspace, "play")


def test_streamed_reply_equals_greedy_generation(chat_model):
    import torch

    model, tokenizer = chat_model
    pieces = list(stream_reply(model, tokenizer, QUESTION, max_new_tokens=FEW, temperature=0, top_p=1.0))
    assert len(pieces) >= 3 and all(isinstance(p, str) and p for p in pieces)
    text = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    # Generated in a worker thread like the streamed reply: on a busy 2-core machine torch's main-thread
    # thread pool can spin against other processes and take ~40x longer for the same tokens.
    with ThreadPoolExecutor(1) as pool, torch.no_grad():
        out = pool.submit(
            model.generate, **inputs, max_new_tokens=FEW, do_sample=False, pad_token_id=tokenizer.pad_token_id
        ).result()
    expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "".join(pieces).strip() == expected.strip()


def test_stream_reply_validates_settings(chat_model):
    from nbkit.core.errors import ConfigError

    with pytest.raises(ConfigError, match="`top_p`"):
        list(stream_reply(*chat_model, QUESTION, max_new_tokens=FEW, temperature=0.7, top_p=0))


def test_panel_send_fills_the_transcript_and_promote_feeds_collect(play_workspace, chat_model):
    import nbkit.widgets as nw

    panel = nw.ChatPlayground(str(play_workspace))  # empty run_id = the latest run
    assert panel.run_id == "play" and "nbkit-playground-send" in panel.send_button._dom_classes
    panel.model, panel.tokenizer = chat_model  # already loaded: skip the lazy load
    panel.settings.inputs["max_new_tokens"].value = FEW
    panel.settings.inputs["temperature"].value = 0.0
    panel.system.value = "You route support tickets."
    panel.user.value = QUESTION[0]["content"]
    reply = panel.send()
    assert reply and panel.answer.value == reply and panel.user.value == ""
    assert "Where is my parcel?" in panel.transcript.value and "You route support tickets." in panel.transcript.value
    assert reply.split()[0] in panel.transcript.value and "▌" not in panel.transcript.value
    assert panel.redraws >= 1 and "replied" in panel.status.value

    panel.answer.value = '{"team": "shipping"}'  # the corrected answer is what gets promoted
    panel.promote_button.click()
    manual = Workspace(play_workspace).manual
    assert "saved to" in panel.promote_status.value and str(manual) in panel.promote_status.value
    row = read_jsonl(manual)[-1]
    assert row["promoted_from"] == "play"
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["messages"][-1]["content"] == '{"team": "shipping"}'
    assert row["model_answer"] == reply  # the model's own answer, kept for stage 06's preference pairs

    panel.promote_button.click()  # the same exchange again is refused with the reason
    assert "not saved" in panel.promote_status.value and "same conversation" in panel.promote_status.value
    assert len(read_jsonl(manual)) == 1

    report = collect(CollectConfig(workspace=str(play_workspace)))
    kept = [r for r in read_jsonl(Workspace(play_workspace).clean) if r["meta"].get("promoted_from") == "play"]
    assert len(kept) == 1 and kept[0]["messages"] == row["messages"]
    assert report["sources"][str(manual)] == {"read": 1, "kept": 1, "rejected": 0}
    assert kept[0]["meta"]["model_answer"] == reply


def test_promote_refuses_duplicates_and_invalid_exchanges(play_workspace):
    exchange = QUESTION + [{"role": "assistant", "content": "It is on its way."}]
    path, line = promote(play_workspace, exchange, "play", model_answer=" It is on  its way. ")
    written = json.loads(path.read_text().splitlines()[line - 1])
    assert written["promoted_from"] == "play" and "model_answer" not in written  # not corrected: not recorded
    with pytest.raises(RecordError, match="same conversation"):
        promote(play_workspace, exchange, "play")
    with pytest.raises(RecordError):
        promote(play_workspace, QUESTION, "play")  # no answer: collect would reject it too


def test_send_errors_are_shown_and_the_message_is_kept(play_workspace, monkeypatch):
    import nbkit.widgets as nw
    import nbkit.widgets.playground as playground_panel

    panel = nw.ChatPlayground(str(play_workspace), "play")
    panel.model, panel.tokenizer = object(), object()

    def broken(*_args, **_kwargs):
        raise RuntimeError("out of memory")
        yield  # pragma: no cover

    monkeypatch.setattr(playground_panel, "stream_reply", broken)
    panel.user.value = "hello"
    panel.send_button.click()
    assert "out of memory" in panel.status.value and panel.user.value == "hello" and panel.messages == []
    panel.promote_button.click()
    assert "send a message first" in panel.promote_status.value

"""Shared fixtures: offline hub, one embedded-model load per session, a prepared workspace."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture(scope="session")
def tokenizer():
    from nbkit.model.loader import EMBEDDED_MODEL, load_tokenizer

    return load_tokenizer(EMBEDDED_MODEL)


@pytest.fixture(scope="session")
def prepared_workspace(tmp_path_factory) -> Path:
    """Sample data collected, formatted and split once per session (stages 01-03). The replay guard's answers
    come from the machine's cache (the model answers once per machine)."""
    from nbkit.data.collect import CollectConfig, collect
    from nbkit.data.formatting import FormatConfig, format_rows
    from nbkit.data.split import SplitConfig, split_dataset

    ws = tmp_path_factory.mktemp("prepared")
    collect(CollectConfig(workspace=str(ws)))
    format_rows(FormatConfig(workspace=str(ws)))
    split_dataset(SplitConfig(workspace=str(ws)))
    return ws


@pytest.fixture(scope="session")
def family_model():
    """family_model(name) -> the folder of a tiny random-weight model with that family's real tokenizer and chat
    template (tests/families.py); skips with the reason when llama.cpp's tokenizer files cannot be had."""
    import families

    problem = families.assets_problem()

    def build(name: str) -> Path:
        if problem:
            pytest.skip(problem)
        if name == "gemma3":
            import importlib.util

            from nbkit.model.loader import EMBEDDED_GEMMA, EMBEDDED_MODELS

            if importlib.util.find_spec(EMBEDDED_MODELS[EMBEDDED_GEMMA][0]) is None:
                pytest.skip(f"the Gemma 3 tokenizer comes with {EMBEDDED_GEMMA}: {EMBEDDED_MODELS[EMBEDDED_GEMMA][2]}")
        return families.build(name)

    return build


@pytest.fixture(scope="session")
def sft_run(prepared_workspace, tmp_path_factory) -> tuple[Path, str]:
    """(workspace, run_id): one small finished QLoRA run on the embedded model, in its own copy of the prepared
    workspace — the SFT parent the preference tests share (trained once per session). Tests that write into
    this workspace use their own run ids and file names, and never rely on "the latest run"."""
    import shutil

    from nbkit.core.train_config import TrainConfig
    from nbkit.train.sft import train

    ws = tmp_path_factory.mktemp("sft") / "workspace"
    shutil.copytree(prepared_workspace / "data", ws / "data")
    train(
        TrainConfig(
            workspace=str(ws),
            run_id="sft",
            max_steps=8,
            batch_size=4,
            max_seq_len=160,
            learning_rate=2e-3,
            logging_steps=1,
            eval_steps=0,
            lora_r=8,
            lora_alpha=16,
        ),
        on_log=None,
    )
    return ws, "sft"

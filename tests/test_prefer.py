"""Stage 06 training: DPO and GRPO really train from the SFT run, against the SFT model as the reference, and
leave a run folder that 05 evaluates like any other."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from nbkit.core.config import Config
from nbkit.core.errors import ConfigError, WorkspaceError
from nbkit.core.files import read_json, read_jsonl, write_json, write_jsonl
from nbkit.core.rows import is_replay, prompt_messages, reference_answer
from nbkit.core.runs import read_metrics, resolve_parent
from nbkit.core.workspace import Workspace
from nbkit.train.prefer.config import PreferConfig, preference_memory_estimate
from nbkit.train.prefer.data import hold_out
from nbkit.train.prefer.trainer import build_prefer_trainer, format_prefer_log, prefer

pytestmark = pytest.mark.model

TINY = dict(parent_run="sft", batch_size=2, logging_steps=1, save_steps=1, eval_steps=0)


def wrong_answer(answer: str) -> str:
    """A worse answer to the same ticket: the right JSON with its priority changed."""
    row = json.loads(answer)
    row["priority"] = "low" if row.get("priority") != "low" else "urgent"
    return json.dumps(row)


def write_pairs(ws: Workspace, n: int = 24) -> None:
    rows = [r for r in read_jsonl(ws.split("train")) if not is_replay(r)][:n]
    write_jsonl(
        ws.pairs,
        [
            {
                "prompt": prompt_messages(r["messages"]),
                "chosen": [{"role": "assistant", "content": reference_answer(r["messages"])}],
                "rejected": [{"role": "assistant", "content": wrong_answer(reference_answer(r["messages"]))}],
                "source": "file",
                "origin": {"file": "test_prefer", "line": i},
                "reference": "x",
            }
            for i, r in enumerate(rows)
        ],
    )


@pytest.fixture(scope="module")
def workspace(sft_run):
    root, _ = sft_run
    ws = Workspace(root)
    if not ws.pairs.exists():
        write_pairs(ws)
    return ws


def adapter_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def moved(before: dict, after: dict) -> list[str]:
    return [k for k in before if "lora_B" in k and not before[k].equal(after[k])]


def test_config_round_trips_and_names_the_field(tmp_path):
    config = PreferConfig(workspace=str(tmp_path), method="grpo", num_generations=2, batch_size=4, beta=0.02)
    path = config.save(tmp_path / "config.json")
    assert PreferConfig.load(path) == config and PreferConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    for bad, field in (
        (dict(method="ppo"), "method"),
        (dict(method="grpo", batch_size=3, num_generations=2), "batch_size"),
        (dict(num_generations=1), "num_generations"),
        (dict(method="dpo", beta=0), "beta"),
        (dict(sft_weight=-0.5), "sft_weight"),
        (dict(max_length=64, max_prompt_length=64), "max_prompt_length"),
        (dict(parent_run="../x"), "parent_run"),
    ):
        with pytest.raises(ConfigError, match=f"`{field}`"):
            PreferConfig(**bad)
    assert isinstance(config, Config)


def test_the_default_parent_is_the_latest_sft_run_and_a_missing_one_says_what_to_run(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(WorkspaceError, match="run 04_train first"):
        resolve_parent(ws)
    for run_id, record in (("1-sft", {"method": "qlora"}), ("2-dpo", {"method": "qlora", "parent_run": "1-sft"})):
        write_json(ws.run_dir(run_id) / "adapter" / "adapter_config.json", {})
        write_json(ws.run_dir(run_id) / "run.json", record)
    assert resolve_parent(ws)[0] == "1-sft" and resolve_parent(ws, "2-dpo")[0] == "2-dpo"
    with pytest.raises(WorkspaceError, match="`parent_run` 'nope'"):
        resolve_parent(ws, "nope")


def test_held_out_pairs_keep_each_prompt_on_one_side():
    pairs = [{"prompt": [{"role": "user", "content": str(i // 2)}]} for i in range(40)]
    train, held = hold_out(pairs, seed=1)
    assert len(held) == 4 and len(train) == 36
    assert not {p["prompt"][0]["content"] for p in held} & {p["prompt"][0]["content"] for p in train}
    assert hold_out(pairs[:10], seed=1) == (pairs[:10], [])


def test_missing_pairs_name_the_cell_that_builds_them(workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(workspace.root / "data" / "splits", root / "data" / "splits")
    parent = workspace.run_dir("sft")
    for name in ("run.json", "config.json", "adapter/adapter_config.json"):
        (root / "runs" / "sft" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(parent / name, root / "runs" / "sft" / name)
    with pytest.raises(WorkspaceError, match="'Build the pairs' cell of 06_prefer"):
        prefer(PreferConfig(workspace=str(root), **TINY), on_log=None)


def test_dpo_reference_is_the_sft_model_and_only_the_policy_adapter_moves(workspace, tmp_path):
    import torch
    from trl.trainer.utils import use_adapter

    trainer, _, config, _ = build_prefer_trainer(
        PreferConfig(workspace=str(workspace.root), max_steps=2, **TINY), tmp_path
    )
    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"} and config.beta == 0.1 and config.learning_rate == 5e-5
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)

    def logps(adapter):
        with torch.no_grad(), use_adapter(model, adapter), trainer.accelerator.autocast():  # as the trainer does
            out = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels, fused_lm_head=True
            )
        return out.log_probs.sum(dim=1)

    reference = torch.cat(trainer.compute_ref_log_probs(model, batch))
    assert torch.equal(reference, logps("default")), "the reference should be the SFT policy it starts from"
    assert (reference - logps(None)).abs().min() > 1, "the reference looks like the adapter-disabled base model"

    named = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    assert any(not p.dtype.is_floating_point for p in before.values()), "expected 4-bit packed base weights"
    assert all(p.requires_grad == (".default." in n) for n, p in named.items())
    trainer.train()
    after = dict(model.named_parameters())
    policy = [n for n in before if ".default." in n and "lora_B" in n]
    assert all(not after[n].detach().equal(before[n]) for n in policy), "every policy LoRA B should move"
    assert all(after[n].detach().equal(before[n]) for n in before if ".default." not in n), "base or ref moved"


@pytest.fixture(scope="module")
def dpo_run(workspace):
    config = PreferConfig(workspace=str(workspace.root), run_id="dpo-test", max_steps=2, **TINY)
    first = prefer(config, on_log=None)
    resumed = prefer(config.replace(run_id="dpo-test", resume=True, max_steps=3), on_log=None)
    return first, resumed


def test_dpo_run_is_recorded_resumes_and_loads_like_any_run(workspace, dpo_run):
    from nbkit.model.loader import load_trained_model

    first, run = dpo_run
    run_dir = workspace.run_dir("dpo-test")
    assert first["steps"] == 2 and run["steps"] == 3 and run["resumed_from"] == "checkpoint-2"
    assert run["parent_run"] == "sft" and run["objective"] == "dpo" and run["method"] == "qlora"
    assert run["lineage"] == [run["base_model"], "sft", "dpo-test"]
    parent = read_json(workspace.run_dir("sft") / "run.json")
    assert run["dataset"]["fingerprints"] == parent["dataset"]["fingerprints"]
    assert run["dataset"]["pairs"]["train"] + run["dataset"]["pairs"]["eval"] == 24
    logs = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in logs] == [1, 2, 3], "resume must drop nothing and repeat nothing"
    assert all("rewards/margins" in r and "rewards/accuracies" in r for r in logs)
    assert logs[0]["rewards/margins"] == 0, "at step 1 the policy is the reference: no margin yet"
    # sft_weight 1 (the default): the SFT loss on the chosen answers adds to DPO's ln 2 at step 1
    assert logs[0]["loss"] > math.log(2) + 0.01, logs[0]
    assert "margin" in format_prefer_log(logs[-1])
    assert PreferConfig.load(run_dir / "config.json").parent_run == "sft"
    assert moved(adapter_weights(workspace.run_dir("sft") / "adapter"), adapter_weights(run_dir / "adapter"))
    assert not (run_dir / "adapter" / "ref").exists(), "only the policy adapter is saved"
    model = load_trained_model(read_json(run_dir / "run.json"), run_dir)
    assert list(model.peft_config) == ["default"]


def test_grpo_logs_its_rewards_and_moves_the_adapter(workspace):
    config = PreferConfig(
        workspace=str(workspace.root),
        method="grpo",
        run_id="grpo-test",
        max_steps=1,
        num_generations=4,
        max_completion_length=16,
        temperature=1.3,
        **{**TINY, "batch_size": 4},
    )
    run = prefer(config, on_log=None)
    run_dir = workspace.run_dir("grpo-test")
    assert run["objective"] == "grpo" and run["beta"] == 0.0 and run["dataset"]["prompts"]["kind"] == "json"
    logs = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert {"reward", "rewards/task_score/mean", "rewards/valid_json/mean"} <= set(logs[0])
    assert logs[0]["frac_reward_zero_std"] < 1, "the sampled answers should score differently"
    assert moved(adapter_weights(workspace.run_dir("sft") / "adapter"), adapter_weights(run_dir / "adapter"))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_lora_and_full_parents(workspace, tmp_path, method):
    from nbkit.core.train_config import TrainConfig
    from nbkit.model.loader import load_trained_model
    from nbkit.train.sft import train

    root = tmp_path / "ws"
    shutil.copytree(workspace.root / "data", root / "data")
    shutil.rmtree(root / "data" / "preferences", ignore_errors=True)
    write_pairs(Workspace(root), n=8)  # too few to hold some out: no evaluation pass
    train(
        TrainConfig(
            workspace=str(root),
            run_id=f"sft-{method}",
            method=method,
            max_steps=1,
            batch_size=2,
            max_seq_len=128,
            learning_rate=1e-4,
            eval_steps=0,
            lora_r=4,
            lora_alpha=8,
            report_to="none",
        ),
        on_log=None,
    )
    estimate = preference_memory_estimate(PreferConfig(workspace=str(root)))
    assert any(k.startswith("reference") for k in estimate.parts_gib)
    plain = method == "lora"  # sft_weight 0: plain DPO, whose loss is ln 2 while the policy is its reference
    run = prefer(
        PreferConfig(
            workspace=str(root),
            run_id=f"dpo-{method}",
            max_steps=1,
            sft_weight=0.0 if plain else 1.0,
            **{**TINY, "parent_run": f"sft-{method}"},
        ),
        on_log=None,
    )
    (first,) = [r for r in read_metrics(Workspace(root).run_dir(f"dpo-{method}") / "metrics.jsonl") if "loss" in r]
    assert (abs(first["loss"] - math.log(2)) < 1e-3) == plain, first
    assert run["method"] == method and run["parent_run"] == f"sft-{method}" and run["steps"] == 1
    ws = Workspace(root)
    parent_dir, run_dir = ws.run_dir(f"sft-{method}"), ws.run_dir(f"dpo-{method}")
    if method == "full":
        from safetensors.torch import load_file

        before, after = (load_file(str(d / "model" / "model.safetensors")) for d in (parent_dir, run_dir))
        assert any(not before[k].equal(after[k]) for k in before), "DPO should move the full model's weights"
        assert PreferConfig.load(run_dir / "config.json").learning_rate == 5e-6
    else:
        assert moved(adapter_weights(parent_dir / "adapter"), adapter_weights(run_dir / "adapter"))
    load_trained_model(run, run_dir)

"""Precision and placement on every device users train on, and every training option taken for real.

The plan (nbkit.devices.plan_for) is a pure function of the device's facts, so a T4, an L4, an A100, an
H100, Apple MPS and a CPU are all checked here. The fp16 path a T4 takes runs for real on this CPU
(transformers accepts fp16 with use_cpu, and torch has a CPU gradient scaler): QLoRA, LoRA and full
fine-tuning. So do each batching mode and gradient checkpointing on and off.
"""

from __future__ import annotations

import gc
import math

import pytest

from nbkit.devices import DeviceFacts, forced, plan_for
from nbkit.models import pick_device
from nbkit.train import BATCHING, CHECKPOINTING, TRAIN_METHODS, TrainConfig, build_trainer, read_metrics, train

T4 = DeviceFacts("cuda", "Tesla T4", 14.7, (7, 5))
L4 = DeviceFacts("cuda", "NVIDIA L4", 22.0, (8, 9))
A100 = DeviceFacts("cuda", "NVIDIA A100-SXM4-40GB", 39.4, (8, 0))
H100 = DeviceFacts("cuda", "NVIDIA H100 80GB HBM3", 79.1, (9, 0))
MPS = DeviceFacts("mps", "CPU", 16.0)
CPU = DeviceFacts("cpu", "CPU", 24.0)
CPU_BF16 = DeviceFacts("cpu", "CPU", 24.0, cpu_bf16=True)

TINY = dict(max_steps=2, batch_size=2, max_seq_len=96, lora_r=4, lora_alpha=8, logging_steps=1, eval_steps=0,
            save_steps=2, early_stopping_patience=0, load_best=False, report_to="none", learning_rate=2e-3)


@pytest.mark.parametrize("facts, compute, autocast", [
    (T4, "float16", "fp16"), (L4, "bfloat16", "bf16"), (A100, "bfloat16", "bf16"), (H100, "bfloat16", "bf16"),
    (MPS, "float32", "none"), (CPU, "float32", "none"), (CPU_BF16, "float32", "bf16"),
])
def test_precision_follows_native_support_not_emulation(facts, compute, autocast):
    """A T4 (7.5) has no native bf16, although torch.cuda.is_bf16_supported() says True there (emulation)."""
    plan = plan_for(facts, "qlora")
    assert (plan.compute_dtype, plan.autocast) == (compute, autocast)
    assert plan.trainable_dtype == "float32", "the gradient scaler and the optimizer want float32 trainable weights"
    assert plan.device == ("cuda" if facts.kind == "cuda" else "cpu"), "MPS trains on the CPU (no 4-bit kernels)"
    assert ("no native bf16" in plan.reason) == (facts is T4)


@pytest.mark.parametrize("facts", [T4, L4, A100, H100, CPU])
def test_full_fine_tuning_loads_float32_weights_and_adapters_load_half(facts):
    full, lora = plan_for(facts, "full"), plan_for(facts, "lora")
    assert full.weights_dtype == "float32", "fp16 weights that train give fp16 gradients: the scaler refuses them"
    assert lora.weights_dtype == lora.compute_dtype


def test_paged_adamw_on_cuda_only():
    assert plan_for(T4).optimizer == plan_for(H100, "full").optimizer == "paged_adamw_32bit"
    assert plan_for(CPU).optimizer == plan_for(MPS).optimizer == "adamw_torch_fused"
    no_bnb = DeviceFacts("cuda", "Tesla T4", 14.7, (7, 5), bitsandbytes=False)
    assert plan_for(no_bnb).optimizer == "adamw_torch_fused"


def test_fsdp_stores_4bit_weights_and_adapters_in_one_dtype():
    for facts in (DeviceFacts("cuda", "Tesla T4", 14.7, (7, 5), world_size=2, fsdp=True),
                  DeviceFacts("cuda", "NVIDIA A100", 79.0, (8, 0), world_size=4, fsdp=True)):
        plan = plan_for(facts, "qlora")
        assert plan.quant_storage == plan.compute_dtype == plan.trainable_dtype
    assert plan_for(H100, "qlora").quant_storage is None


def test_evaluation_batches_grow_with_gpu_memory():
    sizes = [plan_for(f).eval_batch_size for f in (T4, L4, A100, H100)]
    assert sizes == sorted(sizes) and sizes[0] <= 16 and sizes[-1] >= 32
    assert plan_for(CPU).eval_batch_size == 32
    assert plan_for(T4).loss_tokens * 4 <= 2**30, "one loss chunk of float32 logits stays under 1 GiB"


def test_forcing_fp16_gives_a_t4_plan_on_a_bf16_gpu():
    t4_like = forced(plan_for(H100, "qlora"), "fp16")
    assert (t4_like.compute_dtype, t4_like.autocast, t4_like.trainable_dtype) == ("float16", "fp16", "float32")
    assert forced(plan_for(H100, "full"), "fp16").weights_dtype == "float32"


def test_the_gradient_scaler_refuses_fp16_trainable_weights():
    """Why full fine-tuning on a T4 loads float32 weights: with fp16 weights the first step fails."""
    import torch

    layer = torch.nn.Linear(4, 4).half()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(layer(torch.ones(1, 4, dtype=torch.float16)).float().sum()).backward()
    with pytest.raises(ValueError, match="unscale FP16 gradients"):
        scaler.step(optimizer)


def trainable_dtypes(model) -> set:
    return {p.dtype for p in model.parameters() if p.requires_grad}


@pytest.mark.model
@pytest.mark.parametrize("method", TRAIN_METHODS)
def test_fp16_steps_train_with_float32_trainable_weights(method, prepared_workspace, tmp_path):
    """A T4's path on this CPU: fp16 autocast with a gradient scaler. TRL casts QLoRA's trainable weights to
    bf16 while it builds the trainer; nbkit puts them back in float32 before the first step."""
    import torch

    plan = forced(pick_device(method), "fp16")
    config = TrainConfig(workspace=str(prepared_workspace), method=method, **TINY)
    trainer, _, used = build_trainer(config, tmp_path, on_log=None, plan=plan)
    assert used == method and trainer.args.fp16 and not trainer.args.bf16
    assert trainable_dtypes(trainer.model) == {torch.float32}
    named = dict(trainer.model.named_parameters())
    watched = [n for n, p in named.items() if p.requires_grad and ("lora_B" in n or method == "full")][:8]
    before = {n: named[n].detach().clone() for n in watched}
    result = trainer.train()
    assert math.isfinite(result.training_loss) and result.global_step == 2
    after = dict(trainer.model.named_parameters())
    assert all(not after[n].detach().equal(before[n]) for n in watched), "an fp16 step left weights unchanged"


@pytest.mark.model
@pytest.mark.parametrize("batching", [b for b in BATCHING if b != "length-grouped"])  # the default: every run
def test_every_batching_mode_trains(batching, prepared_workspace, tmp_path):
    """padding-free and packed put several rows in one flat sequence: their first loss must equal the padded
    batches' (same rows, same order), or rows attended to each other across their boundaries."""
    config = TrainConfig(workspace=str(prepared_workspace), batching=batching, run_id=f"batching-{batching}", **TINY)
    record = train(config, on_log=None, run_dir=tmp_path / batching)
    first = [r["loss"] for r in read_metrics(tmp_path / batching / "metrics.jsonl") if "loss" in r][0]
    assert record["steps"] == 2 and math.isfinite(first)
    FIRST_LOSS[batching] = first
    if batching == "padding-free" and "padded" in FIRST_LOSS:
        assert first == pytest.approx(FIRST_LOSS["padded"], rel=1e-3)


FIRST_LOSS: dict[str, float] = {}


@pytest.mark.model
@pytest.mark.parametrize("checkpointing", [c for c in CHECKPOINTING if c != "off"])  # "off": test_train_depth
def test_gradient_checkpointing_choices_train(checkpointing, prepared_workspace, tmp_path):
    config = TrainConfig(workspace=str(prepared_workspace), gradient_checkpointing=checkpointing, **TINY)
    trainer, _, _ = build_trainer(config, tmp_path, on_log=None)
    assert trainer.args.gradient_checkpointing is (checkpointing == "on"), "auto: the embedded model fits without"
    result = trainer.train()
    assert math.isfinite(result.training_loss)


@pytest.mark.model
def test_training_gives_its_memory_back(prepared_workspace, tmp_path):
    """The model must be gone when train() returns, without waiting for the cycle collector: TRL's fused head
    binds a method to the model (a reference cycle), and on a 15 GB GPU the next run would load beside it."""
    from transformers import PreTrainedModel

    def alive() -> int:
        return sum(isinstance(o, PreTrainedModel) for o in gc.get_objects())

    gc.collect()
    before = alive()
    gc.disable()  # only the collection train() does itself may free the cycle
    try:
        train(TrainConfig(workspace=str(prepared_workspace), run_id="released", **TINY), on_log=None,
              run_dir=tmp_path / "released")
        assert alive() == before, "a model outlived train()"
    finally:
        gc.enable()

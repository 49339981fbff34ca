"""Precision and placement on every device users train on, and every training option taken for real.

The plan (nbkit.model.devices.plan_for) is a pure function of the device's facts, so a T4, an L4, an A100, an
H100, Apple MPS and a CPU are all checked here. A T4's plan is also built and trained on this CPU for QLoRA,
LoRA and full fine-tuning: the trainer gets fp16 and the trainable weights end up float32. accelerate turns
fp16 autocast and its gradient scaler on only off the CPU, so those steps compute in float32 here; the scaler's
refusal of fp16 weights is shown with torch's CPU scaler directly, and `make gpu-check` runs the real fp16
path on a GPU. Each batching mode and gradient checkpointing on and off train for real.
"""

from __future__ import annotations

import gc
import math

import pytest

from nbkit.core.runs import read_metrics
from nbkit.core.train_config import BATCHING, CHECKPOINTING, TRAIN_METHODS, TrainConfig
from nbkit.model.devices import DeviceFacts, forced, plan_for
from nbkit.model.loader import pick_device
from nbkit.train.sft import build_trainer, train

T4 = DeviceFacts("cuda", "Tesla T4", 14.7, (7, 5))
L4 = DeviceFacts("cuda", "NVIDIA L4", 22.0, (8, 9))
A100 = DeviceFacts("cuda", "NVIDIA A100-SXM4-40GB", 39.4, (8, 0))
H100 = DeviceFacts("cuda", "NVIDIA H100 80GB HBM3", 79.1, (9, 0))
MPS = DeviceFacts("mps", "CPU", 16.0)
CPU = DeviceFacts("cpu", "CPU", 24.0)
CPU_BF16 = DeviceFacts("cpu", "CPU", 24.0, cpu_bf16=True)

TINY = dict(
    max_steps=2,
    batch_size=2,
    max_seq_len=96,
    lora_r=4,
    lora_alpha=8,
    logging_steps=1,
    eval_steps=0,
    save_steps=2,
    early_stopping_patience=0,
    load_best=False,
    report_to="none",
    learning_rate=2e-3,
)


@pytest.mark.parametrize(
    "facts, compute, autocast",
    [
        (T4, "float16", "fp16"),
        (L4, "bfloat16", "bf16"),
        (A100, "bfloat16", "bf16"),
        (H100, "bfloat16", "bf16"),
        (MPS, "float32", "none"),
        (CPU, "float32", "none"),
        (CPU_BF16, "float32", "bf16"),
    ],
)
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
    for facts in (
        DeviceFacts("cuda", "Tesla T4", 14.7, (7, 5), world_size=2, fsdp=True),
        DeviceFacts("cuda", "NVIDIA A100", 79.0, (8, 0), world_size=4, fsdp=True),
    ):
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
    """A T4's plan on this CPU: the trainer is built for fp16, and TRL's bf16 cast of QLoRA's trainable weights
    is undone (float32) before the first step. (On a CPU accelerate leaves autocast and the scaler off.)"""
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
def test_every_batching_mode_trains(batching, prepared_workspace, tmp_path, monkeypatch):
    """padding-free and packed put several rows in one flat sequence: their first loss must equal the padded
    batches' (same rows, same order), or rows attended to each other across their boundaries.

    In float32: under bf16 autocast the flat and the padded batches round differently (first losses 3.814 against
    3.824 with transformers 5.25), which says nothing about attention; in float32 they agree to 1e-7."""
    monkeypatch.setattr("nbkit.model.devices.cpu_supports_bf16", lambda: False)
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
        train(
            TrainConfig(workspace=str(prepared_workspace), run_id="released", **TINY),
            on_log=None,
            run_dir=tmp_path / "released",
        )
        assert alive() == before, "a model outlived train()"
    finally:
        gc.enable()


def test_the_doctor_tells_a_t4_user_fp16_although_torch_reports_bf16(monkeypatch):
    """torch.cuda.is_bf16_supported() is True on a T4 (emulated bf16); the doctor must not repeat it."""
    from types import SimpleNamespace

    import torch

    from nbkit import doctor

    t4 = SimpleNamespace(name="Tesla T4", total_memory=15 * 2**30, major=7, minor=5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: t4)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    accelerator = doctor.detect_accelerator()
    assert accelerator.kind == "cuda" and accelerator.bf16 is False
    report = doctor.EnvironmentReport("colab", accelerator, None, {})
    (line,) = [c for c in doctor._choices(report) if c.startswith("Training on")]
    assert "fp16" in line and "no native bf16" in line


def test_an_8b_qlora_run_at_2048_tokens_fits_a_t4_in_the_estimate():
    """QLoRA of an 8B model (Llama-3.1-8B's shapes) at batch 1 x 2048 tokens with checkpointing is the classic
    Colab T4 run. TRL's fused LM head never holds the 2048 x 128k logits, and checkpointing keeps one hidden
    vector per layer and token: the estimate used to count both in full (16 GiB: "will not fit")."""
    from nbkit.model.shape import ModelShape
    from nbkit.train.estimate import estimate_fit

    llama_8b = ModelShape(
        total=8_030_000_000,
        linear=6_980_000_000,
        embedding=1_050_000_000,
        lora=41_943_040,
        hidden=4096,
        intermediate=14336,
        layers=32,
        vocab=128256,
    )
    config = TrainConfig(batch_size=1, max_seq_len=2048, gradient_checkpointing="on")
    t4 = estimate_fit(
        config, [2048] * 100, device="cuda", half=True, available_gib=14.7, shape=llama_8b, measure_speed=False
    )
    assert t4.verdict == "fits" and 7 < t4.total_gib < 12, t4
    assert t4.parts_gib["logits"] < 0.5 and t4.parts_gib["activations"] < 2
    cpu = estimate_fit(
        config, [2048] * 100, device="cpu", half=False, available_gib=64, shape=llama_8b, measure_speed=False
    )
    assert cpu.parts_gib["logits"] > 4, "the CPU constants keep their calibration (full logits counted)"


def test_each_process_plans_with_its_own_gpu_and_the_same_memory_figure(monkeypatch):
    """Under accelerate, rank 1 must query GPU 1 (not create a context on GPU 0), and every rank must make the
    same "auto" checkpointing choice: they plan with one GPU's total memory, not its momentary free memory."""
    import torch

    from nbkit.train import estimate

    asked: list[int] = []
    free_by_gpu = {0: 3 * 2**30, 1: 9 * 2**30}

    def mem_get_info(index):
        asked.append(index)
        return free_by_gpu[index], 16 * 2**30

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setenv("WORLD_SIZE", "2")
    figures = []
    for rank in (0, 1):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        figures.append(estimate.available_memory_gib("cuda"))
    assert asked == [0, 1] and figures == [16.0, 16.0]
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert estimate.available_memory_gib("cuda") == 3.0, "a single process plans with what is free now"


def test_fsdp_loads_without_a_device_map_so_only_rank_zero_reads_the_weights(monkeypatch):
    """PEFT's FSDP + QLoRA guide: with cpu_ram_efficient_loading, rank 0 reads the weights and FSDP shards them;
    a device_map would load the whole model on every GPU."""
    import transformers

    from nbkit.model.devices import DeviceFacts
    from nbkit.model.loader import load_model

    seen = {}

    class Stop(Exception):
        pass

    def from_pretrained(path, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    plan = plan_for(DeviceFacts("cuda", "NVIDIA A100", 79.0, (8, 0), world_size=2, fsdp=True), "qlora")
    with pytest.raises(Stop):
        load_model("some/model", "qlora", plan)
    assert "device_map" not in seen and seen["low_cpu_mem_usage"]
    assert str(seen["quantization_config"].bnb_4bit_quant_storage) == "torch.bfloat16"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(Stop):
        load_model("some/model", "qlora", plan_for(A100, "qlora"))
    assert seen["device_map"] == {"": 1}, "DDP: each process loads onto its own GPU"

"""Will this run fit, and how long will it take? Answered before any weights load.

The model's shapes come from its config alone (the model is built on torch's "meta"
device: no memory, no download beyond config.json). Memory is the sum of

  weights     4-bit NF4 linear layers (~0.52 bytes/param with double quantization) for
              QLoRA; everything else at the compute precision
  trainable   LoRA (or all) parameters in float32 + their gradients + AdamW's two moments
  activations what the backward pass keeps per token, per layer; gradient checkpointing
              keeps only each layer's input and recomputes the rest
  logits      batch x sequence x vocabulary in float32, several copies (softmax, grads):
              the biggest single item for small models with large vocabularies
  runtime     the framework itself (CUDA context, or the Python process on CPU)

The constants were calibrated against measured peaks on this kit's test machines; the
README states the error. Time comes from counted FLOPs and the device's measured matmul
speed at a calibrated utilisation; the live monitor's ETA replaces it once steps run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from nbkit.model.shape import ModelShape, model_shape

GIB = 2**30
NF4_BYTES_PER_PARAM = 0.5 + 0.127 / 8 + 0.005  # 4 bits + double-quantized absmax + quant-state overhead
# Values the backward pass keeps per token and layer, in units of hidden and intermediate size
# (normed inputs, q/k/v/o, rotary copies, MLP gate/up/act, LoRA dropout copies); calibrated.
ACTIVATION_HIDDEN_FACTOR = 14
ACTIVATION_INTERMEDIATE_FACTOR = 5
CHECKPOINTED_HIDDEN_FACTOR = 8  # with checkpointing: layer inputs and what LoRA keeps, per layer (CPU, calibrated)
# On CUDA, reentrant checkpointing of whole decoder layers keeps each layer's input only (1 x hidden, at the
# compute precision) plus one layer being recomputed; 2 leaves room for the LoRA input copies. From the
# checkpointing scheme; `make gpu-check` compares the estimate with the measured peak.
CHECKPOINTED_HIDDEN_FACTOR_CUDA = 2
LOGIT_COPIES = 5  # logits, shifted copy, log-softmax, their gradients
# TRL (1.x) runs the output head in tiles over the trained positions only (its fused LM head) and never
# holds batch x sequence x vocabulary logits: one tile is 4096 tokens x 32768 vocabulary entries, projected
# in the compute dtype and folded in float32 (6 bytes an entry). The CPU constants above were calibrated
# against peaks that include the allocator's cached blocks, with the full-logits term in; on CUDA the term
# is one tile.
FUSED_HEAD_TILE = (4096, 32768)
FUSED_HEAD_BYTES = 2 + 4
# The CPU constants were calibrated under bf16 autocast (CPUs with native bf16 matmuls), where the matmul
# outputs the backward pass keeps are bf16. A CPU without native bf16 trains without autocast and keeps them
# in float32: activations and logits measured 1.6x as large (2-core AMD EPYC without AVX512-BF16, 2026-12:
# QLoRA at batch 2-16 within -3%..+13% of two measured peaks each; the README has the table).
CPU_FLOAT32_FACTOR = 1.6
RUNTIME_GIB = {"cpu": 1.1, "cuda": 0.6, "mps": 1.1}  # Python + torch + libraries / CUDA context
UTILISATION = {"cpu": 0.12, "cuda": 0.30, "mps": 0.15}  # achieved share of peak matmul speed, calibrated
TIGHT, FITS = 1.0, 0.85  # share of available memory


@dataclass
class FitEstimate:
    method: str
    device: str
    batch_tokens: int  # tokens in the largest forward pass (batch x longest example)
    gradient_checkpointing: bool
    parts_gib: dict[str, float]
    total_gib: float
    available_gib: float
    verdict: str  # "fits", "tight" or "will not fit"
    advice: list[str] = field(default_factory=list)
    step_seconds: float | None = None
    total_seconds: float | None = None
    steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def memory_parts(
    shape: ModelShape,
    method: str,
    batch_tokens: int,
    checkpointing: bool,
    device: str = "cpu",
    half: bool = False,
    autocast: str = "bf16",
) -> dict[str, float]:
    """Peak memory by part, in GiB. `autocast` is the plan's ("none" on a CPU without native bf16)."""
    compute_bytes = 2 if half else 4
    if method == "qlora":
        weights = shape.linear * NF4_BYTES_PER_PARAM + shape.embedding * compute_bytes
    else:
        weights = shape.total * (4 if method == "full" else compute_bytes)
    trainable = shape.total if method == "full" else shape.lora
    # float32 gradients + AdamW's two moments, plus the float32 LoRA weights (full weights are counted above)
    optimizer = trainable * (4 + 8 + (0 if method == "full" else 4))
    per_token_layer = ACTIVATION_HIDDEN_FACTOR * shape.hidden + ACTIVATION_INTERMEDIATE_FACTOR * shape.intermediate
    if checkpointing:  # keep each layer's input; recompute one layer at a time
        kept = CHECKPOINTED_HIDDEN_FACTOR_CUDA if device == "cuda" else CHECKPOINTED_HIDDEN_FACTOR
        activations = batch_tokens * (kept * shape.layers * shape.hidden + per_token_layer) * compute_bytes
    else:
        activations = batch_tokens * shape.layers * per_token_layer * compute_bytes
    if device == "cuda":
        logits = min(batch_tokens, FUSED_HEAD_TILE[0]) * min(shape.vocab, FUSED_HEAD_TILE[1]) * FUSED_HEAD_BYTES
    else:
        logits = batch_tokens * shape.vocab * 4 * LOGIT_COPIES
    if device == "cpu" and autocast == "none":
        activations, logits = activations * CPU_FLOAT32_FACTOR, logits * CPU_FLOAT32_FACTOR
    parts = {"weights": weights, "trainable + optimizer": optimizer, "activations": activations, "logits": logits}
    parts = {k: v / GIB for k, v in parts.items()}
    parts["runtime"] = RUNTIME_GIB.get(device, 1.1)
    return parts


def available_memory_gib(device: str) -> float:
    """Memory this process can plan with: its own GPU's free memory (LOCAL_RANK, never every rank's GPU 0).

    In a launch of several processes every rank must make the same "auto" choices (gradient checkpointing
    changes what the processes exchange), and free memory differs a little from GPU to GPU and moment to
    moment; so they all plan with the same figure: one GPU's total, or on a CPU the machine's memory shared
    by the processes on it.
    """
    import os

    from nbkit.model.devices import local_rank

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if device == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info(local_rank())
        return (total if several else free) / GIB
    import psutil

    memory = psutil.virtual_memory()
    if several:
        return memory.total / GIB / int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return memory.available / GIB


def matmul_flops(device: str = "cpu", half: bool = False, seconds: float = 0.3, dtype_name: str = "") -> float:
    """Measured matmul speed of this device (FLOP/s) over a fraction of a second, in the dtype training
    computes in (`dtype_name`; else bf16 when `half`): a T4 is timed in fp16, where bf16 is emulated."""
    import torch

    dtype = getattr(torch, dtype_name) if dtype_name else torch.bfloat16 if half else torch.float32
    n = 1024 if device == "cpu" else 4096
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b  # warm-up
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        reps += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - started)


def flops_per_token(shape: ModelShape, method: str, checkpointing: bool) -> float:
    """Forward 2N; backward 2N for input gradients (+2N weight gradients when all weights train);
    +2N when checkpointing recomputes the forward pass."""
    n = shape.linear + shape.vocab * shape.hidden  # matmul parameters, output head included
    passes = 2 + 2 + (2 if method == "full" else 0) + (2 if checkpointing else 0)
    return passes * n


def estimate_fit(
    config,
    lengths: list[int],
    *,
    device: str | None = None,
    half: bool | None = None,
    available_gib: float | None = None,
    shape: ModelShape | None = None,
    autocast: str | None = None,
    measure_speed: bool = True,
) -> FitEstimate:
    """Memory and time for `config` (a TrainConfig) on `lengths` (token counts of the training rows).

    `device`, `half` and `autocast` default to this machine's precision plan (`pick_device`)."""
    from nbkit.model.loader import pick_device

    config = config.resolved()
    timing_dtype = ""
    plan = pick_device(config.method)
    device = device or plan.device
    half = plan.compute_dtype != "float32" if half is None else half
    if autocast is None:  # another device than this one: its usual path (bf16 autocast on CPUs that have it)
        autocast = plan.autocast if plan.device == device else "bf16"
    if plan.device == "cuda" == device:  # CPU speeds were calibrated with float32 timings
        timing_dtype = {"fp16": "float16", "bf16": "bfloat16"}.get(plan.autocast, "float32")
    shape = shape or model_shape(config.base_model, config.lora_r, config.target_modules)
    longest = min(max(lengths, default=config.max_seq_len), config.max_seq_len)
    batch_tokens = config.batch_size * longest
    checkpointing = config.gradient_checkpointing == "on"
    available = available_gib if available_gib is not None else available_memory_gib(device)

    def total(method=config.method, tokens=batch_tokens, ckpt=checkpointing) -> float:
        return sum(memory_parts(shape, method, tokens, ckpt, device, half, autocast).values())

    if config.gradient_checkpointing == "auto":  # checkpoint only when needed: it costs ~1/3 more compute
        checkpointing = total(ckpt=False) > FITS * available
    parts = memory_parts(shape, config.method, batch_tokens, checkpointing, device, half, autocast)
    need = sum(parts.values())
    verdict = "fits" if need <= FITS * available else "tight" if need <= TIGHT * available else "will not fit"
    advice = [] if verdict == "fits" else fixes(config, shape, longest, available, total)

    est = FitEstimate(
        method=config.method,
        device=device,
        batch_tokens=batch_tokens,
        gradient_checkpointing=checkpointing,
        parts_gib={k: round(v, 3) for k, v in parts.items()},
        total_gib=round(need, 3),
        available_gib=round(available, 2),
        verdict=verdict,
        advice=advice,
    )
    if measure_speed and lengths:
        steps = planned_steps(config, len(lengths))
        mean = sum(min(n, config.max_seq_len) for n in lengths) / len(lengths)
        tokens_per_step = config.effective_batch_size * mean
        speed = matmul_flops(device, half, dtype_name=timing_dtype) * UTILISATION.get(device, 0.2)
        est.step_seconds = round(tokens_per_step * flops_per_token(shape, config.method, checkpointing) / speed, 2)
        est.steps = steps
        est.total_seconds = round(est.step_seconds * steps, 1)
    return est


def planned_steps(config, n_rows: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    per_epoch = -(-n_rows // config.effective_batch_size)
    return max(1, round(per_epoch * config.num_train_epochs))


def fixes(config, shape: ModelShape, longest: int, available: float, total) -> list[str]:
    """The smallest changes that bring the run under the available memory, in the order to try them."""
    out = []
    if config.gradient_checkpointing != "on" and total(ckpt=True) <= FITS * available:
        out.append("set gradient_checkpointing='on' (keeps only each layer's input; ~30% slower steps)")
    batch = config.batch_size
    while batch > 1:
        batch //= 2
        if total(tokens=batch * longest, ckpt=True) <= FITS * available:
            accumulation = config.gradient_accumulation_steps * config.batch_size // batch
            out.append(
                f"set batch_size={batch} and gradient_accumulation_steps={accumulation} "
                f"(same effective batch of {config.effective_batch_size})"
            )
            break
    for seq in (1024, 512, 256, 128):
        if seq < longest and total(tokens=config.batch_size * seq, ckpt=True) <= FITS * available:
            out.append(f"set max_seq_len={seq} (longer examples are truncated; check how many in 02)")
            break
    if config.method != "qlora" and total(method="qlora", ckpt=True) <= FITS * available:
        out.append("set method='qlora' (4-bit base weights: ~1/4 of 16-bit memory)")
    if not out:
        out.append(
            f"pick a smaller base model: {shape.total / 1e9:.2f}B parameters need more than the "
            f"{available:.1f} GiB available even with 4-bit weights, batch 1 and checkpointing"
        )
    return out


def format_estimate(est: FitEstimate) -> str:
    parts = ", ".join(f"{k} {v:.2f}" for k, v in est.parts_gib.items())
    lines = [
        f"Memory estimate ({est.method} on {est.device}, {est.batch_tokens} tokens per forward pass, "
        f"gradient checkpointing {'on' if est.gradient_checkpointing else 'off'}): {est.total_gib:.2f} GiB "
        f"of {est.available_gib:.1f} GiB available — {est.verdict.upper()}",
        f"  GiB by part: {parts}",
    ]
    lines += [f"  fix: {a}" for a in est.advice]
    if est.total_seconds is not None:
        lines.append(
            f"Time estimate: ~{est.step_seconds:.1f} s/step x {est.steps} steps = "
            f"{_duration(est.total_seconds)} (the live monitor's ETA is more precise once steps run)"
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def train_lengths(config) -> list[int]:
    """Token counts of the training split's rows (tokenizer only: fast, no weights)."""
    from nbkit.core.workspace import Workspace
    from nbkit.model.loader import formatted_tokenizer
    from nbkit.model.loss_mask import tokenize_chat

    config = config.resolved()
    ws = Workspace(config.workspace)
    tokenizer = formatted_tokenizer(config)
    rows = ws.read_split("train")
    return [len(tokenize_chat(tokenizer, r["messages"], config.max_seq_len)["input_ids"]) for r in rows]


def estimate_run(config, **kwargs) -> FitEstimate:
    """`estimate_fit` on the workspace's training split: what notebook 04 prints before loading the model."""
    return estimate_fit(config, train_lengths(config), **kwargs)

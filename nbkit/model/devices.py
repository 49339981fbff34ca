"""Where a run computes and in which precision, decided once from the device's facts.

`read_device()` reads the facts (GPU name, compute capability, memory, process count); `plan_for(facts,
method)` turns them into every precision and placement choice the kit makes. `plan_for` is a pure
function, so the choices for a T4, an L4, an A100, an H100, Apple MPS and a CPU are tested on any machine.

The rules, with their reasons:

- **bf16 only where the hardware runs it.** Native bf16 needs compute capability 8.0 (Ampere) or newer.
  `torch.cuda.is_bf16_supported()` also counts *emulated* bf16 and answers True on Colab's T4 (7.5), where
  bf16 matmuls are several times slower than fp16; so it is asked with `including_emulation=False`.
- **fp16 GPUs (T4, V100) train under fp16 autocast with trainable weights in fp32.** fp16 needs a
  GradScaler, and the GradScaler refuses half-precision trainable weights ("Attempting to unscale FP16
  gradients"). TRL casts a quantized model's trainable weights to bf16 while it builds the trainer, so the
  kit casts them back to `trainable_dtype` after the trainer is built; full fine-tuning loads the whole
  model in fp32 (autocast runs the matmuls in fp16).
- **FSDP shards float tensors of one dtype**: under an FSDP launch the 4-bit weights are stored in the
  compute dtype and the LoRA weights share it (PEFT's FSDP + QLoRA guide); FSDP's sharded GradScaler
  accepts fp16 weights.
- **Paged AdamW on CUDA** (the QLoRA recipe): bitsandbytes pages optimizer state to CPU memory when a long
  batch spikes GPU memory, instead of running out. Paged optimizers need CUDA's unified memory, so CPUs (and
  GPUs without bitsandbytes) use torch's fused AdamW, transformers' default.
- **CPU**: float32 weights; bf16 autocast where the CPU has native bf16 matmuls (AVX512-BF16/AMX), as TRL
  does by default. Apple MPS: bitsandbytes' 4-bit kernels do not run there, so training uses the CPU.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from typing import Any

from nbkit.core.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16")
TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "nbkit-finetune")


@dataclass(frozen=True)
class DeviceFacts:
    """What the precision choices depend on; `read_device()` reads them, tests write them by hand."""

    kind: str  # "cuda", "mps" or "cpu"
    name: str
    memory_gib: float  # total memory of one device (RAM on a CPU)
    capability: tuple[int, int] | None = None  # CUDA compute capability, e.g. (7, 5) for a T4
    cpu_bf16: bool = False  # CPU with native bf16 matmuls
    world_size: int = 1  # processes in the run (accelerate launch / torchrun)
    fsdp: bool = False  # launched with an FSDP config
    bitsandbytes: bool = True  # 4-bit quantization and paged optimizers importable

    @property
    def native_bf16(self) -> bool:
        return self.kind == "cuda" and self.capability is not None and self.capability >= (8, 0)


@dataclass(frozen=True)
class PrecisionPlan:
    """Every precision and placement choice of a run, with the sentence that explains it to the user."""

    device: str  # where tensors live: "cuda" or "cpu"
    compute_dtype: str  # the frozen base model's weights (and 4-bit compute) for qlora/lora
    autocast: str  # "bf16", "fp16" or "none": mixed precision of the forward and backward pass
    trainable_dtype: str  # LoRA matrices (and every weight in full fine-tuning) as the optimizer sees them
    weights_dtype: str  # dtype the base model loads in for this method
    quant_storage: str | None  # 4-bit storage dtype under FSDP, else None (bitsandbytes' uint8)
    optimizer: str  # transformers' `optim` name
    eval_batch_size: int  # prompts generated together in evaluation
    loss_tokens: int  # positions x vocabulary entries per chunk of the evaluation loss pass
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def torch_dtype(self, name: str | None = None):
        import torch

        return getattr(torch, name or self.compute_dtype)


def plan_for(facts: DeviceFacts, method: str = "qlora") -> PrecisionPlan:
    """The precision plan for training (and evaluating) with `method` on the device `facts` describe."""
    device = "cuda" if facts.kind == "cuda" else "cpu"
    if device == "cuda":
        half = "bfloat16" if facts.native_bf16 else "float16"
        autocast = "bf16" if facts.native_bf16 else "fp16"
        cc = f"compute capability {facts.capability[0]}.{facts.capability[1]}" if facts.capability else "unknown"
        reason = f"CUDA GPU {facts.name} ({cc}, {facts.memory_gib:.0f} GiB): " + (
            "bf16 (native on this GPU)"
            if facts.native_bf16
            else "fp16 with a gradient scaler (no native bf16 on this GPU), trainable weights in float32"
        )
    else:
        half = "float32"
        autocast = "bf16" if facts.cpu_bf16 else "none"
        where = (
            "Apple MPS found, but 4-bit kernels do not run there: CPU" if facts.kind == "mps" else "no GPU found: CPU"
        )
        reason = where + (
            " with float32 weights and bf16 autocast (native bf16 matmuls)"
            if facts.cpu_bf16
            else " with float32 weights (slow but real)"
        )
    # Trainable weights stay float32 unless FSDP needs one dtype per flat parameter.
    trainable = half if facts.fsdp and method != "full" else "float32"
    # Full fine-tuning trains every weight: they load in the trainable dtype and autocast does the half math.
    weights = trainable if method == "full" else half
    paged = device == "cuda" and facts.bitsandbytes
    return PrecisionPlan(
        device=device,
        compute_dtype=half,
        autocast=autocast,
        trainable_dtype=trainable,
        weights_dtype=weights,
        quant_storage=half if facts.fsdp and method == "qlora" else None,
        optimizer="paged_adamw_32bit" if paged else "adamw_torch_fused",
        eval_batch_size=eval_batch_size(facts),
        loss_tokens=loss_chunk_entries(facts),
        reason=reason,
    )


def eval_batch_size(facts: DeviceFacts) -> int:
    """Prompts generated together: generation is memory-bound on the KV cache, so larger GPUs take more.
    32 on a CPU was measured as fast as any larger batch for the embedded model."""
    if facts.kind != "cuda":
        return 32
    return 8 if facts.memory_gib < 12 else 16 if facts.memory_gib < 24 else 32 if facts.memory_gib < 60 else 64


def loss_chunk_entries(facts: DeviceFacts) -> int:
    """Logit entries (positions x vocabulary) per chunk of the evaluation loss pass: 2^27 float32 entries are
    512 MiB, small beside a T4's 15 GiB and a few seconds of work on a CPU."""
    return 2**27 if facts.kind == "cuda" and facts.memory_gib >= 12 else 2**26


def read_device() -> DeviceFacts:
    """The facts of the device this process trains on: under accelerate/torchrun, GPU LOCAL_RANK."""
    import torch

    from nbkit.model.devices import bitsandbytes_problem, cpu_supports_bf16

    world = int(os.environ.get("WORLD_SIZE", "1"))
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if torch.cuda.is_available():
        index = local_rank()
        props = torch.cuda.get_device_properties(index)
        return DeviceFacts(
            "cuda",
            props.name,
            props.total_memory / 2**30,
            (props.major, props.minor),
            world_size=world,
            fsdp=fsdp,
            bitsandbytes=bitsandbytes_problem() is None,
        )
    import psutil

    kind = "mps" if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else "cpu"
    return DeviceFacts(
        kind,
        "CPU",
        psutil.virtual_memory().total / 2**30,
        cpu_bf16=cpu_supports_bf16(),
        world_size=world,
        fsdp=fsdp,
        bitsandbytes=bitsandbytes_problem() is None,
    )


def local_rank() -> int:
    """This process's GPU under accelerate/torchrun (LOCAL_RANK); 0 in a plain run."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def forced(plan: PrecisionPlan, autocast: str) -> PrecisionPlan:
    """The plan with another mixed precision, for checking one device's path on another: "fp16" gives a
    T4's plan (float16 compute, float32 trainable weights) on a bf16 GPU or a CPU."""
    if autocast not in ("bf16", "fp16", "none"):
        raise ConfigError(f"`autocast` must be 'bf16', 'fp16' or 'none', got {autocast!r} — pick one of those.")
    if plan.device == "cpu":  # the CPU keeps float32 weights; only the autocast changes
        return replace(plan, autocast=autocast, reason=plan.reason + f", {autocast} autocast forced")
    half = {"bf16": "bfloat16", "fp16": "float16", "none": "float32"}[autocast]
    return replace(
        plan,
        autocast=autocast,
        compute_dtype=half,
        weights_dtype=half if plan.weights_dtype != "float32" else "float32",
        reason=plan.reason + f", {autocast} forced",
    )


def replace_device(plan: PrecisionPlan, device: str, dtype: str) -> PrecisionPlan:
    """The plan moved to another device and dtype: a merge that does not fit the GPU runs on the CPU."""
    return replace(
        plan,
        device=device,
        compute_dtype=dtype,
        weights_dtype=dtype,
        autocast="none" if device == "cpu" else plan.autocast,
    )


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX512-BF16 or AMX): then training autocasts to bf16,
    as TRL does by default — markedly faster than float32 there, with float32 weights kept for the update."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # older torch or no oneDNN
        return False


def bitsandbytes_problem() -> str | None:
    """None if 4-bit quantization is usable here, else why not.

    The first import of bitsandbytes happens here (devices and load_model ask before anything else does). It
    logs that an optional fused CPU kernel package is missing and falls back to its own kernels: a notice that
    only worries users, so its logger is quieted for the import and restored after.
    """
    notices = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = notices.level
    notices.setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # ImportError or a broken native library
        return f"bitsandbytes cannot be imported ({type(err).__name__}: {err})"
    finally:
        notices.setLevel(level)
    return None


def environment() -> dict[str, Any]:
    import torch

    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env

"""What SFT (04) and preference runs (06) share while training: the main-process check, messages that only the main
process prints, trainable weights kept in the plan's dtype, and telling an out-of-memory error from others."""

from __future__ import annotations

import os
from typing import Any


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0 of `accelerate launch` / torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def say(message: str) -> None:
    if is_main_process():
        print(message, flush=True)


def cast_trainable(model, dtype) -> int:
    """Put every trainable weight in `dtype`; returns how many tensors changed.

    SFTTrainer casts a quantized model's LoRA weights to bf16 as it is built (the QLoRA paper's choice). Under
    fp16 autocast the gradient scaler refuses half-precision trainable weights, and on fp16-only GPUs bf16 is
    emulated, so the plan's trainable dtype (float32, or the FSDP storage dtype) is restored here, before the
    optimizer is created at the start of train().
    """
    changed = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
            changed += 1
    return changed


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def device_args(plan, seed: int, quiet: bool) -> dict[str, Any]:
    """The trainer arguments that follow from the precision plan and the seed, alike for SFT (04) and preference
    runs (06); `quiet`: our callback reports progress, so the trainer's own tqdm bar is off."""
    return dict(
        seed=seed,
        data_seed=seed,
        bf16=plan.autocast == "bf16",
        fp16=plan.autocast == "fp16",
        optim=plan.optimizer,
        use_cpu=plan.device == "cpu",
        disable_tqdm=quiet,
        dataloader_pin_memory=plan.device == "cuda",
        ddp_find_unused_parameters=False,  # every trained weight is used in every forward pass
    )

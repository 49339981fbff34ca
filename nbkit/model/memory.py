"""Memory a stage used and gave back: its own peak, and freeing the model when the stage is done."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from nbkit.model.devices import local_rank


def reset_peak_memory() -> None:
    """Start a new peak-memory window, so a run reports its own peak rather than whatever the
    process (a notebook kernel, the program that spawned it) reached before."""
    import torch

    if torch.cuda.is_available():  # this process's GPU: under accelerate, not every rank's GPU 0
        torch.cuda.reset_peak_memory_stats(local_rank())
        return
    try:  # Linux: "5" resets VmHWM to the current resident size
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # other systems keep the process-lifetime peak


def memory_gib() -> float:
    """Peak memory since `reset_peak_memory`: GPU memory on CUDA, resident memory on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(local_rank()) / 2**30
    try:  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)  # bytes on macOS, KiB on Linux


def release_memory() -> None:
    """Collect what a finished stage dropped and hand cached GPU memory back.

    Models do not die when the last name for them goes: TRL's fused LM head and PEFT's wrappers bind
    methods to the model (a reference cycle), which only the cycle collector frees, at a time of its
    choosing. On a 15 GB GPU the next cell's model would then load beside the old one and run out of
    memory, so every stage collects before it returns.
    """
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

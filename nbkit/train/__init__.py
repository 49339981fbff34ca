"""Training: stage 04 (supervised fine-tuning with QLoRA, LoRA or full, through TRL's SFTTrainer; `sft`), its fit
and time estimate, multi-GPU launches, and stage 06's preference tuning (`prefer`: DPO and GRPO).

What notebooks 04 and 06 call is importable from here."""

from nbkit.core.train_config import TrainConfig
from nbkit.train.estimate import estimate_run, format_estimate
from nbkit.train.launch import launch_command
from nbkit.train.prefer import (
    PairsConfig,
    PreferConfig,
    build_pairs,
    describe_pairs,
    load_pairs,
    pairs_table,
    prefer,
    preference_memory_estimate,
)
from nbkit.train.sft import format_diagnosis, train

__all__ = [
    "PairsConfig",
    "PreferConfig",
    "TrainConfig",
    "build_pairs",
    "describe_pairs",
    "estimate_run",
    "format_diagnosis",
    "format_estimate",
    "launch_command",
    "load_pairs",
    "pairs_table",
    "prefer",
    "preference_memory_estimate",
    "train",
]

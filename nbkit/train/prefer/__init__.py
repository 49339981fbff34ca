"""Stage 06, preference tuning: pairs from ratings, corrections, the task's metric and users' files (`pairs`), and
a DPO or GRPO run from an SFT run (`trainer`), with TRL's trainers."""

from nbkit.train.prefer.config import PairsConfig, PreferConfig, preference_memory_estimate
from nbkit.train.prefer.pair_report import describe_pairs, load_pairs, pairs_table
from nbkit.train.prefer.pairs import build_pairs
from nbkit.train.prefer.trainer import prefer

__all__ = [
    "PairsConfig",
    "PreferConfig",
    "build_pairs",
    "describe_pairs",
    "load_pairs",
    "pairs_table",
    "prefer",
    "preference_memory_estimate",
]

"""Stages 01-03: collect examples from users' files, format them with the model's chat template (with the quality
report and the replay guard), split them into train/validation/test without leakage.

What notebooks 01-03 call is importable from here; each stage's module holds the rest."""

from nbkit.data.collect import CollectConfig, collect, describe_report
from nbkit.data.formatting import FormatConfig, format_rows
from nbkit.data.manual import promote
from nbkit.data.quality import QualityConfig, quality_report
from nbkit.data.split import SplitConfig, split_dataset

__all__ = [
    "CollectConfig",
    "FormatConfig",
    "QualityConfig",
    "SplitConfig",
    "collect",
    "describe_report",
    "format_rows",
    "promote",
    "quality_report",
    "split_dataset",
]

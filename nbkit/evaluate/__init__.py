"""Stage 05: the tuned run against its base model on the held-out test split (task metrics, perplexity, the
forgetting probe, runaway answers), blind A/B ratings, reports, and a preference run beside its lineage.

What notebooks 05 and 06 call is importable from here."""

from nbkit.core.runs import compare_runs
from nbkit.evaluate.evaluator import EvalConfig, evaluate
from nbkit.evaluate.lineage import describe_validation, evaluate_lineage, lineage_table, validation_check
from nbkit.evaluate.ratings import load_ratings, summarize, summary_line
from nbkit.evaluate.summary import (
    describe_forgetting,
    examples_table,
    forgetting_table,
    format_summary,
    format_warnings,
    summary_table,
)

__all__ = [
    "EvalConfig",
    "compare_runs",
    "describe_forgetting",
    "evaluate",
    "evaluate_lineage",
    "examples_table",
    "forgetting_table",
    "format_summary",
    "format_warnings",
    "lineage_table",
    "load_ratings",
    "summarize",
    "summary_line",
    "summary_table",
]

"""Data quality report, between collect and split: duplicates, personal data, lengths, balance, diversity.

Bad training data is the most common reason a fine-tune disappoints, and most problems are
invisible when scrolling through a few rows. This module measures them and turns the numbers
into a short verdict that says what to fix and which parameter fixes it.

The measurements live by subject: near-duplicates in nbkit.data.near_duplicates, personal data in
nbkit.data.pii, the diversity map in nbkit.data.diversity. Here are the config, the lengths and labels,
the report that puts it all together, and the verdict.

Headless: no ipywidgets, IPython or plotly here (the figures live in nbkit.widgets.quality).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nbkit.core.config import Config, field
from nbkit.core.files import read_json, read_jsonl, write_json
from nbkit.core.workspace import Workspace, provenance
from nbkit.data.diversity import diversity_map
from nbkit.data.near_duplicates import near_duplicate_clusters, normalize_text, row_text, validate_threshold
from nbkit.data.quality_stats import label_report, length_report, pii_report, preview
from nbkit.data.replay import DEFAULT_SHARE
from nbkit.model.loader import ships_chat_template

# -- the report ------------------------------------------------------------------------------


@dataclass
class QualityConfig(Config):
    """What the data quality report checks, and which fixes formatting will apply (to word the verdict)."""

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    base_model: str = field(
        "", "Model formatting will use (for the replay guard's verdict: a base model may answer no general prompt)."
    )
    near_duplicate_threshold: float = field(
        0.8, "Similarity (0.5-1.0) from which two rows count as near-duplicates; 1.0 finds exact copies only."
    )
    redact_pii: bool = field(False, "Formatting will replace personal data with placeholders.")
    drop_near_duplicates: bool = field(False, "Formatting will keep one row of each near-duplicate cluster.")
    label_field: str = field("label", "meta field holding each row's class, for the balance check ('' for none).")
    replay_guard: bool = field(
        True, "Formatting will mix the base model's own answers to general prompts into training (nbkit.data.replay)."
    )
    replay_share: float = field(DEFAULT_SHARE, "Share of the training split that will be replay rows.")

    def validate(self) -> None:
        self.require(bool(self.workspace), "workspace", "must not be empty")
        validate_threshold(self, "near_duplicate_threshold")

    @classmethod
    def from_config(cls, config: Any, **changes: Any) -> QualityConfig:
        """The quality settings shared with another stage's config (FormatConfig), plus `changes`."""
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)}
        shared = {name: getattr(config, name) for name in names if hasattr(config, name)}
        return cls(**{**shared, **changes})


MAX_CLUSTERS, MAX_MEMBERS = 50, 10  # near-duplicate clusters listed in the report
MAX_VERDICT = 8


def quality_report(config: QualityConfig) -> dict[str, Any]:
    """Read data/clean.jsonl; write data/quality_report.json and data/diversity_map.json; return the report."""
    ws = Workspace(config.workspace)
    ws.checked(ws.collect_report, "01_collect", required=False)
    rows = read_jsonl(ws.require(ws.clean, "01_collect"))
    texts = [row_text(r) for r in rows]

    seen: set[str] = set()
    exact = 0
    for text in texts:
        key = normalize_text(text)
        exact += key in seen
        seen.add(key)

    clusters = near_duplicate_clusters(texts, config.near_duplicate_threshold)
    near = {
        "threshold": config.near_duplicate_threshold,
        "n_clusters": len(clusters),
        "rows_in_clusters": sum(len(c) for c in clusters),
        "rows_to_drop": sum(len(c) - 1 for c in clusters),
        # The first clusters, each with its first members: enough to see what repeats, small enough to read.
        "clusters": [
            [{**provenance(rows[i]["meta"]), "text": preview(texts[i])} for i in c[:MAX_MEMBERS]]
            for c in clusters[:MAX_CLUSTERS]
        ],
        "cluster_sizes": [len(c) for c in clusters[:MAX_CLUSTERS]],
    }

    diversity = diversity_map(texts)
    write_json(
        ws.diversity_map,
        {
            "x": diversity["x"],
            "y": diversity["y"],
            "cluster": diversity["cluster"],
            "text": [preview(t, 80) for t in texts],
            "top_terms": diversity["top_terms"],
        },
    )

    report: dict[str, Any] = {
        "rows": len(rows),
        "exact_duplicates": exact,
        "near_duplicates": near,
        "pii": pii_report(rows),
        "lengths": length_report(rows),
        "labels": label_report(rows, config.label_field),
        "diversity": {k: v for k, v in diversity.items() if k not in ("x", "y", "cluster")},
        "replay": {
            "enabled": config.replay_guard,
            "share": config.replay_share if config.replay_guard else 0.0,
            "base_model_without_template": bool(config.base_model) and ships_chat_template(config.base_model) is False,
            "rows_with_system_prompt": sum(any(m["role"] == "system" for m in r["messages"]) for r in rows),
        },
        "config": config.to_dict(),
    }
    report["verdict"] = verdict(report, config)
    write_json(ws.quality_report, report)
    return report


def record_replay_off(workspace: str, reason: str) -> None:
    """The quality report (written before formatting) learns that 02's formatting turned the replay guard off, so
    its verdict never says "on" over an empty replay pool."""
    ws = Workspace(workspace)
    if not ws.quality_report.exists():
        return
    report = read_json(ws.quality_report)
    report["replay"] = {**report["replay"], "enabled": False, "share": 0.0, "off_reason": reason}
    report["verdict"] = verdict(report, QualityConfig.from_dict(report["config"], strict=False))
    write_json(ws.quality_report, report)


# -- the verdict -------------------------------------------------------------------------------

FORMAT_PARAMS = "02_format's parameters cell (or the quality panel)"


def _count(n: int, word: str, plural: str = "") -> str:
    return f"{n:,} {word if n == 1 else plural or word + 's'}"


def _item(level: str, message: str, fix: str = "") -> dict[str, str]:
    return {"level": level, "message": message, "fix": fix}


def verdict(report: dict[str, Any], config: QualityConfig) -> list[dict[str, str]]:
    """At most MAX_VERDICT plain-language findings, problems first: {"level", "message", "fix"}."""
    items = []
    n = report["rows"]
    if n < 100:
        items.append(
            _item(
                "warn",
                f"Only {_count(n, 'row')}. A fine-tune usually needs a few hundred good "
                "examples to learn a pattern reliably.",
                "Add more examples in 01_collect (`sources`).",
            )
        )
    else:
        items.append(_item("good", f"{n:,} rows: enough to learn a narrow task."))

    near, exact = report["near_duplicates"], report["exact_duplicates"]
    if near["n_clusters"]:
        share = near["rows_in_clusters"] / max(n, 1)
        exact_note = f" ({exact} are exact copies)" if exact else ""
        if config.drop_near_duplicates:
            items.append(
                _item(
                    "good",
                    f"{near['rows_in_clusters']} rows sit in {near['n_clusters']} near-duplicate "
                    f"clusters{exact_note}; formatting keeps one row of each, dropping "
                    f"{near['rows_to_drop']}.",
                    "drop_near_duplicates is on.",
                )
            )
        else:
            items.append(
                _item(
                    "fix" if share >= 0.05 else "warn",
                    f"{near['rows_in_clusters']} rows ({share:.0%}) sit in {near['n_clusters']} near-duplicate "
                    f"clusters{exact_note}. Repeats get extra weight in training and can leak from train into test.",
                    f"Set drop_near_duplicates = True in {FORMAT_PARAMS} to keep one row per cluster.",
                )
            )
    else:
        items.append(_item("good", "No exact or near duplicates."))

    pii = report["pii"]
    if pii["rows_with_pii"]:
        found = ", ".join(
            f"{count} {kind.replace('_', ' ')}{'s' if count > 1 else ''}"
            for kind, count in pii["counts"].items()
            if count
        )
        rows_with = f"{_count(pii['rows_with_pii'], 'row')} with personal data or secrets ({found})"
        if config.redact_pii:
            items.append(
                _item("good", f"{rows_with}; formatting replaces them with placeholders.", "redact_pii is on.")
            )
        else:
            items.append(
                _item(
                    "fix",
                    f"{rows_with}. A fine-tuned model can repeat them word for word.",
                    f"Set redact_pii = True in {FORMAT_PARAMS}, or remove them at the source.",
                )
            )
    else:
        items.append(_item("good", "No emails, phone numbers, card numbers, IP addresses or API keys found."))

    labels = report["labels"]
    if labels["counts"]:
        counts = labels["counts"]
        total = sum(counts.values())
        smallest = min(counts, key=counts.get)
        share = counts[smallest] / total
        fair = 1 / len(counts)
        if len(counts) == 1:
            items.append(
                _item(
                    "warn",
                    f"Every row has the same {labels['field']} '{smallest}': the model can only learn that one answer.",
                    "Add examples of the other classes in 01_collect.",
                )
            )
        elif share < fair / 2:
            items.append(
                _item(
                    "warn",
                    f"Labels unbalanced: '{smallest}' is only {share:.0%} of rows (an even share "
                    f"would be {fair:.0%}); the model will rarely predict it.",
                    f"Collect more '{smallest}' examples in 01_collect; 03_split keeps the proportions "
                    "in every split (`stratify_by`).",
                )
            )
        else:
            items.append(
                _item(
                    "good",
                    f"Labels balanced: smallest class '{smallest}' is {share:.0%} of rows ({len(counts)} classes).",
                )
            )
        if labels["missing"]:
            items.append(
                _item(
                    "warn",
                    f"{_count(labels['missing'], 'row')} without `{labels['field']}`.",
                    "Add the field to those rows, or they all land in one stratum when splitting.",
                )
            )

    lengths = report["lengths"]
    if lengths["empty_assistant"]:
        empty = _count(lengths["empty_assistant"], "assistant reply", "assistant replies")
        items.append(
            _item(
                "fix",
                f"{empty} empty or one character long: the model learns to answer with nothing.",
                "Fix or remove those rows at the source.",
            )
        )
    chars = lengths["chars"]
    if chars["count"] and chars["max"] > 10 * max(chars["p50"], 1) and chars["max"] > 2000:
        items.append(
            _item(
                "warn",
                f"A few rows are very long (longest {chars['max']:,} characters, median "
                f"{chars['p50']:,}): they cost memory and may be cut at max_seq_len.",
                "Check over_max_seq_len in the format report; raise max_seq_len or shorten them.",
            )
        )
    elif chars["count"]:
        items.append(
            _item("good", f"Lengths consistent: median row {chars['p50']:,} characters, longest {chars['max']:,}.")
        )

    diversity = report["diversity"]
    for warning in diversity["warnings"]:
        items.append(_item("warn", warning, "Collect more varied examples in 01_collect."))
    if not diversity["warnings"] and diversity["n_clusters"] > 1:
        items.append(
            _item(
                "good",
                f"Varied topics: {diversity['n_clusters']} clusters, the largest holds "
                f"{diversity['largest_cluster_share']:.0%} of rows.",
            )
        )

    items.append(_replay_item(report))
    order = {"fix": 0, "warn": 1, "good": 2}
    items.sort(key=lambda item: order[item["level"]])  # stable: problems first, in the order above
    return items[:MAX_VERDICT]


def _replay_item(report: dict[str, Any]) -> dict[str, str]:
    replay, n = report["replay"], report["rows"]
    if replay.get("off_reason"):
        return _item(
            "warn",
            f"Replay guard off: {replay['off_reason']}. Watch the forgetting probe in 05_evaluate all the same.",
            "Nothing to change for a base model; with a chat model, check that its chat template is right.",
        )
    if not replay["enabled"]:
        return _item(
            "warn",
            "Replay guard off: nothing in training reminds the model how it answered ordinary "
            "requests, so it may answer everything like the task. Watch the forgetting probe in "
            "05_evaluate.",
            f"Set replay_guard = True in {FORMAT_PARAMS}.",
        )
    if replay.get("base_model_without_template"):
        model = report["config"]["base_model"]
        return _item(
            "warn",
            f"Replay guard on, but {model} ships no chat template (a base model): it may "
            "answer no general prompt, and then formatting turns the guard off and says why — there "
            "is no chat behaviour to keep yet.",
            "Nothing to change; read the formatting cell's replay line.",
        )
    without = n - replay["rows_with_system_prompt"]
    if without > n / 2:
        return _item(
            "warn",
            f"Replay guard on, but {_count(without, 'row')} of {n:,} have no system prompt: the "
            "task then shares its context with the replay rows, and the model has less to tell a "
            "task request from an ordinary one.",
            "Give every row the same short system prompt that names the task (a system column in "
            "01_collect); at inference, send that prompt to get the task's answers.",
        )
    return _item(
        "good",
        f"Replay guard on: {replay['share']:.0%} of the training rows will be the base model's own "
        "answers to general prompts, so it keeps answering ordinary requests as before; the "
        "task's system prompt triggers the task.",
        "replay_guard is on.",
    )


def verdict_text(report: dict[str, Any]) -> str:
    """The verdict as plain text lines, for headless runs and logs."""
    marks = {"good": "OK  ", "warn": "WARN", "fix": "FIX "}
    lines = [f"Data quality: {report['rows']} rows"]
    for item in report["verdict"]:
        lines.append(f"[{marks[item['level']]}] {item['message']}")
        if item["fix"] and item["level"] != "good":
            lines.append(f"       -> {item['fix']}")
    return "\n".join(lines)

"""The measurements behind 02's quality report: length statistics and histograms per role, personal data found, the
label balance, previews of long texts."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

import numpy as np

from nbkit.core.workspace import provenance
from nbkit.data.pii import PII_KINDS, mask_secret, pii_spans

PREVIEW_CHARS = 120


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def summary_stats(values: list[int]) -> dict[str, float]:
    """count, min, mean, median, 95th percentile, max and total of a list of lengths."""
    if not values:
        return {"count": 0, "min": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0, "total": 0}
    ordered = sorted(values)
    p50, p95 = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.95))
    return {
        "count": len(ordered),
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 1),
        "p50": p50,
        "p95": p95,
        "max": ordered[-1],
        "total": sum(ordered),
    }


def _histogram(per_role: dict[str, list[int]], bins: int = 30) -> dict[str, Any]:
    """Counts per role over shared bins (up to the 99th percentile; longer values land in the last bin)."""
    everything = [v for values in per_role.values() for v in values]
    if not everything:
        return {"edges": [], "counts": {}}
    top = max(1.0, float(np.percentile(everything, 99)))
    edges = np.linspace(0, top, bins + 1)
    return {
        "edges": edges.round(1).tolist(),
        "counts": {
            role: np.histogram(np.clip(values, 0, top), bins=edges)[0].tolist() for role, values in per_role.items()
        },
    }


def length_report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per_role: dict[str, list[int]] = {}
    for row in rows:
        for message in row["messages"]:
            per_role.setdefault(message["role"], []).append(len(message["content"]))
    chars = [sum(len(m["content"]) for m in row["messages"]) for row in rows]
    return {
        "chars": summary_stats(chars),
        "per_role": {role: summary_stats(v) for role, v in per_role.items()},
        "histogram": _histogram(per_role),
        "empty_assistant": sum(
            len(m["content"].strip()) < 2 for r in rows for m in r["messages"] if m["role"] == "assistant"
        ),
    }


def pii_report(rows: list[dict[str, Any]], max_examples: int = 20) -> dict[str, Any]:
    counts: Counter = Counter()
    rows_with = 0
    examples = []
    for row in rows:
        hit = False
        for i, message in enumerate(row["messages"]):
            for start, end, kind in pii_spans(message["content"]):
                hit = True
                counts[kind] += 1
                if len(examples) < max_examples:
                    examples.append(
                        {
                            **provenance(row["meta"]),
                            "message": i,
                            "role": message["role"],
                            "kind": kind,
                            "start": start,
                            "masked": mask_secret(message["content"][start:end]),
                        }
                    )
        rows_with += hit
    return {
        "counts": {kind: counts.get(kind, 0) for kind in PII_KINDS},
        "rows_with_pii": rows_with,
        "examples": examples,
    }


def label_report(rows: list[dict[str, Any]], field_name: str) -> dict[str, Any]:
    if not field_name:
        return {"field": "", "counts": {}, "missing": 0}
    values = [row["meta"].get(field_name) for row in rows]
    counts = Counter(str(v) for v in values if v is not None)
    return {"field": field_name, "counts": dict(sorted(counts.items())), "missing": sum(v is None for v in values)}

"""Task metrics on generated answers: exact match (normalized), JSON validity, field accuracy."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any


def normalize(text: str) -> str:
    """Canonical form for comparison: JSON re-serialized with sorted keys, else plain text folded.

    Plain text: Unicode NFKC, lower case, surrounding quotes/punctuation dropped, whitespace
    collapsed — so "Paris." and " paris" match, but "Paris" and "Lyon" do not.
    """
    parsed = parse_json(text)
    if parsed is not None:
        return json.dumps(parsed, sort_keys=True, ensure_ascii=False, separators=(",", ":")).lower()
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" .,;:!?\"'`")


def parse_json(text: str) -> Any:
    """The JSON object/array in `text` (tolerating ``` fences), or None."""
    text = text.strip()
    fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.S)
    if fenced:
        text = fenced.group(1)
    if not text.startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def field_accuracy(prediction: str, reference: str) -> float | None:
    """Share of the reference object's fields that the prediction gets right (None if the reference is not an object)."""
    ref = parse_json(reference)
    if not isinstance(ref, dict) or not ref:
        return None
    pred = parse_json(prediction)
    if not isinstance(pred, dict):
        return 0.0
    return sum(pred.get(k) == v for k, v in ref.items()) / len(ref)


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Aggregate task metrics; JSON metrics only when the references are JSON."""
    n = len(references)
    if n == 0:
        return {"exact_match": 0.0}
    out = {"exact_match": sum(map(exact_match, predictions, references)) / n}
    if all(parse_json(r) is not None for r in references):
        out["json_valid"] = sum(parse_json(p) is not None for p in predictions) / n
        fields = [field_accuracy(p, r) for p, r in zip(predictions, references)]
        if all(f is not None for f in fields):
            out["field_accuracy"] = sum(fields) / n
    return out

"""Task metrics on generated answers, chosen from what the references look like.

- every task: normalized exact match;
- structured answers (JSON): JSON validity and field-level accuracy;
- label-like answers (a few distinct short strings): accuracy and macro-F1 (scikit-learn);
- free text: ROUGE-L (rouge-score) and BLEU (sacrebleu) — maintained implementations that work offline.
"""

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


def kind_of(references: list[str]) -> str:
    """ "json", "label" or "text": what the references look like, which decides the"""
    if references and all(parse_json(r) is not None for r in references):
        return "json"
    distinct = {normalize(r) for r in references}
    if references and all(len(r.split()) <= 4 for r in references) and len(distinct) <= max(10, len(references) // 3):
        return "label"
    return "text"


TASK_METRICS = {"json": "exact_match", "label": "macro_f1", "text": "rouge_l"}
# What EvalConfig.task_metric (and its panel) accepts: "" = chosen from the references, as above.
TASK_METRIC_CHOICES = (
    "",
    "exact_match",
    "json_valid",
    "field_accuracy",
    "accuracy",
    "macro_f1",
    "rouge_l",
    "bleu",
    "perplexity",
)


def task_metric(references: list[str]) -> str:
    """The headline metric for this kind of answer."""
    return TASK_METRICS[kind_of(references)]


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """All metrics that fit the references (see the module docstring)."""
    n = len(references)
    if n == 0:
        return {"exact_match": 0.0}
    out = {"exact_match": sum(map(exact_match, predictions, references)) / n}
    kind = kind_of(references)
    if kind == "json":
        out["json_valid"] = sum(parse_json(p) is not None for p in predictions) / n
        fields = [field_accuracy(p, r) for p, r in zip(predictions, references)]
        if all(f is not None for f in fields):
            out["field_accuracy"] = sum(f or 0.0 for f in fields) / n
    elif kind == "label":
        out.update(label_scores(predictions, references))
    else:
        out["rouge_l"] = rouge_l(predictions, references)
        out["bleu"] = bleu(predictions, references)
    return out


def label_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over the reference labels (a prediction outside them counts as wrong)."""
    from sklearn.metrics import accuracy_score, f1_score

    truth = [normalize(r) for r in references]
    guess = [normalize(p) for p in predictions]
    labels = sorted(set(truth))
    return {
        "accuracy": float(accuracy_score(truth, guess)),
        "macro_f1": float(f1_score(truth, guess, labels=labels, average="macro", zero_division=0)),
    }


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence of words), 0-1."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return sum(scores) / len(scores) if scores else 0.0


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu's standard settings), scaled to 0-1."""
    import sacrebleu

    return sacrebleu.corpus_bleu(predictions, [references]).score / 100


ROW_SCORE_NAMES = {"json": "field_accuracy", "label": "exact_match", "text": "rouge_l"}


def row_score(prediction: str, reference: str, kind: str) -> float:
    """One row's task score, 0-1: field accuracy for JSON objects, exact match for labels, ROUGE-L for text.

    Field accuracy gives partial credit (3 of 4 fields right), which ranks near-misses above
    answers that are wrong everywhere; exact match alone would tie them.
    """
    if kind == "json":
        fields = field_accuracy(prediction, reference)
        return float(fields) if fields is not None else exact_match(prediction, reference)
    if kind == "text":
        return rouge_l([prediction], [reference])
    return exact_match(prediction, reference)

"""Stage 06: preference pairs (a prompt, a better answer, a worse one) from what the workspace already has.

Sources (PairsConfig.sources); every pair records its source and origin:
- "ratings": a person's verdicts. 06's own (data/preferences/ratings.jsonl: two sampled answers to a training
  prompt, `sample_rating_pairs`, `save_preference_rating`) become pairs. 05's base-vs-tuned ratings are on
  **test** prompts, so they are normally all counted `not_train` and left out, on purpose.
- "corrections": answers corrected in the playground and promoted: the correction is chosen, the model's own
  answer (`model_answer`) rejected.
- "metric": no person needed: several answers sampled per training prompt and scored against the row's reference
  (`evaluate.row_score`); the best is paired with the worst when they differ by at least `min_margin`.
- "files": TRL's prompt/chosen/rejected (strings, message lists, or chosen/rejected conversations sharing their
  prompt) and OpenAI's preference fine-tuning JSONL (input.messages, preferred_output, non_preferred_output).

The leakage rule: a pair from ratings, corrections or metric is used only when its prompt (the conversation up to
the last user turn, system prompt included) is a prompt of data/splits/train.jsonl; the others are counted
`not_train` (a test prompt in training would make the test score meaningless). A user's own file mostly holds
prompts that are in no split, so for files the rule runs the other way: a pair on a validation or test prompt is
rejected, every other valid pair kept. Bad records of a file go to data/preferences/rejected.jsonl with their line
and reason; nothing valid is lost.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.core.files import read_appended, read_jsonl, write_json, write_jsonl
from nbkit.core.messages import DATA_TYPE, RecordError
from nbkit.core.readers import READERS, Reading, read_file
from nbkit.core.rows import reference_answer
from nbkit.core.workspace import SPLITS, Workspace

# Re-exported: the notebook and its panel read the pairs through this module.
from nbkit.train.prefer.config import CHOICES, FILE_SUFFIXES, OTHER, SOURCE_NAMES, SOURCES, PairsConfig
from nbkit.train.prefer.pair_report import COUNTS, describe_pairs, examples, load_pairs, notes, pairs_table  # noqa: F401
from nbkit.train.prefer.records import answer_text, asked, make_pair, parse_preference, prompt_key, prompt_turns, squash
from nbkit.train.prefer.sampled import metric_candidates, sft_run


@dataclass
class SplitPrompts:
    train: dict[str, str]  # prompt key -> the training row's reference answer
    held_out: set[str]  # prompt keys of validation and test rows
    by_text: dict[str, list[list[dict[str, str]]]]  # last user text -> prompts, held-out ones first


def split_prompts(ws: Workspace) -> SplitPrompts:
    """The prompts of train/validation/test, read once per build."""
    ws.require(ws.split("train"), "03_split")
    out = SplitPrompts({}, set(), {})
    for name in sorted(SPLITS, key=lambda s: s == "train"):  # held-out splits first
        for row in read_jsonl(ws.split(name)) if ws.split(name).is_file() else []:
            prompt = asked(row["messages"])
            if name == "train":
                out.train.setdefault(prompt_key(prompt), reference_answer(row["messages"]))
            else:
                out.held_out.add(prompt_key(prompt))
            out.by_text.setdefault(prompt[-1]["content"], []).append(prompt)
    return out


def reject(rejected: list, counts: Counter, source: Any, where: str, position: Any, reason: str, raw: Any) -> None:
    counts["rejected"] += 1
    rejected.append(
        {
            "source": str(source),
            where: position,
            "reason": reason,
            "raw": raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str),
        }
    )


def rating_candidates(ws: Workspace, run_id: str, prompts: SplitPrompts, counts: Counter, rejected: list) -> list:
    """Pairs from 06's ratings of two sampled answers and from 05's base-vs-tuned ratings of `run_id`."""
    files = [(ws.preference_ratings, {"file": "data/preferences/ratings.jsonl"}, read_appended(ws.preference_ratings))]
    if run_id:
        files.append(
            (
                ws.run_dir(run_id) / "eval" / "ratings.jsonl",
                {"run_id": run_id, "file": f"runs/{run_id}/eval/ratings.jsonl", "sides": {"A": "tuned", "B": "base"}},
                eval_ratings(ws, run_id, prompts),
            )
        )
    pairs = []
    for path, origin, records in files:
        for n, record in enumerate(records, start=1):
            counts["read"] += 1
            choice = record.get("choice")
            try:
                if record.get("problem") or choice not in CHOICES:
                    raise RecordError(DATA_TYPE, record.get("problem") or f"choice {choice!r}, not A, B or tie")
                if choice == "tie":
                    counts["ties"] += 1
                    continue
                pairs.append(
                    make_pair(
                        prompt_turns(record.get("prompt"), "prompt"),
                        answer_text(record.get(choice), choice),
                        answer_text(record.get(OTHER[choice]), OTHER[choice]),
                        "rating",
                        {**origin, "record": n, "choice": choice},
                    )
                )
            except RecordError as err:
                reject(rejected, counts, path, "record", n, str(err), record.get("raw", record))
    return pairs


def eval_ratings(ws: Workspace, run_id: str, prompts: SplitPrompts) -> list[dict[str, Any]]:
    """05's verdicts in 06's layout (A = tuned, B = base). 05 keeps only the last user turn's text, so the
    conversation is looked up in the splits, validation and test first: a test prompt is never taken for a
    training prompt that has the same words."""
    eval_dir = ws.run_dir(run_id) / "eval"
    predictions = read_jsonl(eval_dir / "predictions.jsonl") if (eval_dir / "predictions.jsonl").is_file() else []
    answers = {p["prompt"]: p for p in predictions}
    out = []
    for record in read_appended(eval_dir / "ratings.jsonl"):
        text, row = record.get("prompt"), answers.get(record.get("prompt"))
        out.append(
            {
                "raw": record,
                "prompt": (prompts.by_text.get(text) or [[{"role": "user", "content": text}]])[0],
                "A": (row or {}).get("tuned"),
                "B": (row or {}).get("base"),
                "choice": {"tuned": "A", "base": "B", "tie": "tie"}.get(record.get("winner")),
            }
        )
        if row is None:
            out[-1]["problem"] = "no row for this prompt in predictions.jsonl (was 05 run again since?)"
    return out


def correction_candidates(ws: Workspace, counts: Counter) -> list:
    """Promoted exchanges the user corrected: the corrected answer is chosen, the model's own rejected."""
    pairs = []
    for n, row in enumerate(read_appended(ws.manual), start=1):
        if isinstance(row.get("model_answer"), str) and row["model_answer"].strip():  # else written by hand
            counts["read"] += 1
            pairs.append(
                make_pair(
                    asked(row["messages"]),
                    reference_answer(row["messages"]),
                    row["model_answer"],
                    "correction",
                    {"file": "data/manual.jsonl", "record": n, "run_id": row.get("promoted_from")},
                )
            )
    return pairs


def file_candidates(path: str, prompts: SplitPrompts, counts: Counter, rejected: list) -> list:
    """Valid pairs of one file; each bad record, and each pair on a held-out prompt, goes to `rejected`."""
    pairs, reading, suffix = [], Reading(Counter(), {}), Path(path).suffix.lower()
    if not Path(path).is_file() or suffix not in FILE_SUFFIXES:
        problem = "file not found" if not Path(path).is_file() else f"not a {', '.join(FILE_SUFFIXES)} file"
        reject(rejected, counts, path, "line", None, f"{problem} — check the path in `files`", "")
        return pairs
    for item in read_file(READERS[suffix], Path(path), reading):
        counts["read"] += 1
        try:
            if item.error:
                raise item.error
            prompt, chosen, worse = parse_preference(item.record)
            if prompt_key(prompt) in prompts.held_out:
                raise RecordError(
                    "held_out_prompt",
                    "the prompt is a validation or test prompt: training on it "
                    "would leak the held-out set into training",
                )
            if squash(chosen) == squash(worse):
                raise RecordError("identical_answers", "chosen and rejected are the same answer")
        except RecordError as err:
            reject(rejected, counts, path, item.where, item.position, f"{err.category}: {err}", item.raw)
            continue
        pairs.append(make_pair(prompt, chosen, worse, "file", {"file": str(path), item.where: item.position}))
    for entry in reading.unreadable:
        reject(rejected, counts, path, "line", None, f"{entry['reason']} — {entry['fix']}", "")
    return pairs


def build_pairs(config: PairsConfig, progress: bool = True, chat_model=None) -> dict[str, Any]:
    """Build the pairs of every source; write pairs.jsonl, rejected.jsonl and pairs_report.json; return the report.

    `chat_model`: (model, tokenizer) of the run, already loaded (the playground's); else the metric source loads
    it. Report: per source (rating, correction, metric, file) read = built + ties + no_margin + rejected (which
    also counts files that could not be read), and built = kept + not_train + identical + duplicates."""
    ws = Workspace(config.workspace)
    prompts = split_prompts(ws)
    run_id = sft_run(ws.root, config.parent_run, required="metric" in config.sources)
    counts = {SOURCE_NAMES[s]: Counter() for s in SOURCES if s in config.sources}
    rejected: list[dict[str, Any]] = []
    candidates = []
    if "ratings" in config.sources:
        candidates += rating_candidates(ws, run_id, prompts, counts["rating"], rejected)
    if "corrections" in config.sources:
        candidates += correction_candidates(ws, counts["correction"])
    for path in config.files if "files" in config.sources else []:
        candidates += file_candidates(str(path), prompts, counts["file"], rejected)
    if "metric" in config.sources:
        candidates += metric_candidates(config, ws, run_id, counts["metric"], chat_model, progress)
    pairs = keep_pairs(candidates, prompts, counts)
    write_jsonl(ws.pairs, pairs)
    write_jsonl(ws.pairs_rejected, rejected)
    report = {
        "run_id": run_id,
        "train_prompts": len(prompts.train),
        "total": len(pairs),
        "sources": {name: {k: c[k] for k in COUNTS} for name, c in counts.items()},
        "examples": examples(pairs),
        "config": config.to_dict(),
    }
    report["notes"] = notes(report)
    write_json(ws.pairs_report, report)
    return report


def keep_pairs(candidates: list[dict[str, Any]], prompts: SplitPrompts, counts: dict[str, Counter]) -> list[dict]:
    """Training prompts only (files: checked against the held-out prompts already), two different answers, each
    pair once; a training prompt's pair carries the row's reference answer."""
    kept, seen = [], set()
    for pair in candidates:
        count, key = counts[pair["source"]], prompt_key(pair["prompt"])
        identity = (key, squash(pair["chosen"][0]["content"]), squash(pair["rejected"][0]["content"]))
        count["built"] += 1
        if pair["source"] != "file" and key not in prompts.train:
            count["not_train"] += 1
        elif identity[1] == identity[2]:
            count["identical"] += 1
        elif identity in seen:
            count["duplicates"] += 1
        else:
            seen.add(identity)
            count["kept"] += 1
            kept.append({**pair, **({"reference": prompts.train[key]} if key in prompts.train else {})})
    return kept

"""Answers sampled from the SFT run: two per training prompt for 06's rating panel (and the verdicts appended to
data/preferences/ratings.jsonl), and several per prompt ranked by the task's metric, the best paired with the worst."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from pathlib import Path
from typing import Any

from nbkit.core.errors import ConfigError, WorkspaceError
from nbkit.core.files import append_jsonl, read_jsonl
from nbkit.core.metrics import kind_of
from nbkit.core.rows import reference_answer
from nbkit.core.runs import resolve_parent
from nbkit.core.workspace import Workspace
from nbkit.model.generation import sample_answers
from nbkit.model.loader import load_chat_model

# Re-exported: the notebook and its panel read the pairs through this module.
from nbkit.train.prefer.config import CHOICES, PairsConfig
from nbkit.train.prefer.pair_report import COUNTS, describe_pairs, examples, load_pairs, notes, pairs_table  # noqa: F401
from nbkit.train.prefer.records import asked, make_pair, squash


def choose_rows(rows: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """Up to n rows drawn with `seed` (n = 0: all of them, shuffled)."""
    return random.Random(seed).sample(rows, min(n, len(rows)) if n else len(rows))


def sample_rating_pairs(model, tokenizer, rows: list[dict[str, Any]], n: int, seed: int, sampling) -> list[dict]:
    """Two sampled answers, shown as "A" and "B", for up to n training rows drawn with `seed`: [{"prompt":
    [...messages], "reference", "A", "B"}]. `sampling`: a playground.SamplingSettings. Both answers come from the
    same model, so no side needs hiding; a pair whose answers are the same text is left out (nothing to choose)."""
    if sampling.temperature <= 0:
        raise ConfigError(
            "`temperature` must be > 0 to rate two sampled answers (greedy gives the same answer "
            "twice) — set it in the sampling settings."
        )
    chosen = choose_rows(rows, n, seed)
    prompts = [asked(r["messages"]) for r in chosen]
    answers = sample_answers(
        model, tokenizer, prompts, 2, sampling.max_new_tokens, sampling.temperature, sampling.top_p, seed
    )
    return [
        {"prompt": p, "reference": reference_answer(r["messages"]), "A": a, "B": b}
        for p, r, (a, b) in zip(prompts, chosen, answers)
        if squash(a) != squash(b)
    ]


def candidates_to_rate(config: PairsConfig) -> list[dict[str, Any]]:
    """`rate_prompts` training prompts, each with two answers sampled from the SFT run (`sample_rating_pairs`, at
    the metric source's temperature and answer length): what 06's rating panel shows."""
    from nbkit.model.generation import SamplingSettings, answer_budget

    ws = Workspace(config.workspace)
    rows = [r for r in read_jsonl(ws.require(ws.split("train"), "03_split")) if not r.get("meta", {}).get("replay")]
    model, tokenizer = load_chat_model(ws.root, sft_run(ws.root, config.parent_run))
    budget = config.max_new_tokens or answer_budget(tokenizer, [reference_answer(r["messages"]) for r in rows])
    sampling = SamplingSettings(max_new_tokens=budget, temperature=config.temperature, top_p=config.top_p)
    return sample_rating_pairs(model, tokenizer, rows, config.rate_prompts, config.seed, sampling)


def save_preference_rating(workspace: str | Path, pair: dict[str, Any], choice: str) -> dict[str, Any]:
    """Append a verdict on a sampled pair to data/preferences/ratings.jsonl; return the record written."""
    if choice not in CHOICES:
        raise ConfigError(f"`choice` must be one of {CHOICES}, got {choice!r}.")
    record = {
        "prompt": pair["prompt"],
        "A": pair["A"],
        "B": pair["B"],
        "choice": choice,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    append_jsonl(Workspace(workspace).preference_ratings, record)
    return record


def metric_candidates(
    config: PairsConfig, ws: Workspace, run_id: str, counts: Counter, chat_model=None, progress: bool = True
) -> list:
    """Best vs. worst of several sampled answers per training prompt, by the task's per-row score. Replay rows
    (the base model's answers to general prompts) are not the task and are left out."""
    from nbkit.core.metrics import ROW_SCORE_NAMES, row_score
    from nbkit.model.generation import answer_budget

    rows = [r for r in read_jsonl(ws.split("train")) if not r.get("meta", {}).get("replay")]
    references = [reference_answer(r["messages"]) for r in rows]
    kind = kind_of(references)
    model, tokenizer = chat_model or load_chat_model(ws.root, run_id)
    chosen = choose_rows(rows, config.max_prompts, config.seed)
    prompts = [asked(r["messages"]) for r in chosen]
    answers = sample_answers(
        model,
        tokenizer,
        prompts,
        config.samples_per_prompt,
        config.max_new_tokens or answer_budget(tokenizer, references),
        config.temperature,
        config.top_p,
        config.seed,
        progress,
    )
    pairs = []
    for prompt, row, samples in zip(prompts, chosen, answers):
        counts["read"] += 1
        scores = [round(row_score(a, reference_answer(row["messages"]), kind), 4) for a in samples]
        best, worst = scores.index(max(scores)), scores.index(min(scores))
        if scores[best] - scores[worst] < config.min_margin:
            counts["no_margin"] += 1
            continue
        pairs.append(
            make_pair(
                prompt,
                samples[best],
                samples[worst],
                "metric",
                {
                    "run_id": run_id,
                    "metric": ROW_SCORE_NAMES[kind],
                    "scores": scores,
                    "chosen_index": best,
                    "rejected_index": worst,
                    "temperature": config.temperature,
                    "top_p": config.top_p,
                    "seed": config.seed,
                },
            )
        )
    return pairs


def sft_run(workspace: str | Path, run_id: str = "", required: bool = True) -> str:
    """The SFT run pairs are sampled from (runs.resolve_parent); "" when there is none and none is `required`."""
    try:
        return resolve_parent(Workspace(workspace), run_id)[0]
    except WorkspaceError:
        if required or run_id:
            raise
        return ""

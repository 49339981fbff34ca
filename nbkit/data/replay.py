"""The replay guard: the base model's own answers to general prompts, mixed into training.

Training on one task pulls every answer towards it: after a short run a small model answers "What is the
capital of France?" with the task's JSON. Replay keeps a share of each training split for reminders of how the
model answered ordinary requests before it was tuned. The reminders are self-distillation: the base model's
greedy answers to REPLAY_PROMPTS, a general prompt set shipped with the kit (facts, sums, short instructions,
formatting, short writing). No outside data, nothing to download, and the answers teach nothing new, so the
adapter only learns the task — in the task's context.

The task's system prompt is what should trigger the learned pattern: replay rows carry no system prompt, so
the model sees the model's own default context answered in its own words, and the task context answered with
the task.

Answers are generated once per base model and cached under nbkit's cache folder (see models.cache_dir), one
JSON line per prompt; a larger share later only generates the prompts not yet answered. Answers that run to
REPLAY_MAX_NEW_TOKENS without ending are left out: training on them would teach answers that stop mid-way.

Stage 02 builds the pool (data/formatted/replay.jsonl), stage 03 puts the share into train only; replay rows
never reach validation or test, so they never count in a task metric. The forgetting probe in
nbkit.evaluate.evaluator asks questions that are not in this set (a test checks both sets stay apart).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import warnings
from pathlib import Path
from typing import Any

from nbkit.core.errors import DataError
from nbkit.core.files import read_appended, write_jsonl
from nbkit.core.workspace import Workspace
from nbkit.model.loader import cache_dir

REPLAY_MAX_NEW_TOKENS = 80
# The model does not answer general prompts (a base model) when fewer than this share of the first MIN_ASKED ended.
MIN_ASKED = 16
MIN_ANSWERED_SHARE = 0.25
DEFAULT_SHARE = 0.15  # measured on the demo: see README, "The replay guard"
MAX_SHARE = 0.5

# General requests with short answers, so generating them stays cheap; none asks for anything harmful (a base
# model that complies would be taught to comply again), and none repeats a forgetting-probe question.
REPLAY_PROMPTS: tuple[str, ...] = (
    "What is the capital of Italy?",
    "What is the capital of Spain?",
    "What is the capital of Australia?",
    "What is the capital of China?",
    "What is the capital of India?",
    "What is the capital of Kenya?",
    "What is the capital of Argentina?",
    "What is the capital of the United Kingdom?",
    "What is the capital of Russia?",
    "What is the capital of Brazil?",
    "How many hours are in a day?",
    "How many months are in a year?",
    "What is the freezing point of water in Fahrenheit?",
    "What is the boiling point of water at sea level?",
    "What is the hottest planet in the solar system?",
    "What is the largest desert in the world?",
    "What is the chemical symbol for gold?",
    "How many sides does a triangle have?",
    "How many players are on a soccer team on the field?",
    "Which ocean lies between Europe and America?",
    "What is the largest country by area?",
    "Who invented the telephone?",
    "Where is the Eiffel Tower?",
    "What is the largest animal on Earth?",
    "What is the fastest land animal?",
    "What does a thermometer measure?",
    "What is the main ingredient in guacamole?",
    "Recommend a classic novel to read.",
    "What is 7 + 8?",
    "What is 11 + 11?",
    "What is 8 + 6?",
    "What is 3 squared?",
    "What is the square root of 81?",
    "What is a quarter of 100?",
    "What is 5 times 6?",
    "What is 15 minus 6?",
    "Is 17 a prime number?",
    "What is the smallest prime number?",
    "What is the opposite of big?",
    "What is the opposite of fast?",
    "What is the opposite of happy?",
    "What is the plural of 'child'?",
    "What is a synonym for 'big'?",
    "Give me a synonym for 'quick'.",
    "Translate 'good morning' into Spanish.",
    "How do you say 'goodbye' in French?",
    "What is 'cat' in German?",
    "Give me a word that rhymes with 'light'.",
    "What is the past tense of 'eat'?",
    "What is the first letter of the word 'banana'?",
    "Write the word 'hello' in lowercase.",
    "Answer with a single number: how many wheels does a bicycle have?",
    "Give me a list of three colors, separated by commas.",
    "Write a sentence that starts with 'Today'.",
    "List three fruits that are red.",
    "List three animals that can fly.",
    "Write a haiku about autumn leaves.",
    "Suggest a name for a pet goldfish.",
    "Summarize the story of Cinderella in two sentences.",
    "Explain what a noun is in one sentence.",
    "Write a short greeting for a birthday card.",
    "What shape has four equal sides?",
    "How many legs does an insect have?",
    "What is ice made of?",
    "Why is exercise good for health?",
    "What causes rain?",
    "What is the Great Wall of China?",
    "What is the moon made of?",
    "What does DNA stand for?",
    "What is the capital of Mexico?",
    "What is the capital of Turkey?",
    "What is the capital of Sweden?",
    "What is the capital of Peru?",
    "What is the capital of Vietnam?",
    "How many days are in a leap year?",
    "How many seconds are in a minute?",
    "What is 2 times 8?",
    "What is 14 + 3?",
    "What is 9 minus 4?",
    "What is the opposite of early?",
    "What is the opposite of empty?",
    "What is the plural of 'goose'?",
    "What is a synonym for 'small'?",
    "How do you say 'cat' in Spanish?",
    "Name a fruit that is yellow.",
    "Name an animal that lives in the sea.",
    "Write one word that describes the sun.",
    "What do you call a young sheep?",
    "What do you call a baby cow?",
    "Which bird is a symbol of peace?",
    "What color do you get by mixing blue and yellow?",
    "What is the hardest natural material?",
    "Which continent is Kenya in?",
    "What is the largest city in Japan?",
    "Who was the first president of the United States?",
    "What do you call a shape with six sides?",
    "What do pandas eat?",
    "Write a short sentence about the weather.",
    "Give me a name for a friendly robot.",
    "What is the capital of Nigeria?",
    "What is the capital of Poland?",
    "What is the capital of Chile?",
    "What is the capital of Indonesia?",
    "What is the capital of Finland?",
    "How many weeks are in a year?",
    "How many zeros are in one thousand?",
    "What is 6 + 7?",
    "What is 4 times 4?",
    "What is 18 minus 9?",
    "What is the opposite of light?",
    "What is the opposite of soft?",
    "What is the plural of 'woman'?",
    "What is a synonym for 'angry'?",
    "How do you say 'water' in Spanish?",
    "How do you say 'dog' in French?",
    "Name a vegetable that is green.",
    "Name a tool used to write.",
    "What do you call a baby horse?",
    "What color are most leaves in summer?",
    "Which animal has a long trunk?",
    "Which season comes after winter?",
    "What do you use to see things far away?",
    "What is the largest bone in the human body?",
    "Which metal is liquid at room temperature?",
    "What do we call molten rock from a volcano?",
    "Write a one-line thank-you note to a teacher.",
    "Give me a title for a story about a lost cat.",
    "Describe a cup of coffee in five words.",
    "Suggest a healthy snack.",
    "Name a famous scientist.",
    "What is a group of wolves called?",
    "Which instrument has six strings?",
    "What is the color of an emerald?",
)


def replay_needed(n_train: int, share: float) -> int:
    """Replay rows that make `share` of a training split holding n_train task rows."""
    if share <= 0 or n_train <= 0:
        return 0
    return math.ceil(share * n_train / (1 - share) - 1e-9)


def cache_file(base_model: str, method: str, thinking: bool = False) -> Path:
    """One cache file per base model, load method, answer length (and thinking, when on)."""
    key = json.dumps([base_model, method, REPLAY_MAX_NEW_TOKENS, *(["thinking"] if thinking else [])])
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", base_model).strip("_")[-60:]
    return cache_dir() / "replay" / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsonl"


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """The cached answers by prompt. The cache is rewritten whole (atomically), but one written by an older
    version could end in a cut-off line: that one is set aside and answered again (read_appended)."""
    try:
        return {item["prompt"]: item for item in read_appended(path) if "prompt" in item}
    except DataError as err:  # a damaged cache costs answers, never the run
        warnings.warn(f"{err} The replay cache is rebuilt.", stacklevel=2)
        return {}


def _write_cache(path: Path, answers: dict[str, dict[str, Any]]) -> None:
    write_jsonl(path, answers.values())  # atomic: two processes filling the same cache never leave half a file


def base_answers(
    base_model: str, n_rows: int, batch_size: int = 0, thinking: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Cached greedy answers of the base model, in prompt order, until n_rows of them ended by themselves — or
    until it is clear the model does not answer general prompts (a base model without chat training: fewer than
    MIN_ANSWERED_SHARE of at least MIN_ASKED ended by themselves), then "gave_up" is True.

    Returns the answers ({"prompt", "answer", "ended"}) and what it took: prompts asked, answers generated now
    (0 when the cache had them all), seconds, the cache file.
    """
    from nbkit.model.devices import bitsandbytes_problem
    from nbkit.model.generation import generate_with_stops
    from nbkit.model.loader import load_model, load_tokenizer, pick_device, quiet_library_notices

    plan = pick_device()
    # The model QLoRA starts from, which the evaluation compares against: 4-bit (plain without bitsandbytes).
    method = "qlora" if bitsandbytes_problem() is None else "lora"
    path = cache_file(base_model, method, thinking)
    cached = _read_cache(path)
    model = tokenizer = None
    generated, started = 0, time.perf_counter()
    order: list[dict[str, Any]] = []
    ended = 0
    gave_up = False
    for start, prompt in enumerate(REPLAY_PROMPTS):
        if ended >= n_rows:
            break
        if len(order) >= MIN_ASKED and ended < MIN_ANSWERED_SHARE * len(order):
            gave_up = True  # asking the rest would cost minutes and give as little
            break
        if prompt not in cached:
            tokenizer = tokenizer or load_tokenizer(base_model, thinking=thinking)
            # Ask for the rest in one go: enough prompts for the rows still missing, assuming one in eight runs long.
            # A model without a chat template of its own (a base model) is first asked MIN_ASKED only: it may well
            # answer none of them.
            missing = n_rows - ended
            if tokenizer.nbkit_template != "model" and len(order) < MIN_ASKED:
                missing = min(missing, MIN_ASKED - len(order))
            ask = [p for p in REPLAY_PROMPTS[start : start + math.ceil(missing * 1.15) + 2] if p not in cached]
            if model is None:
                print(
                    f"Replay guard: the base model answers {len(ask)} general prompts (once per model; cached in "
                    f"{path.parent})...",
                    flush=True,
                )
                with quiet_library_notices():
                    model, _ = load_model(base_model, method, plan)
                model.eval()
            # On a CPU a decoding step costs about the same for 32 prompts as for 128: ask them all at once.
            size = batch_size or (len(ask) if plan.device == "cpu" else plan.eval_batch_size)
            for first in range(0, len(ask), size):
                chunk = ask[first : first + size]
                texts, stops = generate_with_stops(
                    model, tokenizer, [[{"role": "user", "content": p}] for p in chunk], REPLAY_MAX_NEW_TOKENS, size
                )
                for p, text, stop in zip(chunk, texts, stops):
                    cached[p] = {"prompt": p, "answer": text, "ended": bool(stop and text)}
                generated += len(chunk)
                _write_cache(path, cached)
                print(f"  {generated} answered ({time.perf_counter() - started:.0f} s)", flush=True)
        item = cached[prompt]
        order.append(item)
        ended += item["ended"]
    if model is not None:
        from nbkit.model.memory import release_memory

        del model
        release_memory()
    return order, {
        "asked": len(order),
        "generated": generated,
        "seconds": round(time.perf_counter() - started, 1),
        "cache": str(path),
        "method": method,
        "gave_up": gave_up,
    }


def replay_rows(
    base_model: str, n_rows: int, batch_size: int = 0, thinking: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Up to n_rows replay rows (fewer when the prompt set runs out) and a report of how they were made."""
    answers, report = (
        base_answers(base_model, n_rows, batch_size, thinking)
        if n_rows > 0
        else ([], {"asked": 0, "generated": 0, "seconds": 0.0, "cache": "", "method": "", "gave_up": False})
    )
    rows = [
        {
            "messages": [{"role": "user", "content": a["prompt"]}, {"role": "assistant", "content": a["answer"]}],
            "meta": {"source": "replay", "index": i, "replay": True, "model": base_model},
        }
        for i, a in enumerate(answers)
        if a["ended"]
    ][:n_rows]
    report["runaway"] = sum(not a["ended"] for a in answers)
    return rows, report


def write_pool(config, tokenizer, n_task_rows: int) -> dict[str, Any]:
    """Stage 02's part: enough replay rows for `config.replay_share` of a training split as large as all
    n_task_rows, each within max_seq_len, written to data/formatted/replay.jsonl (empty when the guard is off).
    Returns the format report's "replay" section."""
    from nbkit.model.loss_mask import IGNORE_INDEX, tokenize_chat

    ws = Workspace(config.workspace)
    if not config.replay_guard:
        write_jsonl(ws.replay, [])
        return {"enabled": False, "rows": 0}
    wanted = replay_needed(n_task_rows, config.replay_share)
    rows, report = replay_rows(config.base_model, wanted, thinking=config.thinking)
    kept, too_long = [], 0
    for row in rows:
        encoded = tokenize_chat(tokenizer, row["messages"])
        if len(encoded["input_ids"]) > config.max_seq_len:
            too_long += 1
            continue
        kept.append(
            {
                **row,
                "n_tokens": len(encoded["input_ids"]),
                "n_trained": sum(label != IGNORE_INDEX for label in encoded["labels"]),
            }
        )
    if report["gave_up"] or (wanted and not kept):
        write_jsonl(ws.replay, [])
        reason = (
            f"{config.base_model} ended {len(rows)} of its {report['asked']} answers to general prompts by "
            f"itself{f' and {too_long} of those were over max_seq_len' if too_long else ''} (the rest ran past "
            f"{REPLAY_MAX_NEW_TOKENS} tokens), so there is nothing worth replaying: a base model without chat "
            "training does not answer ordinary requests yet, and has no such behaviour to lose"
        )
        print(f"Replay guard turned off: {reason}.", flush=True)
        return {
            "enabled": False,
            "rows": 0,
            "off_reason": reason,
            "wanted": wanted,
            "runaway_answers_left_out": report["runaway"],
            "model": config.base_model,
            "cache": report["cache"],
        }
    write_jsonl(ws.replay, kept)
    return {
        "enabled": True,
        "share": config.replay_share,
        "wanted": wanted,
        "rows": len(kept),
        "runaway_answers_left_out": report["runaway"],
        "over_max_seq_len_left_out": too_long,
        "model": config.base_model,
        "generated_now": report["generated"],
        "seconds": report["seconds"],
        "cache": report["cache"],
        "examples": [r["messages"] for r in kept[:3]],
    }

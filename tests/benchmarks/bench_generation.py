"""Benchmark: batched generation (left padding) against a one-prompt-at-a-time loop.

Target (issue: evaluation): batched at least 4x faster on CPU, with the same greedy answers.
Both runs use the embedded model in 4-bit and the same test prompts from the bundled data.
Run with `make benchmark`.
"""

from __future__ import annotations

import argparse
import json
import time

from nbkit.core.rows import prompt_messages
from nbkit.data.collect import SAMPLE_DATA
from nbkit.model.generation import generate
from nbkit.model.loader import EMBEDDED_MODEL, load_model, load_tokenizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    rows = [json.loads(line) for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines()[: args.prompts]]
    prompts = [prompt_messages(r["messages"]) for r in rows]
    tokenizer = load_tokenizer(EMBEDDED_MODEL)
    model, _ = load_model(EMBEDDED_MODEL, "qlora")
    model.eval()
    generate(model, tokenizer, prompts[:2], args.max_new_tokens, 2)  # warm-up (weight repacking, caches)

    timings, answers = {}, {}
    for label, batch in (("serial", 1), ("batched", args.batch_size)):
        start = time.perf_counter()
        answers[label] = generate(model, tokenizer, prompts, args.max_new_tokens, batch)
        timings[label] = time.perf_counter() - start
        print(
            f"{label:>8}: {len(prompts)} prompts in {timings[label]:.1f} s "
            f"({len(prompts) / timings[label]:.2f} prompts/s, batch {batch})",
            flush=True,
        )
    speedup = timings["serial"] / timings["batched"]
    same = sum(a == b for a, b in zip(answers["serial"], answers["batched"]))
    print(f"\nbatched is {speedup:.1f}x faster (target >= 4x); identical greedy answers: {same}/{len(prompts)}")
    ok = speedup >= 4
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

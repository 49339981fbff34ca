"""Benchmark: validate, near-deduplicate and split synthetic chat rows at 10k, 30k and 100k rows.

Targets (issue: data stages): 100,000 rows in under 20 s on a 2-core machine, and time growing
near-linearly with the row count. Run with `make benchmark` (or `python tests/benchmarks/bench_data.py`).
The rows are written to a real JSONL file and go through the same code as notebook 01-03:
collect (read + validate + exact duplicates), near-duplicate clusters (MinHash/LSH), split with
the leakage check.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from nbkit.core.files import read_jsonl
from nbkit.data.collect import CollectConfig, collect
from nbkit.data.near_duplicates import near_duplicate_clusters, row_text
from nbkit.data.split import SplitConfig, find_leaks, split_rows

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "bi", "do", "fe", "gu", "ha"]


def synthetic_rows(n: int, seed: int = 0) -> list[str]:
    """n JSONL lines: varied tickets, 3% planted near-duplicates, 1% invalid records."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    lines: list[str] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.01:
            lines.append('{"messages": [{"role": "user", "content": "no answer"}]}')
            continue
        if roll < 0.04 and lines:
            twin = json.loads(rng.choice(lines))
            if "messages" in twin and len(twin["messages"]) == 3:
                twin["messages"][1]["content"] += " " + rng.choice(vocab)
                lines.append(json.dumps(twin))
                continue
        words = " ".join(rng.choice(vocab) for _ in range(rng.randint(8, 40)))
        label = rng.choice(["billing", "account", "technical", "shipping"])
        lines.append(
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": "Triage the support ticket."},
                        {"role": "user", "content": f"ticket {i}: {words}"},
                        {"role": "assistant", "content": json.dumps({"team": label, "priority": "normal"})},
                    ],
                    "label": label,
                }
            )
        )
    return lines


def run(n: int, workdir: Path) -> dict[str, float]:
    source = workdir / f"rows-{n}.jsonl"
    source.write_text("\n".join(synthetic_rows(n)) + "\n", encoding="utf-8")
    ws = workdir / f"ws-{n}"
    timings = {}
    start = time.perf_counter()
    report = collect(CollectConfig(workspace=str(ws), sources=[str(source)]))
    timings["validate"] = time.perf_counter() - start
    rows = read_jsonl(ws / "data" / "clean.jsonl")
    start = time.perf_counter()
    clusters = near_duplicate_clusters([row_text(r) for r in rows])
    timings["near_dup"] = time.perf_counter() - start
    start = time.perf_counter()
    splits = split_rows(rows, SplitConfig(workspace=str(ws)))
    leaks = find_leaks(splits)
    timings["split+leakage"] = time.perf_counter() - start
    timings["total"] = sum(timings.values())
    print(
        f"{n:>7} rows: kept {report['kept']}, rejected {report['rejected']}, near-dup clusters {len(clusters)}, "
        f"leaks {sum(map(len, leaks.values()))} | " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()),
        flush=True,
    )
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000,100000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: run(n, Path(tmp)) for n in sizes}
    small, large = sizes[0], sizes[-1]
    growth = results[large]["total"] / results[small]["total"]
    print(
        f"\n{large} rows in {results[large]['total']:.1f} s (target < 20 s); time x{growth:.1f} for "
        f"x{large / small:.0f} rows (linear would be x{large / small:.0f})"
    )
    ok = results[large]["total"] < 20 and growth < 1.5 * large / small
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

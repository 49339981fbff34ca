"""Greedy answers of exported GGUF files in llama.cpp itself, against the merged model's (export/parity.json).

Not part of the test suite: llama-cpp-python compiles llama.cpp on install (~20 min on 2 cores). Run it with a
Python that has it, on a folder `export_run` wrote:

    pip install llama-cpp-python        # builds llama.cpp
    python tests/llama_cpp_parity.py workspace/runs/<run_id>/export

It prints, per GGUF file, how many answers equal the merged model's and how many ran to the length limit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import llama_cpp


def main(export: Path) -> None:
    parity = json.loads((export / "parity.json").read_text())
    merged = parity["merged"]
    if "answers" not in merged:  # a fully fine-tuned run: its own answers are in the GGUF entries' mismatches
        merged["answers"] = []
    limit = merged["max_new_tokens"]
    for path in sorted(export.glob("*.gguf")):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_threads=2, verbose=False)
        same = runaway = 0
        for item in merged["answers"]:
            reply = llm.create_chat_completion(messages=item["messages"], max_tokens=limit, temperature=0)
            choice = reply["choices"][0]
            same += choice["message"]["content"].strip() == item["answer"]
            runaway += choice["finish_reason"] == "length"
        print(
            f"{path.name}: {same} of {len(merged['answers'])} greedy answers identical to the merged model in "
            f"llama.cpp (llama-cpp-python {llama_cpp.__version__}); {runaway} ran to {limit} tokens; "
            f"pre-tokenizer {llm.metadata.get('tokenizer.ggml.pre')}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))

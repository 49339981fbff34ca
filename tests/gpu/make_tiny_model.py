"""Write the embedded model's config.json and tokenizer files (no weights) into tests/gpu/smollm2-config/.

The GPU machine has no network and only 64 MiB travel there with the working tree, so the embedded GGUF
(98 MB) and its converted checkpoint (538 MB) stay here. Its architecture and tokenizer (~4 MB) are enough:
gpu_check.py builds a model with random weights from them (same shapes, same vocabulary, same chat
template), which exercises every CUDA path — 4-bit loading, dtypes, memory, speed — with a loss that starts
near ln(vocab) and falls. Answer quality needs the real weights and is checked on the CPU by the test suite.

Run once here (the folder is committed):  .venv/bin/python tests/gpu/make_tiny_model.py
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TARGET = HERE / "smollm2-config"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")


def main() -> int:
    sys.path.insert(0, str(REPO))
    from nbkit.model.loader import EMBEDDED_MODEL, resolve_model

    source = Path(resolve_model(EMBEDDED_MODEL))  # converts the GGUF on first use (~20 s)
    files = [
        p
        for p in sorted(source.iterdir())
        if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES) and not p.name.endswith(".index.json")
    ]
    if not any(p.name == "config.json" for p in files) or not any(p.name.startswith("tokenizer") for p in files):
        print(f"{source} has no config.json or tokenizer files: delete it and run again to reconvert.")
        return 1
    if TARGET.exists():
        shutil.rmtree(TARGET)
    TARGET.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, TARGET / path.name)
    size = sum(p.stat().st_size for p in TARGET.iterdir())
    print(
        f"wrote {len(files)} files ({size / 2**20:.1f} MiB) from {source} to {TARGET.relative_to(REPO)}: "
        + ", ".join(p.name for p in files)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

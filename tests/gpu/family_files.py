"""The files of one non-Llama model family for gpu_check.py's `family` stage: packed here, rebuilt there.

The GPU machine has no network and only 64 MiB travel to it, so it gets a family's tokenizer and config but no
weights. The source is tests/families.py's tiny model of the family (its REAL tokenizer, a config with two layers
of 32 hidden units, random weights) in ~/.cache/nbkit-test-assets/families-v1/<name>/, built here by the test suite.

- `pack` (run by `make gpu-wheels`, tests/gpu/fetch_wheels.py) copies that folder WITHOUT model.safetensors into
  .whl/families/<name>/, gzipping every file over 1 MiB (Gemma 3's tokenizer.json: 31.8 MiB, 5.3 MiB gzipped).
  For a SentencePiece vocabulary (Gemma 3, Phi-3.5) it adds the tokenizer.model that llama.cpp's converter reads
  (transformers 5 writes tokenizer.json only), rebuilt from the GGUF vocabulary the family's tokenizer came from,
  as nbkit's export does for an embedded model (nbkit.export.gguf.sentencepiece_from_gguf).
- `build_model` (gpu_check.py, on the GPU machine) unzips such a folder into a new one and adds random weights
  built from its config (seed 0, float32): a checkpoint `load_model` and the whole kit take as `base_model`.
- `locate` says where the packed files are: .whl/families/<name>/, else (here) the test suite's cache, packed
  into a temporary folder on the way.

    .venv/bin/python tests/gpu/family_files.py [--dest .whl/families] [--family gemma3]   (pack only)
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FAMILY = "gemma3"  # end of turn <end_of_turn> differs from EOS <eos>; a base checkpoint: nbkit supplies the template
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
GZIP_OVER = 2**20  # files larger than this travel gzipped
PACKED_JSON = "packed.json"  # what pack wrote, with the family's facts (end of turn, EOS) for the check


def families_module():
    """tests/families.py (it imports nothing heavy at import time; it is in the working tree on the GPU machine)."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    import families

    return families


def cache_folder(name: str = FAMILY) -> Path:
    """Where tests/families.py builds family `name` (tokenizer, config, random weights)."""
    return families_module().BUILT / name


def packed_folder(name: str = FAMILY, repo: Path = REPO) -> Path:
    return repo / ".whl" / "families" / name


def facts(name: str) -> dict[str, Any]:
    """What the family's instruct repository ships (tests/families.py): EOS, end of turn, generation EOS tokens."""
    family = families_module().FAMILIES[name]
    return {
        "family": name,
        "architecture": family.architecture,
        "eos_token": family.eos_token,
        "end_of_turn": family.end_of_turn,
        "generation_eos": list(family.generation_eos),
        "template": family.template,
    }


def sentencepiece_vocabulary(model_dir: Path) -> bool:
    """Whether tokenizer.json is SentencePiece-style (Unigram, or BPE with byte fallback): llama.cpp's converter
    reads such vocabularies from tokenizer.model."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return False
    model = json.loads(path.read_text(encoding="utf-8"))["model"]
    return model.get("type") == "Unigram" or bool(model.get("byte_fallback"))


def vocabulary_gguf(name: str) -> Path:
    """The GGUF the family's tokenizer was converted from (its SentencePiece pieces, scores and types)."""
    families = families_module()
    vocab = families.FAMILIES[name].vocab
    if vocab == "gemma3":
        from nbkit.model.loader import EMBEDDED_GEMMA, embedded_gguf

        return embedded_gguf(EMBEDDED_GEMMA)
    return families.ASSETS / f"ggml-vocab-{vocab}.gguf"


def pack(source: Path, dest: Path, name: str = FAMILY) -> dict[str, Any]:
    """Copy family folder `source` without its weights into `dest` (replaced), files over 1 MiB gzipped, plus a
    tokenizer.model for a SentencePiece vocabulary. Returns what packed.json records: files and their sizes."""
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} has no config.json: build the family first (tests/families.py)")
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    notes = []
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in WEIGHTS:
            shutil.copy2(path, staging / path.name)
    if sentencepiece_vocabulary(staging) and not (staging / "tokenizer.model").is_file():
        try:
            from nbkit.export.gguf import sentencepiece_from_gguf

            gguf_path = vocabulary_gguf(name)
            if sentencepiece_from_gguf(gguf_path, staging) is None:
                notes.append(f"no tokenizer.model: {gguf_path.name} holds no SentencePiece vocabulary")
            else:
                notes.append(f"tokenizer.model rebuilt from {gguf_path.name}")
        except Exception as err:  # noqa: BLE001 - the GGUF export then says what is missing; the rest still runs
            notes.append(f"no tokenizer.model ({type(err).__name__}: {err}): the GGUF export will refuse")
    for path in sorted(staging.iterdir()):
        if path.stat().st_size > GZIP_OVER:
            with (
                open(path, "rb") as raw,
                open(path.with_name(path.name + ".gz"), "wb") as packed,
                gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=packed, mtime=0) as out,
            ):
                shutil.copyfileobj(raw, out)  # no name or time in the header: the same files give the same bytes
            path.unlink()
    files = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
    record = {**facts(name), "source": str(source), "files": files, "bytes": sum(files.values()), "notes": notes}
    (staging / PACKED_JSON).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return record


def locate(name: str, scratch: Path, repo: Path = REPO) -> tuple[Path | None, str]:
    """(packed folder, where it came from), or (None, why there is none). Prefers .whl/families/<name>/ (what
    travels to the GPU machine); else packs tests/families.py's cache into `scratch` (here, for --allow-cpu)."""
    packed = packed_folder(name, repo)
    if (packed / "config.json").is_file():
        return packed, f"{packed.relative_to(repo)} (make gpu-wheels)"
    try:
        cache = cache_folder(name)
    except Exception as err:  # noqa: BLE001 - tests/families.py missing or broken
        return None, f"no {packed} and tests/families.py cannot be read ({type(err).__name__}: {err})"
    if not (cache / "config.json").is_file():
        return None, (
            f"no {name} files: neither {packed.relative_to(repo)}/ (`make gpu-wheels` copies them there, "
            f"from the test suite's cache) nor that cache {cache} (built by `make test`, or "
            f"`.venv/bin/python tests/gpu/family_files.py --family {name}`, which builds and packs it)"
        )
    pack(cache, scratch / name, name)
    return scratch / name, f"tests/families.py's cache {cache} (packed into {scratch / name})"


def unpack(folder: Path, target: Path) -> None:
    """The packed files, unzipped, into `target` (packed.json stays behind)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name == PACKED_JSON:
            continue
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as raw, open(target / path.stem, "wb") as out:
                shutil.copyfileobj(raw, out)
        else:
            shutil.copy2(path, target / path.name)


def build_model(folder: Path, target: Path, seed: int = 0) -> dict[str, Any]:
    """A loadable checkpoint in `target`: random weights from the packed config (seed, float32), then the packed
    tokenizer, generation config and tokenizer.model over what save_pretrained wrote. Returns facts about it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    target.mkdir(parents=True, exist_ok=True)
    unpack(folder, target)
    config = AutoConfig.from_pretrained(target)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(target)
    del model
    unpack(folder, target)  # the family's own generation_config.json (EOS ids) and config, not the rewritten ones
    packed = json.loads((folder / PACKED_JSON).read_text(encoding="utf-8")) if (folder / PACKED_JSON).is_file() else {}
    vocab = config.get_text_config().vocab_size if hasattr(config, "get_text_config") else config.vocab_size
    return {
        "architecture": (config.architectures or ["?"])[0],
        "model_type": config.model_type,
        "parameters": parameters,
        "vocab": vocab,
        "size_mib": round(sum(p.stat().st_size for p in target.iterdir() if p.is_file()) / 2**20, 1),
        "packed_mib": round(packed.get("bytes", 0) / 2**20, 2),
        "notes": packed.get("notes", []),
        "facts": {
            k: packed[k] for k in ("family", "eos_token", "end_of_turn", "generation_eos", "template") if k in packed
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="Pack a family's files (no weights) for the GPU machine.")
    parser.add_argument("--dest", default=str(REPO / ".whl" / "families"), help="folder of the packed families")
    parser.add_argument("--family", default=FAMILY, help=f"family name in tests/families.py (default {FAMILY})")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    source = cache_folder(args.family)
    if not (source / "config.json").is_file():
        families_module().build(args.family)
    record = pack(source, Path(args.dest) / args.family, args.family)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

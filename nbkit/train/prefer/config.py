"""Stage 06's settings (PreferConfig) and what a preference run will need in memory, before anything loads."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from nbkit.core.config import Config, field
from nbkit.core.workspace import Workspace

OBJECTIVES = ("dpo", "grpo")
DEFAULT_BETA = {"dpo": 0.1, "grpo": 0.0}  # the DPO paper's; TRL's GRPO default (no KL term, no reference pass)
# Preference tuning nudges a model that already does the task: ~20-40x below 04's LoRA rates (1e-3..2e-3), and
# 10x lower again when every weight moves (TRL's DPO examples train full models at 5e-7..5e-6).
DEFAULT_LR = {"adapter": 5e-5, "full": 5e-6}
REFERENCE = "ref"  # the adapter name TRL 1.16 computes reference log-probs with
EVAL_MIN_PAIRS, EVAL_SHARE = 20, 0.1  # hold out the pairs of ~10% of the prompts once there are 20 pairs
FORMAT_WEIGHT = 0.2  # valid JSON is worth a fifth of a fully right answer
PAIRS_CELL = "the 'Build the pairs' cell of 06_prefer (nbkit.train.prefer.pairs.build_pairs)"


@dataclass
class PreferConfig(Config):
    """Everything that decides a preference run; saved, resolved, as runs/<run_id>/config.json.

    Start: workspace, method, parent_run, run_id, resume. Strength: beta, sft_weight, learning_rate, max_steps, seed.
    Batches: batch_size, gradient_accumulation_steps, max_length, max_prompt_length, max_completion_length.
    GRPO: num_generations, temperature. Watching: logging_steps, eval_steps, save_steps.
    """

    workspace: str = field("workspace", "Folder that holds every stage's output (on Colab: a Drive folder).")
    method: str = field(
        "dpo",
        "dpo: learn from preference pairs (data/preferences/pairs.jsonl); grpo: sample "
        "answers to training prompts and reinforce those the task metric scores higher.",
    )
    parent_run: str = field(
        "", "The 04 run to start from; empty = the latest finished run that is not itself a preference run."
    )
    run_id: str = field("", "Run folder name; empty = a new id (with resume: the latest checkpointed preference run).")
    beta: float = field(
        -1.0,
        "DPO: how close the policy stays to the SFT reference (higher = closer). GRPO: the KL "
        "weight. -1 = the method's default: 0.1 for DPO, 0.0 for GRPO (TRL's).",
    )
    learning_rate: float = field(
        0.0,
        "Peak learning rate; 0 = 5e-5 for a LoRA/QLoRA parent, 5e-6 for a fully "
        "fine-tuned one (preference tuning nudges; SFT's rates would undo it).",
    )
    sft_weight: float = field(
        1.0,
        "DPO: weight of an SFT loss on the chosen answers beside the preference loss (RPO; TRL's loss_type "
        "['sigmoid', 'sft']). It keeps the chosen answers likely: pairs that differ in a word can otherwise push "
        "both answers down and a third one up. 0 = plain DPO.",
    )
    max_steps: int = field(50, "Optimizer steps; 0 = one pass over the pairs (DPO) or prompts (GRPO).")
    batch_size: int = field(
        4, "Per forward pass: pairs (DPO) or sampled answers (GRPO: a multiple of num_generations)."
    )
    gradient_accumulation_steps: int = field(1, "Passes summed per optimizer step.")
    max_length: int = field(0, "Tokens of prompt + answer; 0 = the parent's max_seq_len (DPO cuts answers' ends).")
    max_prompt_length: int = field(
        0,
        "Longer prompts are set aside, never cut (the model would learn on a context "
        "it never sees); 0 = max_length - max_completion_length.",
    )
    max_completion_length: int = field(
        0,
        "Tokens an answer may take (GRPO samples up to this); 0 = 05's answer "
        "budget (1.25 x the longest answer + 8), at most half of max_length.",
    )
    num_generations: int = field(4, "GRPO: answers sampled per prompt and compared with each other (>= 2).")
    temperature: float = field(1.0, "GRPO: sampling temperature; answers must differ for their scores to differ.")
    logging_steps: int = field(1, "Log every this many steps.")
    eval_steps: int = field(10, "DPO: evaluate on the held-out pairs every this many steps (0 = only at the end).")
    save_steps: int = field(10, "Checkpoint every this many steps.")
    resume: bool = field(False, "Continue the run from its last checkpoint (after a crash or a lost runtime).")
    seed: int = field(42, "Random seed for data order, the held-out pairs and sampling.")
    compare_examples: int = field(
        0, "Test rows 06 scores the new run (and its parent, when 05 has not) on; 0 = all, as 05."
    )

    def validate(self) -> None:
        self.require_choice("method", OBJECTIVES)
        self.require(self.beta == -1 or self.beta >= 0, "beta", f"must be >= 0 (-1: the default), got {self.beta}")
        self.require(
            self.method != "dpo" or self.beta != 0,
            "beta",
            "must be > 0 for DPO (0 gives every pair the same loss)",
            "leave it at -1 (0.1) or set e.g. 0.1",
        )
        self.require(self.sft_weight >= 0, "sft_weight", f"must be >= 0 (0 = plain DPO), got {self.sft_weight}")
        self.require(0 <= self.learning_rate < 1, "learning_rate", f"must be in [0, 1), got {self.learning_rate}")
        for name in ("max_steps", "max_length", "max_prompt_length", "max_completion_length", "eval_steps"):
            self.require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps"):
            self.require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        for name in ("max_prompt_length", "max_completion_length"):
            self.require(
                not self.max_length or getattr(self, name) < self.max_length,
                name,
                f"must be below max_length ({self.max_length}), got {getattr(self, name)}",
                "lower it, or 0 for the default",
            )
        self.require(
            self.num_generations >= 2,
            "num_generations",
            f"must be >= 2 (GRPO compares the answers to one prompt), got {self.num_generations}",
        )
        per_step = self.batch_size * self.gradient_accumulation_steps
        self.require(
            self.method != "grpo" or per_step % self.num_generations == 0,
            "batch_size",
            f"x gradient_accumulation_steps ({per_step}) must be a multiple of num_generations "
            f"({self.num_generations}) for GRPO",
            f"set batch_size={self.num_generations}",
        )
        self.require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        self.require(
            self.compare_examples >= 0, "compare_examples", f"must be >= 0 (0 = all), got {self.compare_examples}"
        )
        for name in ("run_id", "parent_run"):
            value = getattr(self, name)
            self.require("/" not in value and ".." not in value, name, f"must be a plain folder name, got {value!r}")


def preference_memory_estimate(config: PreferConfig, available_gib: float | None = None):
    """Peak memory of a preference run in 04's terms (nbkit.train.estimate.FitEstimate), before anything loads.

    DPO keeps the policy and the reference — one base model with two adapters (the trainable one and a frozen
    copy), or two whole models for a fully fine-tuned parent — and passes chosen and rejected answers together:
    two sequences of max_length per pair. GRPO with beta 0 keeps no reference and one sequence per answer.
    """
    from nbkit.core.runs import resolve_parent, run_config
    from nbkit.model.loader import pick_device
    from nbkit.model.shape import model_shape
    from nbkit.train.estimate import FITS, TIGHT, FitEstimate, available_memory_gib, memory_parts

    ws = Workspace(config.workspace)
    parent_id, parent = resolve_parent(ws, config.parent_run)
    train, plan = run_config(ws.root, parent_id), pick_device(parent["method"])
    shape = model_shape(train.base_model, train.lora_r, train.target_modules)
    sequences = 2 if config.method == "dpo" else 1
    tokens = config.batch_size * sequences * (config.max_length or train.max_seq_len)
    parts = memory_parts(
        shape, parent["method"], tokens, False, plan.device, plan.compute_dtype != "float32", plan.autocast
    )
    if config.method == "dpo" or config.beta > 0:
        parts["reference (frozen copy of the parent)"] = (
            parts["weights"] if parent["method"] == "full" else shape.lora * 4 / 2**30
        )
    need = sum(parts.values())
    available = available_gib if available_gib is not None else available_memory_gib(plan.device)
    verdict = "fits" if need <= FITS * available else "tight" if need <= TIGHT * available else "will not fit"
    advice = (
        []
        if verdict == "fits"
        else [
            f"lower batch_size ({sequences} sequence(s) of max_length each) and raise gradient_accumulation_steps",
            "lower max_length",
        ]
    )
    return FitEstimate(
        method=f"{parent['method']} {config.method}",
        device=plan.device,
        batch_tokens=tokens,
        gradient_checkpointing=False,
        parts_gib={k: round(v, 3) for k, v in parts.items()},
        total_gib=round(need, 3),
        available_gib=round(available, 2),
        verdict=verdict,
        advice=advice,
    )


SOURCES = ("ratings", "corrections", "metric", "files")


SOURCE_NAMES = {"ratings": "rating", "corrections": "correction", "metric": "metric", "files": "file"}


CHOICES = ("A", "B", "tie")


OTHER = {"A": "B", "B": "A"}


FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class PairsConfig(Config):
    """Which sources to build preference pairs from, and how the metric source samples answers."""

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    parent_run: str = field(
        "",
        "The SFT run (04) to sample from and whose 05 ratings to read; empty = the latest "
        "run that is not itself a preference run.",
    )
    sources: list = field(list(SOURCES), 'Where pairs come from: any of "ratings", "corrections", "metric", "files".')
    files: list = field([], "Preference files (.jsonl/.json/.parquet) in TRL's or OpenAI's format.")
    samples_per_prompt: int = field(4, "Metric source: answers sampled per training prompt (>= 2).")
    max_prompts: int = field(64, "Metric source: training prompts to sample for, drawn with `seed` (0 = all).")
    temperature: float = field(1.0, "Metric source: sampling temperature (> 0: greedy answers would all be alike).")
    top_p: float = field(1.0, "Metric source: sample from the tokens whose probability adds up to this, in (0, 1].")
    max_new_tokens: int = field(0, "Metric source: longest answer; 0 = 1.25 x the longest reference + 8.")
    min_margin: float = field(
        0.1, "Metric source: pair the best and worst answers when their scores (0-1) differ by at least this."
    )
    seed: int = field(42, "Seed for the prompts drawn and the sampling.")
    rate_prompts: int = field(
        8,
        "Training prompts to sample two answers for and rate by hand in 06's panel "
        "(interactive runs only; 0 = no rating).",
    )

    def validate(self) -> None:
        self.require(bool(self.workspace), "workspace", "must not be empty")
        self.require(
            isinstance(self.sources, (list, tuple)) and bool(self.sources),
            "sources",
            f"must be a non-empty list of {', '.join(SOURCES)}, got {self.sources!r}",
        )
        for value in self.sources:
            self.require(value in SOURCES, "sources", f"has {value!r}; use any of {', '.join(SOURCES)}")
        self.require(isinstance(self.files, (list, tuple)), "files", f"must be a list of paths, got {self.files!r}")
        self.require(self.samples_per_prompt >= 2, "samples_per_prompt", f"must be >= 2, got {self.samples_per_prompt}")
        self.require(self.max_prompts >= 0, "max_prompts", f"must be >= 0 (0 = all), got {self.max_prompts}")
        self.require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        self.require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        self.require(self.max_new_tokens >= 0, "max_new_tokens", f"must be >= 0, got {self.max_new_tokens}")
        self.require(0 < self.min_margin <= 1, "min_margin", f"must be in (0, 1], got {self.min_margin}")
        self.require(self.rate_prompts >= 0, "rate_prompts", f"must be >= 0 (0 = no rating), got {self.rate_prompts}")
        if self.files and "files" not in self.sources:
            warnings.warn('`files` is ignored: "files" is not in `sources`.', stacklevel=3)

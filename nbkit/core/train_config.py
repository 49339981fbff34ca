"""Stage 04's settings: TrainConfig, saved with every run as runs/<run_id>/config.json.

The trainer (nbkit.train.sft), the run folder (nbkit.core.runs), the fit estimate, the launcher and the panels all read
it, so it lives apart from the code that trains.

A setting belongs to the first stage that declares it. `base_model` and `max_seq_len` are 02_format's: it applies
that model's chat template and reports what that length cuts. Here they default to empty / 0, which means "as 02
formatted the data" (its format_report.json); `resolved()` fills them in, and a value set here overrides 02's
with a warning, since 02's token counts and truncation report then describe another model or length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nbkit.core.config import Config, field
from nbkit.core.files import read_json
from nbkit.core.workspace import Workspace

TRAIN_METHODS = ("qlora", "lora", "full")
BATCHING = ("length-grouped", "padded", "padding-free", "packed")
CHECKPOINTING = ("auto", "on", "off")
TRACKERS = ("tensorboard", "wandb", "mlflow", "none")
# 02_format's defaults for the settings a run takes from it when 02 left no report (FormatConfig declares the
# same; a test keeps them equal): the embedded SmolLM2, 512 tokens, no thinking block.
FORMAT_DEFAULTS = {"base_model": "embedded:SmolLM2-135M-Instruct", "max_seq_len": 512, "thinking": False}


@dataclass
class TrainConfig(Config):
    """Everything that decides a training run; saved as runs/<run_id>/config.json.

    Model:     base_model, method
    Schedule:  max_steps, num_train_epochs, learning_rate, warmup_ratio, weight_decay, seed
    Batching:  batch_size, gradient_accumulation_steps, max_seq_len, batching, gradient_checkpointing
    LoRA:      lora_r, lora_alpha, lora_dropout, target_modules
    Watching:  logging_steps, eval_steps, early_stopping_patience, load_best, report_to
    Surviving: save_steps, resume, run_id
    """

    workspace: str = field("workspace", "Folder that holds every stage's output (on Colab: a Drive folder).")
    base_model: str = field(
        "",
        "Model to fine-tune; empty = the one 02_format prepared the data for (the embedded "
        "SmolLM2 by default). A Hub id or local path here overrides 02's, with a warning.",
    )
    method: str = field(
        "qlora",
        "qlora: 4-bit frozen base + LoRA (least memory); lora: 16/32-bit base + LoRA; "
        "full: every weight trains (most memory, small models only).",
    )
    run_id: str = field("", "Name of the run folder; empty = a new timestamped id (or, with resume, the latest run).")
    # 71 = 60 / (1 - 0.15): the 60 steps of task rows the demo needs, plus the replay guard's default share.
    max_steps: int = field(
        71,
        "Optimizer steps to train; 0 = use num_train_epochs instead. The default gives the "
        "task 60 steps' worth of rows beside the replay guard's 15%.",
    )
    num_train_epochs: float = field(1.0, "Passes over the training split (used when max_steps is 0).")
    learning_rate: float = field(1e-3, "Peak learning rate; LoRA on small models tolerates 1e-4..2e-3.")
    warmup_ratio: float = field(0.05, "Share of steps spent ramping the learning rate up from 0.")
    weight_decay: float = field(0.0, "L2 penalty on the trained weights.")
    batch_size: int = field(8, "Examples per forward pass (per device).")
    gradient_accumulation_steps: int = field(1, "Passes summed per optimizer step (effective batch = product).")
    max_seq_len: int = field(0, "Examples are truncated to this many tokens; 0 = 02_format's max_seq_len.")
    batching: str = field(
        "length-grouped",
        "length-grouped: batches of similar length (little padding, fastest "
        "here); padded: random batches padded to the longest; padding-free: "
        "one flat sequence per batch; packed: rows packed into max_seq_len.",
    )
    gradient_checkpointing: str = field(
        "auto",
        "Recompute activations in the backward pass to save memory "
        "(~30% slower): auto = only when the fit estimate needs it.",
    )
    lora_r: int = field(16, "LoRA rank: size of the low-rank update; 8-64 is typical.")
    lora_alpha: int = field(32, "LoRA scale (update is multiplied by alpha / r); often 2 x r.")
    lora_dropout: float = field(0.05, "Dropout on the LoRA input during training.")
    target_modules: str = field(
        "all-linear", "Layers that get LoRA: 'all-linear' or a comma list like 'q_proj,v_proj'."
    )
    logging_steps: int = field(5, "Log train loss every this many steps.")
    eval_steps: int = field(20, "Evaluate on the validation split every this many steps (0 = only at the end).")
    save_steps: int = field(20, "Checkpoint every this many steps (a multiple of eval_steps when early stopping).")
    early_stopping_patience: int = field(
        3, "Stop after this many evaluations without a better validation loss (0 = never stop early)."
    )
    load_best: bool = field(True, "At the end, keep the checkpoint with the lowest validation loss.")
    resume: bool = field(False, "Continue the run from its last checkpoint (after a crash or a lost runtime).")
    report_to: str = field(
        "tensorboard", "Where metrics also go: tensorboard, wandb, mlflow or none (comma list for several)."
    )
    seed: int = field(42, "Random seed for LoRA init and data order.")

    def validate(self) -> None:
        self.require_choice("method", TRAIN_METHODS)
        self.require_choice("batching", BATCHING)
        self.require_choice("gradient_checkpointing", CHECKPOINTING)
        self.require(self.max_steps >= 0, "max_steps", f"must be >= 0, got {self.max_steps}")
        self.require(
            self.max_steps > 0 or self.num_train_epochs > 0,
            "num_train_epochs",
            f"must be > 0 when max_steps is 0, got {self.num_train_epochs}",
        )
        self.require(0 < self.learning_rate < 1, "learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        self.require(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        self.require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        self.require(self.max_seq_len >= 0, "max_seq_len", f"must be >= 0 (0 = 02_format's), got {self.max_seq_len}")
        for name in (
            "batch_size",
            "gradient_accumulation_steps",
            "lora_r",
            "lora_alpha",
            "logging_steps",
            "save_steps",
        ):
            self.require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        self.require(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        self.require(self.eval_steps >= 0, "eval_steps", f"must be >= 0, got {self.eval_steps}")
        self.require(
            self.early_stopping_patience >= 0,
            "early_stopping_patience",
            f"must be >= 0, got {self.early_stopping_patience}",
        )
        if self.selects_best:
            self.require(
                self.save_steps % self.eval_steps == 0,
                "save_steps",
                f"must be a multiple of eval_steps ({self.eval_steps}) to keep the best checkpoint, "
                f"got {self.save_steps}",
                f"set save_steps={self.eval_steps}, or load_best=False and early_stopping_patience=0",
            )
        self.require(
            bool(self.target_modules.strip()),
            "target_modules",
            "must not be empty",
            "use 'all-linear' or a comma list such as 'q_proj,v_proj'",
        )
        unknown = set(self.trackers) - set(TRACKERS)
        self.require(
            not unknown,
            "report_to",
            f"has unknown trackers {sorted(unknown)}",
            f"use a comma list of {', '.join(TRACKERS)}",
        )
        self.require(
            "/" not in self.run_id and ".." not in self.run_id,
            "run_id",
            f"must be a plain folder name, got {self.run_id!r}",
        )

    @property
    def effective_batch_size(self) -> int:
        """Examples per optimizer step in one process; `accelerate launch` multiplies it by the process count."""
        return self.batch_size * self.gradient_accumulation_steps

    @property
    def selects_best(self) -> bool:
        """Whether validation drives checkpoints (early stopping or best-checkpoint selection)."""
        return self.eval_steps > 0 and (self.load_best or self.early_stopping_patience > 0)

    @property
    def trackers(self) -> list[str]:
        return [t.strip() for t in self.report_to.split(",") if t.strip() and t.strip() != "none"]

    def resolved(self, warn: Callable[[str], None] | None = None) -> TrainConfig:
        """This config with `base_model` and `max_seq_len` taken from 02_format where left empty / 0.

        `warn` hears about a value set here that differs from 02's. Without a format report (02 not run yet),
        02's own defaults stand in.
        """
        formatted = formatted_settings(self.workspace)
        changes = {}
        for name, unset in (("base_model", ""), ("max_seq_len", 0)):
            value = getattr(self, name)
            if value == unset:
                changes[name] = formatted[name]
            elif value != formatted[name] and warn is not None:
                warn(
                    f"Warning: {name}={value!r} here, but 02_format prepared the data with {name}="
                    f"{formatted[name]!r}: its token counts and truncation report describe that. Leave {name} "
                    f"{'empty' if unset == '' else 0} to use 02's, or set it in 02_format and run 02 and 03 again."
                )
        return self.replace(**changes) if changes else self


def formatted_settings(workspace: str) -> dict:
    """base_model, max_seq_len and thinking as 02_format used them (its format_report.json), else 02's defaults."""
    report_path = Workspace(workspace).format_report
    report = read_json(report_path) if report_path.exists() else {}
    return {name: report.get(name) or default for name, default in FORMAT_DEFAULTS.items()}

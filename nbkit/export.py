"""Export a run: merge its LoRA adapter into the base model, check parity, push to the Hub.

Why merge: a merged model is one ordinary checkpoint — it loads without peft and serves at
base-model speed (no adapter matmuls). The merge is done into an UNQUANTIZED base: folding the
update into 4-bit weights would round it away. For a QLoRA run that base is the 4-bit base the
adapter was trained on, dequantized: the adapter learned to correct those weights, not the
original 16-bit ones.

Why check parity: merging is arithmetic (W + B·A·alpha/r) and should change nothing, but a
wrong base model, dtype or tokenizer would. So the merged folder is reloaded from disk and its
greedy answers on the first test prompts are compared with those of the model evaluation scored,
within a stated tolerance (the 4-bit base of a QLoRA run rounds differently from the merged one).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from nbkit.errors import ConfigError, NbkitError
from nbkit.evaluate import generate
from nbkit.formatting import prompt_messages, reference_answer
from nbkit.devices import local_rank
from nbkit.memory import release_memory
from nbkit.models import (load_model, load_saved_model, load_tokenizer, load_trained_model, pick_device,
                          quiet_library_notices, resolve_model)
from nbkit.runs import load_run, resolve_run
from nbkit.workspace import Workspace, read_jsonl, write_json

PARITY_PROMPTS = 8


# Share of greedy answers of the merged model that must equal those of the model evaluation scored. All of
# them when both compute in float32 (the merged weights are then the evaluated ones: dequantized 4-bit base
# + the LoRA update); in 16-bit the merged weights are rounded once more, which may flip a near-tie token
# and change the rest of one answer.
PARITY_TOLERANCE = {"exact": 1.0, "rounded": 0.75}
MERGE_HEADROOM = 1.3  # merging briefly holds a layer's update beside its weights; loading has its own buffers


def merge_adapter(workspace: str | Path, run_id: str = "", out_dir: str | Path | None = None,
                  n_prompts: int = PARITY_PROMPTS) -> dict[str, Any]:
    """Merge the run's adapter into the unquantized base; save it in the base's own dtype; check parity.

    Parity is checked against the model that evaluation scored (for QLoRA runs the 4-bit base + adapter): its
    greedy answers on the first test prompts are compared with the merged model's, reloaded from disk, and
    must agree on at least PARITY_TOLERANCE of them. The merge itself runs on the GPU when the unquantized
    base fits in its free memory, else on the CPU; every model is freed before the next loads.

    Writes runs/<run_id>/merged/ (or `out_dir`) and parity.json inside it: {"prompts", "identical",
    "agreement", "tolerance", "within_tolerance", "compared_with", "merged_on", "saved_dtype", "mismatches"}.
    Returns the parity record plus "run_id", "path" and "merged": True. A fully fine-tuned run has no
    adapter: its model/ folder is returned as it is, with "merged": False.
    """
    from peft import PeftModel

    ws = Workspace(workspace)
    run_id = resolve_run(ws.root, run_id)
    run = load_run(ws.root, run_id)
    if run["method"] == "full":
        path = ws.run_dir(run_id) / "model"
        print(f"Run {run_id} was fully fine-tuned: {path} is already a standalone model, nothing to merge "
              "(push_to_hub uploads it as it is).", flush=True)
        return {"run_id": run_id, "path": str(path), "merged": False}
    out = Path(out_dir) if out_dir else ws.run_dir(run_id) / "merged"
    rows = read_jsonl(ws.require(ws.split("test"), "03_split"))[:n_prompts]
    prompts = [prompt_messages(r["messages"]) for r in rows]

    tokenizer = load_tokenizer(run["base_model"])
    longest = max((len(tokenizer(reference_answer(r["messages"]))["input_ids"]) for r in rows), default=16)
    max_new = int(1.25 * longest) + 8
    plan = pick_device()
    dtype = saved_dtype(resolve_model(run["base_model"]))
    where = merge_device(plan, run["base_model"], dtype)
    evaluated = f"{'4-bit' if run['method'] == 'qlora' else plan.compute_dtype} base + adapter"
    with quiet_library_notices():
        model = load_trained_model(run, ws.run_dir(run_id), plan)
        evaluated_answers = generate(model, tokenizer, prompts, max_new)
        del model
        release_memory()
        print(f"Merging the adapter of run {run_id} into {run['base_model']} on the {where}, saved in {dtype} "
              f"(answers compared with the evaluated {evaluated}, {plan.reason})...", flush=True)
        base = merge_base(run, dtype, where)
        merged = PeftModel.from_pretrained(base, ws.run_dir(run_id) / "adapter").merge_and_unload()
        merged.to(plan.torch_dtype(dtype))
        merged.config.use_cache = True  # training turned the cache off; generation wants it
        if out.exists():
            shutil.rmtree(out)
        merged.save_pretrained(out)
        tokenizer.save_pretrained(out)
        del merged, base
        release_memory()
        print(f"Saved the merged model to {out}; reloading it to check parity...", flush=True)
        reloaded = load_saved_model(out, plan)
        merged_answers = generate(reloaded, tokenizer, prompts, max_new)
        del reloaded
        release_memory()

    mismatches = [{"prompt": p[-1]["content"], "adapter": a, "merged": m}
                  for p, a, m in zip(prompts, evaluated_answers, merged_answers) if a != m]
    exact = plan.compute_dtype == "float32" and dtype == "float32"
    tolerance = PARITY_TOLERANCE["exact" if exact else "rounded"]
    agreement = (len(prompts) - len(mismatches)) / max(len(prompts), 1)
    parity = {"prompts": len(prompts), "identical": len(prompts) - len(mismatches), "agreement": round(agreement, 3),
              "tolerance": tolerance, "within_tolerance": agreement >= tolerance, "compared_with": evaluated,
              "merged_on": where, "saved_dtype": dtype, "mismatches": mismatches, "max_new_tokens": max_new,
              "dtype": plan.compute_dtype}
    write_json(out / "parity.json", parity)
    verdict = "within" if parity["within_tolerance"] else "OUTSIDE"
    print(f"Parity: {parity['identical']} of {parity['prompts']} greedy answers identical to the evaluated "
          f"{evaluated} ({verdict} the tolerance of {tolerance:.0%}).", flush=True)
    if not parity["within_tolerance"]:
        warnings.warn(f"The merged model in {out} answers differently from the model evaluation scored on "
                      f"{len(mismatches)} of {len(prompts)} prompts (tolerance {tolerance:.0%}): check the base "
                      "model, the dtype and the tokenizer before using it (mismatches are in parity.json).",
                      stacklevel=2)
    return {"run_id": run_id, "path": str(out), "merged": True, **parity}


def merge_base(run: dict[str, Any], dtype: str, where: str):
    """The base the adapter is merged into, on `where`, in `dtype`: for a QLoRA run the 4-bit base it was trained
    and evaluated with, dequantized — so the merged model answers like the evaluated one (merging into the
    original 16-bit weights instead gave 1 of 8 identical greedy answers on the embedded model, against 8 of 8);
    for a LoRA run the unquantized base."""
    from nbkit.devices import replace_device

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
    """"cuda" when the unquantized base fits in this GPU's free memory with headroom, else "cpu": an 8B model in
    16-bit is 16 GB, more than a T4 holds, while any machine that trained it has the RAM."""
    if plan.device != "cuda":
        return "cpu"
    import torch

    from nbkit.estimate import model_shape

    need = model_shape(base_model).total * torch.tensor([], dtype=getattr(torch, dtype)).element_size()
    free, _ = torch.cuda.mem_get_info(local_rank())
    return "cuda" if need * MERGE_HEADROOM < free else "cpu"


def merge_if_requested(config, summary: dict[str, Any]) -> dict[str, Any] | None:
    """What notebook 05 calls: merge the evaluated run when `config.merge` is True, else None."""
    if not config.merge:
        return None
    return merge_adapter(config.workspace, summary["run_id"])


# -- Hub upload ---------------------------------------------------------------------------------

OFFLINE_VALUES = {"1", "true", "yes", "on"}


def hub_unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """None if the Hub endpoint accepts a TCP connection within `timeout`, else why not.

    Runs in a daemon thread joined with a timeout, because name resolution ignores socket
    timeouts and can hang for a minute on machines without a network.
    """
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (80 if parsed.scheme == "http" else 443)
    problem: list[str] = ["no answer within the timeout"]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            problem[0] = ""
        except OSError as err:
            problem[0] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    if thread.is_alive():
        return f"no answer from {host}:{port} within {timeout:.0f} s"
    return problem[0] or None


def push_to_hub(path: str | Path, repo_id: str, *, private: bool = True, token: str | None = None) -> str:
    """Upload a merged model (or an adapter) folder to the Hugging Face Hub; return the repo URL.

    Fails fast with NbkitError when the Hub cannot be reached (HF_HUB_OFFLINE set, or no
    connection) instead of hanging in retries.
    """
    path = Path(path)
    if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise NbkitError(f"{path} holds no model (no config.json or adapter_config.json) — pass the merged/ "
                         "folder that merge_adapter wrote, or a run's adapter/ folder.")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"`repo_id` must look like 'user-or-org/model-name', got {repo_id!r}.")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES:
        raise NbkitError("cannot push to the Hub: HF_HUB_OFFLINE is set (offline mode) — unset it on a machine "
                         "with internet and log in with `hf auth login`; the model stays in " f"{path}.")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    problem = hub_unreachable(endpoint)
    if problem:
        raise NbkitError(f"cannot push to the Hub: {endpoint} is unreachable ({problem}) — check the network "
                         f"connection and try again; the model stays in {path}.")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(path), repo_id=repo_id, commit_message="Upload model trained with nbkit")
    except Exception as err:  # authentication, permissions, HTTP errors: one clear line instead of a traceback
        raise NbkitError(f"pushing {path} to {repo_id} failed ({type(err).__name__}: {err}) — log in with "
                         "`hf auth login` (a token with write access) and check the repo name.") from err
    return str(url)

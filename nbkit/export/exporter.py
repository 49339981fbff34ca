"""Export a run: merge its LoRA adapter into the base model, write GGUF files and an Ollama Modelfile,
check that every export answers like the evaluated model, push to the Hub.

Everything lands in runs/<run_id>/export/: merged/ (an ordinary Hugging Face checkpoint),
<run_id>-f16.gguf and <run_id>-q8_0.gguf (llama.cpp's converter; llama.cpp, LM Studio; nbkit.export.gguf),
<run_id>-q4_k_m.gguf where llama.cpp's quantizer is installed (else Ollama quantizes the f16 file on
`ollama create --quantize q4_K_M`), Modelfile (Ollama; nbkit.export.ollama) and parity.json with every comparison.

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

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nbkit.core.errors import ConfigError, ExportError, NbkitError
from nbkit.core.files import write_json
from nbkit.core.network import hub_endpoint, hub_offline, hub_unreachable
from nbkit.core.runs import load_run, resolve_run
from nbkit.core.workspace import EXPORT_FORMATS, Workspace
from nbkit.export.gguf import GGUF_TYPES, OLLAMA_QUANTIZE, QUANTIZED
from nbkit.export.merge import PARITY_PROMPTS, merge_adapter, parity_prompts
from nbkit.model.generation import generate_with_stops, runaway_count
from nbkit.model.loader import load_saved_model, load_tokenizer, pick_device, quiet_library_notices, run_tokenizer
from nbkit.model.memory import release_memory

# Share of greedy answers a GGUF file (read back through transformers' GGUF loader) must give exactly as the
# merged model does: f16 rounds every weight once (a near-tie token may flip and change one answer), Q8_0 keeps
# 8 bits per weight in blocks of 32 with one scale (answers may drift after a few tokens), Q4_K_M ~4.8 bits (more
# answers drift; not measured here, where no quantizer is installed).
GGUF_TOLERANCE = {"f16": 0.75, "q8_0": 0.5, QUANTIZED: 0.25}


def export_if_requested(config, summary: dict[str, Any]) -> dict[str, Any] | None:
    """What notebook 05 calls: export the evaluated run in `config.export_formats`, else None."""
    if not config.export_formats:
        return None
    return export_run(config.workspace, summary["run_id"], config.export_formats)


def export_run(
    workspace: str | Path, run_id: str = "", formats: Iterable[str] = ("merged",), n_prompts: int = PARITY_PROMPTS
) -> dict[str, Any]:
    """Export a run to runs/<run_id>/export/ in `formats` (EXPORT_FORMATS: "gguf" needs the merged model,
    "ollama" the GGUF), checking each export against the evaluated model; writes and returns parity.json's
    record: {"run_id", "formats", "merged": {...}, "gguf": {type: {...}}, "ollama": {...}}.

    A format the model cannot take (gguf_export.gguf_problem, a converter failure, an unusual chat template) is
    refused with the reason in the record and a warning; the other formats are still written. The Modelfile
    points at the Q4_K_M file, or where none could be written here at the f16 file, quantized by `ollama create`."""
    from nbkit.core.errors import OllamaError
    from nbkit.export.ollama import write_modelfile

    formats = normalized_formats(formats)
    ws = Workspace(workspace)
    run_id = resolve_run(ws.root, run_id)
    run = load_run(ws.root, run_id)
    out = ws.run_dir(run_id) / "export"
    out.mkdir(parents=True, exist_ok=True)
    # Written last: an export killed part-way has none, so nothing reads its files as checked.
    (out / "parity.json").unlink(missing_ok=True)
    merged = merge_adapter(ws.root, run_id, out / "merged", n_prompts)
    record: dict[str, Any] = {
        "run_id": run_id,
        "formats": formats,
        "merged": {k: v for k, v in merged.items() if k not in ("answers", "conversations")},
    }
    if "answers" in merged:  # what the exports are compared with, for other runtimes too (llama.cpp, Ollama)
        record["merged"]["answers"] = [
            {"messages": c, "answer": a} for c, a in zip(merged["conversations"], merged["answers"])
        ]
    if "gguf" in formats:
        record["gguf"] = export_ggufs(ws, run, run_id, Path(merged["path"]), merged, n_prompts)
    if "ollama" in formats and "refused" not in record.get("gguf", {}):
        q4 = record["gguf"][QUANTIZED]
        # No Q4_K_M file here: Ollama quantizes the f16 one when it creates the model.
        gguf_name, quantize = (
            (Path(q4["path"]).name, None) if q4["written"] else (f"{run_id}-f16.gguf", OLLAMA_QUANTIZE)
        )
        try:
            record["ollama"] = write_modelfile(
                out,
                gguf_name,
                run_tokenizer(run),
                merged["path"],
                ws.read_split("train"),
                name=f"nbkit-{run_id}".lower(),
                quantize=quantize,
            )
            print("Ollama: " + " && ".join(record["ollama"]["commands"]), flush=True)
        except OllamaError as err:
            record["ollama"] = {"refused": str(err)}
            warnings.warn(f"No Ollama Modelfile for run {run_id}: {err}", stacklevel=2)
    write_json(out / "parity.json", record)
    return record


def export_ggufs(
    ws: Workspace, run: dict[str, Any], run_id: str, model_dir: Path, merged: dict[str, Any], n_prompts: int
) -> dict[str, Any]:
    """The GGUF files of a run, each read back and checked: f16 and Q8_0 by llama.cpp's converter, Q4_K_M by its
    quantizer where llama-cpp-python is installed (else an entry saying Ollama quantizes the f16 file). {"refused":
    why} when the converter cannot take the model or fails."""
    from nbkit.export.gguf import add_sentencepiece_file, gguf_problem, quantized_by_ollama, quantizer_available

    source = add_sentencepiece_file(model_dir, run["base_model"])
    if source:
        print(f"The converter reads this SentencePiece vocabulary from tokenizer.model: {source}.", flush=True)
    problem = gguf_problem(model_dir)
    if problem:
        warnings.warn(f"No GGUF export for run {run_id}: {problem}", stacklevel=3)
        return {"refused": problem}
    if "answers" not in merged:  # a fully fine-tuned run: its answers were not generated by a merge
        merged.update(reference_answers(ws, run, model_dir, n_prompts))
    out = ws.run_dir(run_id) / "export"
    f16 = out / f"{run_id}-f16.gguf"
    entries: dict[str, Any] = {}
    try:
        for kind in GGUF_TYPES:
            entries[kind] = export_gguf(model_dir, out / f"{run_id}-{kind}.gguf", kind, merged)
        entries[QUANTIZED] = (
            export_gguf(model_dir, out / f"{run_id}-{QUANTIZED}.gguf", QUANTIZED, merged, f16)
            if quantizer_available()
            else quantized_by_ollama(f16)
        )
    except ExportError as err:
        warnings.warn(f"No GGUF export for run {run_id}: {err}", stacklevel=3)
        return {"refused": str(err)}
    return entries


def describe_export(record: dict[str, Any] | None) -> str:
    """What export_run wrote and how each export compared, as lines for the notebook."""
    if not record:
        return "Nothing exported (export_formats is empty)."
    merged = record["merged"]
    lines = [f"Exported run {record['run_id']} ({', '.join(record['formats'])}):"]
    if merged.get("merged"):
        lines.append(
            f"  merged model: {merged['path']} — {merged['identical']} of {merged['prompts']} greedy answers "
            f"identical to the evaluated {merged['compared_with']} (tolerance {merged['tolerance']:.0%})"
        )
    else:
        lines.append(f"  model: {merged['path']} (fully fine-tuned: nothing to merge)")
    gguf = record.get("gguf") or {}
    if "refused" in gguf:
        lines.append(f"  GGUF: not written — {gguf['refused']}")
    for kind, entry in gguf.items() if "refused" not in gguf else ():
        if not entry["written"]:
            lines.append(
                f"  {kind}: not written here — {entry['reason']} (`{entry['quantize_with']}` from "
                f"{Path(entry['from']).name}; not checked for parity here)"
            )
            continue
        verdict = "within" if entry["within_tolerance"] else "OUTSIDE"
        lines.append(
            f"  {Path(entry['path']).name}: {entry['bytes'] / 2**20:.0f} MiB, {entry['identical']} of "
            f"{entry['prompts']} answers identical to the merged model ({verdict} {entry['tolerance']:.0%}), "
            f"{entry['runaway']} runaway, end-of-turn {entry['end_of_turn']}"
            f"{'' if entry['tokens_identical'] else ', tokenizes DIFFERENTLY'}"
        )
    ollama = record.get("ollama")
    if ollama and "refused" in ollama:
        lines.append(f"  Ollama: no Modelfile — {ollama['refused']}")
    elif ollama:
        lines.append(
            f"  Ollama: {ollama['path']} (stop {', '.join(ollama['stop'])}; system prompt "
            f"{'from the data' if ollama['system'] else 'the template default'}). Run it with:"
        )
        lines += [f"    {command}" for command in ollama["commands"]]
    return "\n".join(lines)


def normalized_formats(formats: Iterable[str]) -> list[str]:
    """The requested formats with what they need: "ollama" -> "gguf" -> "merged"; ConfigError for others."""
    wanted = set(formats)
    unknown = sorted(wanted - set(EXPORT_FORMATS))
    if unknown:
        raise ConfigError(
            f"`export_formats` has {unknown[0]!r}; use any of {', '.join(EXPORT_FORMATS)}, "
            'e.g. export_formats = ["gguf", "ollama"].'
        )
    if "ollama" in wanted:
        wanted.add("gguf")
    if wanted:
        wanted.add("merged")
    return [f for f in EXPORT_FORMATS if f in wanted]


def reference_answers(ws: Workspace, run: dict[str, Any], model_dir: Path, n_prompts: int) -> dict[str, Any]:
    """The saved model's greedy answers on the parity prompts (for a fully fine-tuned run, which has no merge)."""
    prompts, max_new = parity_prompts(ws, run["base_model"], n_prompts)
    with quiet_library_notices():
        model = load_saved_model(model_dir, pick_device())
        answers, _ = generate_with_stops(model, load_tokenizer(str(model_dir)), prompts, max_new)
        del model
        release_memory()
    return {"answers": answers, "conversations": prompts, "max_new_tokens": max_new}


def export_gguf(
    model_dir: Path, path: Path, gguf_type: str, merged: dict[str, Any], f16: Path | None = None
) -> dict[str, Any]:
    """Write one GGUF file (Q4_K_M: quantized from the `f16` file) and read it back from the file alone through
    transformers' GGUF loader: its greedy answers against the merged model's, its runaway answers, its chat
    template and end of turn, and whether it tokenizes the conversations (answers included) as the merged
    model's tokenizer does."""
    from transformers import AutoTokenizer

    from nbkit.export.gguf import read_back, write_gguf, write_q4_k_m
    from nbkit.model.chat_templates import end_of_turn, end_of_turn_token_id

    print(
        f"Writing {path.name} with llama.cpp's {'quantizer' if gguf_type == QUANTIZED else 'converter'} (its log: "
        f"{path.with_suffix('.log').name})...",
        flush=True,
    )
    written = write_q4_k_m(f16, path) if gguf_type == QUANTIZED else write_gguf(model_dir, path, gguf_type)
    print(
        f"Wrote {path.name} ({written['bytes'] / 2**20:.0f} MiB in {written['seconds']:.0f} s); reading it back to "
        "check parity...",
        flush=True,
    )
    with quiet_library_notices():
        tokenizer, model = read_back(path)
        answers, stops = generate_with_stops(model, tokenizer, merged["conversations"], merged["max_new_tokens"])
        del model
        release_memory()
    reference = AutoTokenizer.from_pretrained(model_dir)  # what training and the merged model's answers used
    texts = [
        reference.apply_chat_template([*c, {"role": "assistant", "content": a}], tokenize=False)
        for c, a in zip(merged["conversations"], merged["answers"])
    ]
    same_tokens = all(
        reference.encode(t, add_special_tokens=False) == tokenizer.encode(t, add_special_tokens=False) for t in texts
    )
    mismatches = [
        {"prompt": c[-1]["content"], "merged": m, "gguf": g}
        for c, m, g in zip(merged["conversations"], merged["answers"], answers)
        if m != g
    ]
    n = len(answers)
    agreement = (n - len(mismatches)) / max(n, 1)
    tolerance = GGUF_TOLERANCE[gguf_type]
    turn_end = end_of_turn(tokenizer) if tokenizer.chat_template else None
    result = {
        **written,
        "written": True,
        "prompts": n,
        "identical": n - len(mismatches),
        "agreement": round(agreement, 3),
        "tolerance": tolerance,
        "within_tolerance": agreement >= tolerance,
        "compared_with": "merged model",
        "read_with": "transformers (GGUF loader)",
        "chat_template_in_file": tokenizer.chat_template is not None,
        "end_of_turn": turn_end,
        "end_of_turn_in_vocab": bool(turn_end) and end_of_turn_token_id(tokenizer) is not None,
        "tokens_identical": same_tokens,
        "runaway": runaway_count(stops),
        "mismatches": mismatches,
    }
    verdict = "within" if result["within_tolerance"] else "OUTSIDE"
    print(
        f"Parity {gguf_type}: {result['identical']} of {n} greedy answers identical to the merged model ({verdict} "
        f"the tolerance of {tolerance:.0%}); {result['runaway']} ran to the length limit without {turn_end}.",
        flush=True,
    )
    expected = end_of_turn(reference)
    if (
        not result["within_tolerance"]
        or not result["chat_template_in_file"]
        or not same_tokens
        or turn_end != expected
        or (expected and not result["end_of_turn_in_vocab"])
    ):
        warnings.warn(
            f"{path} answers differently from the merged model on {len(mismatches)} of {n} prompts "
            f"(tolerance {tolerance:.0%}), or tokenizes differently (identical: {same_tokens}), or lacks "
            f"its chat template or end of turn {expected!r} (found {turn_end!r}): do not ship it before "
            "checking parity.json.",
            stacklevel=2,
        )
    return result


# -- Hub upload ---------------------------------------------------------------------------------


def push_to_hub(path: str | Path, repo_id: str, *, private: bool = True, token: str | None = None) -> str:
    """Upload a merged model (or an adapter) folder to the Hugging Face Hub; return the repo URL.

    Fails fast with NbkitError when the Hub cannot be reached (HF_HUB_OFFLINE set, or no
    connection) instead of hanging in retries.
    """
    path = Path(path)
    if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise NbkitError(
            f"{path} holds no model (no config.json or adapter_config.json) — pass the merged/ "
            "folder that merge_adapter wrote, or a run's adapter/ folder."
        )
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"`repo_id` must look like 'user-or-org/model-name', got {repo_id!r}.")
    if hub_offline(("HF_HUB_OFFLINE",)):
        raise NbkitError(
            "cannot push to the Hub: HF_HUB_OFFLINE is set (offline mode) — unset it on a machine "
            "with internet and log in with `hf auth login`; the model stays in "
            f"{path}."
        )
    endpoint = hub_endpoint()
    problem = hub_unreachable(endpoint)
    if problem:
        raise NbkitError(
            f"cannot push to the Hub: {endpoint} is unreachable ({problem}) — check the network "
            f"connection and try again; the model stays in {path}."
        )
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(path), repo_id=repo_id, commit_message="Upload model trained with nbkit")
    except Exception as err:  # authentication, permissions, HTTP errors: one clear line instead of a traceback
        raise NbkitError(
            f"pushing {path} to {repo_id} failed ({type(err).__name__}: {err}) — log in with "
            "`hf auth login` (a token with write access) and check the repo name."
        ) from err
    return str(url)

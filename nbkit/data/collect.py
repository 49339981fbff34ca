"""Stage 01: read every source, keep each valid row, reject the rest with a reason.

Nothing is lost: every record read lands in `data/clean.jsonl` or `data/rejected.jsonl`
(with source, position, category, message and the raw text), and the report always
satisfies read == kept + rejected. Blank lines are skipped and counted, not rejected.

What a source can be (CollectConfig.sources):
    .jsonl .json .csv .tsv .parquet .txt .xlsx   a path, a glob, or a folder (searched recursively);
                                           read by nbkit.core.readers (encodings, delimiters, the .txt format)
    a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`   every split is read
    "hf:org/name" or "hf:org/name:split"   a Hub dataset; both read by nbkit.data.hub
    in memory                              a list of dicts, a pandas DataFrame, a datasets.Dataset
                                           or DatasetDict
`WORKSPACE/data/manual.jsonl` (examples added or fixed by hand, see `add_manual_example`) is
always read too when it exists.

Positions: `line` (from 1) for .jsonl and .txt, `index` (from 0) for JSON arrays and lists,
`row` (from 1: the first row under the header) for CSV/TSV/Excel/Parquet, DataFrames and
datasets. A DatasetDict's rows name their split in the source: "path/to/folder:train".

Common column pairs (question/answer, input/output, ...) need no mapping
(`schemas.recognise_layout`); the report names the layout applied to each file.

A file that cannot be read at all (not a table, not decodable) is listed in the report's
`unreadable` with the reason and the fix; the other sources are still collected. When every
record of a file fails for one reason, the report says so once for the file (`problem`,
with the columns it saw and the `columns` mapping to paste).
"""

from __future__ import annotations

import glob
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.core import schemas
from nbkit.core.config import Config, field
from nbkit.core.errors import DataError
from nbkit.core.files import file_records, write_json, write_jsonl
from nbkit.core.messages import DUPLICATE, INVALID_JSON, MISSING_COLUMN, MISSING_MESSAGES, RecordError
from nbkit.core.readers import DELIMITERS, READERS, SUFFIXES, Item, Reading, clean_cells, raw_text, read_file
from nbkit.core.workspace import Workspace
from nbkit.data.hub import (
    HUB_PREFIX,
    HubSource,
    SavedDataset,
    dataset_items,
    hub_source,
    is_hf_dataset,
    is_saved_dataset,
    read_hub,
    read_saved_dataset,
)

SAMPLE_DATA = Path(__file__).parent.parent / "sample_data" / "support_triage.jsonl"


@dataclass
class CollectConfig(Config):
    """Where to read examples from, and how to map other layouts onto the recognised ones.

    Sources accept paths, globs, folders (also `save_to_disk` folders), "hf:org/name[:split]"
    Hub ids, in-memory lists of dicts, pandas DataFrames and datasets.Dataset objects; an
    empty list means the bundled sample data (support tickets -> JSON triage record).
    """

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    sources: list = field(
        [],
        "Paths, globs or folders of .jsonl/.json/.csv/.tsv/.parquet/.txt/.xlsx files, "
        'save_to_disk folders or "hf:org/name[:split]"; empty = bundled sample data.',
    )
    columns: dict = field(
        {},
        "Map your column names to the recognised ones, e.g. "
        '{"question": "prompt", "answer": "completion"} or {"dialog": "messages"}.',
    )
    roles: dict = field(
        {}, 'Map other role names to system/user/assistant, e.g. {"human": "user", "bot": "assistant"}.'
    )
    sheet: str = field("", "Sheet of .xlsx files to read (its name); empty = the first sheet.")

    def validate(self) -> None:
        self.require(bool(self.workspace), "workspace", "must not be empty")
        self.require(isinstance(self.sheet, str), "sheet", f"must be a sheet name, got {self.sheet!r}")
        self.require(
            isinstance(self.sources, (list, tuple)),
            "sources",
            f"must be a list of paths or globs, got {type(self.sources).__name__}",
            'write e.g. sources = ["data/*.jsonl"]',
        )
        for name, problem in schemas.check_mapping(self.columns, self.roles):
            self.require(False, name, problem)


def collect(config: CollectConfig) -> dict[str, Any]:
    """Read, validate and de-duplicate all sources; write clean/rejected/report; return the report."""
    ws = Workspace(config.workspace)
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    per_source: dict[str, Counter] = {}
    layouts: dict[str, Counter] = {}
    firsts: dict[str, Item] = {}  # each source's first record, to name its columns in a file-level problem
    reading = Reading(Counter(), dict(config.roles), config.sheet)
    sources = list(config.sources or [SAMPLE_DATA])
    if ws.manual.is_file():
        sources.append(ws.manual)  # hand-written and fixed examples (read once even if listed)

    for item in iter_items(sources, reading):
        counts = per_source.setdefault(item.source, Counter())
        counts["read"] += 1
        firsts.setdefault(item.source, item)
        try:
            if item.error:
                raise item.error
            record, layout = schemas.map_record(item.record, config.columns, config.roles, tabular=item.where == "row")
            row = canonical_row(item, record, layout)
            if layout:
                layouts.setdefault(item.source, Counter())[layout] += 1
            key = conversation_key(row["messages"], row.get("tools"))
            if key in seen:
                raise RecordError(DUPLICATE, f"same conversation as {seen[key]}")
            seen[key] = f"{item.source} {item.where} {item.position}"
        except RecordError as err:
            counts["rejected"] += 1
            rejected.append(
                {
                    "source": item.source,
                    item.where: item.position,
                    "category": err.category,
                    "message": str(err),
                    "raw": item.raw,
                }
            )
            continue
        counts["kept"] += 1
        kept.append(row)

    if not per_source:
        if reading.unreadable:
            raise DataError(
                "no file could be read: "
                + "; ".join(f"{u['source']}: {u['reason']} — {u['fix']}" for u in reading.unreadable)
            )
        raise DataError(f"no records found in sources {config.sources!r} — check the paths and globs.")

    write_jsonl(ws.clean, kept)
    write_jsonl(ws.rejected, rejected)
    rejected_by_source: dict[str, list[dict[str, Any]]] = {}
    for entry in rejected:
        rejected_by_source.setdefault(entry["source"], []).append(entry)
    by_category = Counter(r["category"] for r in rejected)
    report = {
        "read": len(kept) + len(rejected),
        "kept": len(kept),
        "rejected": len(rejected),
        "duplicates": by_category.get(DUPLICATE, 0),
        "blank_lines": sum(reading.blank.values()),
        "by_category": dict(sorted(by_category.items())),
        "sources": {
            src: source_report(c, layouts.get(src), rejected_by_source.get(src, []), firsts[src])
            for src, c in per_source.items()
        },
        "unreadable": reading.unreadable,
        "files": file_records(ws.clean, ws.rejected),  # written first: 02 checks them against this
    }
    for entry in reading.unreadable:
        counts = report["sources"].setdefault(entry["source"], {"read": 0, "kept": 0, "rejected": 0})
        counts.update(error=entry["reason"], fix=entry["fix"])
    write_json(ws.collect_report, report)
    return report


def describe_report(report: dict[str, Any]) -> str:
    """The collect report as lines a person reads: totals, then one line per file (what was read, the
    layout applied, a file that could not be read or whose every record failed, and the fix)."""
    categories = ", ".join(f"{k} {v}" for k, v in report["by_category"].items())
    lines = [
        f"Read {report['read']} records from {len(report['sources'])} source(s): kept {report['kept']}, "
        f"rejected {report['rejected']}" + (f" ({categories})" if categories else "") + "."
    ]
    for source, entry in report["sources"].items():
        if "error" in entry:
            done = f" after {entry['read']} records" if entry["read"] else ""
            lines.append(f"  {source}: NOT READ{done} — {entry['error']}. Fix: {entry['fix']}.")
            continue
        line = f"  {source}: {entry['read']} read, {entry['kept']} kept"
        line += f", {entry['rejected']} rejected" if entry["rejected"] else ""
        line += f" — {entry['layout']}" if "layout" in entry else ""
        problem = entry.get("problem")
        if problem:
            seen = f" (columns seen: {', '.join(problem['columns'])})" if problem["columns"] else ""
            line += f" — every record: {problem['category']}: {problem['message']}{seen}. Fix: {problem['fix']}"
        lines.append(line)
    if report["rejected"]:
        lines.append("Rejected rows, with file, position and reason: data/rejected.jsonl.")
    return "\n".join(lines)


def canonical_row(item: Item, record: Any = None, layout: str | None = None) -> dict[str, Any]:
    """{"messages", "meta"} (+ "tools" for OpenAI tool rows); meta records the layout recognised."""
    record = item.record if record is None else record
    messages = schemas.to_messages(record, tabular=item.where == "row")
    tools = schemas.record_tools(record)
    meta: dict[str, Any] = {"source": item.source, item.where: item.position}
    if layout:
        meta["layout"] = layout
    for key, value in side_fields(record).items():
        meta.setdefault(key, value)
    return {"messages": messages, "meta": meta, **({"tools": tools} if tools else {})}


def source_report(
    counts: Counter, layouts: Counter | None, rejected: list[dict[str, Any]], first: Item
) -> dict[str, Any]:
    """One source's counts, the layout applied to it, and one word for the file when every record of it
    (`rejected`: this source's rejections) failed for the same reason (the rows are still in rejected.jsonl)."""
    out: dict[str, Any] = {k: counts[k] for k in ("read", "kept", "rejected")}
    if layouts:
        out["layout"] = layouts.most_common(1)[0][0]
    if counts["read"] and counts["rejected"] == counts["read"]:
        categories = {r["category"] for r in rejected}
        if len(categories) == 1 and DUPLICATE not in categories:
            out["problem"] = file_problem(rejected[0], first)
    return out


def file_problem(rejection: dict[str, Any], first: Item) -> dict[str, Any]:
    """What one failure shared by every record of a file means for the file, and the fix to paste."""
    category = rejection["category"]
    columns = [str(k) for k in first.record] if isinstance(first.record, dict) else []
    problem: dict[str, Any] = {"category": category, "message": rejection["message"], "columns": columns}
    if (
        category in (MISSING_COLUMN, MISSING_MESSAGES)
        and len(columns) == 1
        and any(d in columns[0] for d in DELIMITERS)
    ):
        problem["fix"] = (
            f"the header {columns[0]!r} reads as one column: save the file with one delimiter "
            "(comma, semicolon or tab) and without quotes around the header"
        )
    elif category in (MISSING_COLUMN, MISSING_MESSAGES) and len(columns) >= 2:
        problem["fix"] = (
            "columns = "
            + json.dumps({columns[0]: "prompt", columns[1]: "completion"}, ensure_ascii=False)
            + "  # your question column → prompt, your answer column → completion"
        )
    elif category == schemas.NOT_UTF8:
        problem["fix"] = "re-save the file as UTF-8 (in Excel: Save As > CSV UTF-8)"
    elif category == INVALID_JSON:
        problem["fix"] = "write one JSON object per line (.jsonl), or name a single JSON document .json"
    else:
        problem["fix"] = "see the message; every record of this file has the same problem"
    return problem


def side_fields(record: dict[str, Any]) -> dict[str, Any]:
    """Scalar fields that are not part of the conversation (label, id, ...): they travel in meta,
    so split can stratify on a label."""
    skip = set(schemas.SCHEMA_COLUMNS) | {"messages", "conversations", "meta"}
    if schemas.uses_system_column(record):
        skip.add("system")
    return {k: v for k, v in record.items() if k not in skip and isinstance(v, (str, int, float, bool))}


def conversation_key(messages: list[dict[str, Any]], tools: list | None = None) -> str:
    return json.dumps([messages, tools] if tools else messages, sort_keys=True, ensure_ascii=False)


# -- examples written by hand ---------------------------------------------------------------


# -- sources -> items (files: nbkit.core.readers; datasets and the Hub: nbkit.data.hub) --------------


def expand_sources(sources: Iterable[Any]) -> Iterator[Any]:
    """Paths, globs and folders -> files and saved datasets (each once); "hf:..." -> HubSource."""
    seen: set[Path] = set()
    for source in sources:
        if isinstance(source, str) and source.startswith(HUB_PREFIX):
            yield hub_source(source)
        elif isinstance(source, (str, Path)):
            text = str(source)
            matches = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]
            if not matches:
                raise DataError(f"source {text!r} matches no file — check the glob or the working directory.")
            for match in matches:
                path = Path(match)
                if not path.exists():
                    raise DataError(f"source {match!r} does not exist.")
                for found in _files_in(path):
                    key = (found.path if isinstance(found, SavedDataset) else found).resolve()
                    if key not in seen:  # a file matched by two globs is read once
                        seen.add(key)
                        yield found
        else:
            yield source


def _files_in(path: Path) -> list[Path | SavedDataset]:
    if not path.is_dir():
        return [path]
    if is_saved_dataset(path):
        return [SavedDataset(path)]
    # A saved dataset inside the folder is read as a dataset; its own state.json and
    # dataset_info.json are not data.
    saved = [d for d in sorted(path.rglob("*")) if d.is_dir() and is_saved_dataset(d)]
    saved = [d for d in saved if not any(other in d.parents for other in saved)]
    files: list[Path | SavedDataset] = [
        p
        for p in path.rglob("*")
        if p.suffix.lower() in SUFFIXES and p.is_file() and not any(d in p.parents for d in saved)
    ]
    files += [SavedDataset(d) for d in saved]
    return sorted(files, key=lambda f: str(f.path if isinstance(f, SavedDataset) else f))


def iter_items(sources: Iterable[Any], reading: Reading | None = None) -> Iterator[Item]:
    reading = reading or Reading(Counter(), {})
    for source in expand_sources(sources):
        if isinstance(source, Path):
            reader = READERS.get(source.suffix.lower())
            if reader is None:
                raise DataError(
                    f"{source}: unsupported file type {source.suffix!r} — use one of "
                    f'{", ".join(SUFFIXES)}, a folder saved with save_to_disk, or "hf:org/name".'
                )
            yield from read_file(reader, source, reading)
        elif isinstance(source, SavedDataset):
            yield from read_saved_dataset(source.path)
        elif isinstance(source, HubSource):
            yield from read_hub(source)
        elif isinstance(source, list):
            for i, record in enumerate(source):
                yield Item("<list>", "index", i, raw_text(record), record)
        elif is_hf_dataset(source):
            yield from dataset_items(source, "<dataset>")
        elif hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas DataFrame
            for i, record in enumerate(source.to_dict(orient="records")):
                yield Item("<dataframe>", "row", i + 1, raw_text(record), clean_cells(record))
        else:
            raise DataError(
                f"cannot read a source of type {type(source).__name__} — pass a path, a glob, a folder, "
                '"hf:org/name", a list of dicts, a pandas DataFrame or a datasets.Dataset.'
            )

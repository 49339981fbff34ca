"""Stage 01: read every source, keep each valid row, reject the rest with a reason.

Nothing is lost: every record read lands in `data/clean.jsonl` or `data/rejected.jsonl`
(with source, position, category, message and the raw text), and the report always
satisfies read == kept + rejected. Blank lines are skipped and counted, not rejected.

What a source can be (CollectConfig.sources):
    .jsonl .json .csv .tsv .parquet .txt .xlsx   a path, a glob, or a folder (searched recursively)
    a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`   every split is read
    "hf:org/name" or "hf:org/name:split"   a Hub dataset (datasets.load_dataset; every split
                                           without `:split`). Needs the network or a cached copy.
    in memory                              a list of dicts, a pandas DataFrame, a datasets.Dataset
                                           or DatasetDict
`WORKSPACE/data/manual.jsonl` (examples added or fixed by hand, see `add_manual_example`) is
always read too when it exists.

Positions: `line` (from 1) for .jsonl and .txt, `index` (from 0) for JSON arrays and lists,
`row` (from 1: the first row under the header) for CSV/TSV/Excel/Parquet, DataFrames and
datasets. A DatasetDict's rows name their split in the source: "path/to/folder:train".

Files as spreadsheets export them: the delimiter of a CSV is read from its header line
(comma, semicolon, tab or |), UTF-8 and UTF-16/32 with a byte-order mark are decoded (Excel's
"Unicode text" is UTF-16 and tab-delimited, even when named .txt), Windows line endings
become "\n", and .xlsx sheets are read with pandas + openpyxl (the first sheet unless
`sheet` names one). Common column pairs (question/answer, input/output, ...) need no mapping
(`chat_format.recognise_layout`); the report names the layout applied to each file.

A file that cannot be read at all (not a table, not decodable) is listed in the report's
`unreadable` with the reason and the fix; the other sources are still collected. When every
record of a file fails for one reason, the report says so once for the file (`problem`,
with the columns it saw and the `columns` mapping to paste).

Plain text (.txt): one example per block of non-blank lines; blank lines separate examples,
so a message cannot contain a blank line (use .jsonl for multi-paragraph answers):

    ### System
    You answer in one sentence.
    ### User
    How do I reset my password?
    ### Assistant
    Use "Forgot password" on the sign-in page.

`### System` is optional; `### User`/`### Assistant` may repeat for several turns. A block
that does not start with a header is rejected as `missing_messages` at its first line.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import urlparse

from nbkit import chat_format
from nbkit.chat_format import RecordError
from nbkit.config import Config, field
from nbkit.errors import DataError
from nbkit.workspace import Workspace, describe_provenance, iter_lines, write_json, write_jsonl

SAMPLE_DATA = Path(__file__).parent / "sample_data" / "support_triage.jsonl"
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".xlsx", ".xlsm")
DELIMITERS = (",", ";", "\t", "|")
HUB_PREFIX = "hf:"


@dataclass
class CollectConfig(Config):
    """Where to read examples from, and how to map other layouts onto the recognised ones.

    Sources accept paths, globs, folders (also `save_to_disk` folders), "hf:org/name[:split]"
    Hub ids, in-memory lists of dicts, pandas DataFrames and datasets.Dataset objects; an
    empty list means the bundled sample data (support tickets -> JSON triage record).
    """

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    sources: list = field([], "Paths, globs or folders of .jsonl/.json/.csv/.tsv/.parquet/.txt/.xlsx files, "
                              "save_to_disk folders or \"hf:org/name[:split]\"; empty = bundled sample data.")
    columns: dict = field({}, "Map your column names to the recognised ones, e.g. "
                              '{"question": "prompt", "answer": "completion"} or {"dialog": "messages"}.')
    roles: dict = field({}, "Map other role names to system/user/assistant, e.g. "
                            '{"human": "user", "bot": "assistant"}.')
    sheet: str = field("", "Sheet of .xlsx files to read (its name); empty = the first sheet.")

    def validate(self) -> None:
        self.require(bool(self.workspace), "workspace", "must not be empty")
        self.require(isinstance(self.sheet, str), "sheet", f"must be a sheet name, got {self.sheet!r}")
        self.require(isinstance(self.sources, (list, tuple)), "sources",
                     f"must be a list of paths or globs, got {type(self.sources).__name__}",
                     'write e.g. sources = ["data/*.jsonl"]')
        for name, problem in chat_format.check_mapping(self.columns, self.roles):
            self.require(False, name, problem)


@dataclass
class Item:
    """One record read from a source, with where it came from."""

    source: str
    where: str  # "line" | "index" | "row"
    position: int
    raw: str
    record: Any = None
    error: RecordError | None = None


@dataclass(frozen=True)
class SavedDataset:
    """A folder written by `save_to_disk` (a Dataset, or a DatasetDict with one folder per split)."""

    path: Path


@dataclass(frozen=True)
class HubSource:
    name: str
    split: str | None = None

    @property
    def label(self) -> str:
        return f"{HUB_PREFIX}{self.name}" + (f":{self.split}" if self.split else "")


@dataclass
class Reading:
    """What readers share: blank-line counts per source, role names that count as .txt headers, the
    .xlsx sheet to read, and the files that could not be read at all (source, reason, fix)."""

    blank: Counter
    roles: Mapping[str, str]
    sheet: str = ""
    unreadable: list = dc_field(default_factory=list)


class UnreadableFile(DataError):
    """A whole file cannot be read; collect reports it and goes on with the other sources."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason} — {fix}")
        self.reason, self.fix = reason, fix


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
    if manual_path(ws.root).is_file():
        sources.append(manual_path(ws.root))  # hand-written and fixed examples (read once even if listed)

    for item in iter_items(sources, reading):
        counts = per_source.setdefault(item.source, Counter())
        counts["read"] += 1
        firsts.setdefault(item.source, item)
        try:
            if item.error:
                raise item.error
            record, layout = chat_format.map_record(item.record, config.columns, config.roles,
                                                    tabular=item.where == "row")
            row = canonical_row(item, record, layout)
            if layout:
                layouts.setdefault(item.source, Counter())[layout] += 1
            key = conversation_key(row["messages"], row.get("tools"))
            if key in seen:
                raise RecordError(chat_format.DUPLICATE, f"same conversation as {seen[key]}")
            seen[key] = f"{item.source} {item.where} {item.position}"
        except RecordError as err:
            counts["rejected"] += 1
            rejected.append({"source": item.source, item.where: item.position, "category": err.category,
                             "message": str(err), "raw": item.raw})
            continue
        counts["kept"] += 1
        kept.append(row)

    if not per_source:
        if reading.unreadable:
            raise DataError("no file could be read: " + "; ".join(
                f"{u['source']}: {u['reason']} — {u['fix']}" for u in reading.unreadable))
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
        "duplicates": by_category.get(chat_format.DUPLICATE, 0),
        "blank_lines": sum(reading.blank.values()),
        "by_category": dict(sorted(by_category.items())),
        "sources": {src: source_report(c, layouts.get(src), rejected_by_source.get(src, []), firsts[src])
                    for src, c in per_source.items()},
        "unreadable": reading.unreadable,
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
    lines = [f"Read {report['read']} records from {len(report['sources'])} source(s): kept {report['kept']}, "
             f"rejected {report['rejected']}" + (f" ({categories})" if categories else "") + "."]
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
            line += (f" — every record: {problem['category']}: {problem['message']}{seen}. "
                     f"Fix: {problem['fix']}")
        lines.append(line)
    if report["rejected"]:
        lines.append("Rejected rows, with file, position and reason: data/rejected.jsonl.")
    return "\n".join(lines)


def canonical_row(item: Item, record: Any = None, layout: str | None = None) -> dict[str, Any]:
    """{"messages", "meta"} (+ "tools" for OpenAI tool rows); meta records the layout recognised."""
    record = item.record if record is None else record
    messages = chat_format.to_messages(record, tabular=item.where == "row")
    tools = chat_format.record_tools(record)
    meta: dict[str, Any] = {"source": item.source, item.where: item.position}
    if layout:
        meta["layout"] = layout
    for key, value in side_fields(record).items():
        meta.setdefault(key, value)
    return {"messages": messages, "meta": meta, **({"tools": tools} if tools else {})}


def source_report(counts: Counter, layouts: Counter | None, rejected: list[dict[str, Any]],
                  first: Item) -> dict[str, Any]:
    """One source's counts, the layout applied to it, and one word for the file when every record of it
    (`rejected`: this source's rejections) failed for the same reason (the rows are still in rejected.jsonl)."""
    out: dict[str, Any] = {k: counts[k] for k in ("read", "kept", "rejected")}
    if layouts:
        out["layout"] = layouts.most_common(1)[0][0]
    if counts["read"] and counts["rejected"] == counts["read"]:
        categories = {r["category"] for r in rejected}
        if len(categories) == 1 and chat_format.DUPLICATE not in categories:
            out["problem"] = file_problem(rejected[0], first)
    return out


def file_problem(rejection: dict[str, Any], first: Item) -> dict[str, Any]:
    """What one failure shared by every record of a file means for the file, and the fix to paste."""
    category = rejection["category"]
    columns = [str(k) for k in first.record] if isinstance(first.record, dict) else []
    problem: dict[str, Any] = {"category": category, "message": rejection["message"], "columns": columns}
    if category in (chat_format.MISSING_COLUMN, chat_format.MISSING_MESSAGES) and len(columns) == 1 and any(
            d in columns[0] for d in DELIMITERS):
        problem["fix"] = (f"the header {columns[0]!r} reads as one column: save the file with one delimiter "
                          "(comma, semicolon or tab) and without quotes around the header")
    elif category in (chat_format.MISSING_COLUMN, chat_format.MISSING_MESSAGES) and len(columns) >= 2:
        problem["fix"] = ("columns = " + json.dumps({columns[0]: "prompt", columns[1]: "completion"}, ensure_ascii=False)
                          + "  # your question column → prompt, your answer column → completion")
    elif category == chat_format.NOT_UTF8:
        problem["fix"] = "re-save the file as UTF-8 (in Excel: Save As > CSV UTF-8)"
    elif category == chat_format.INVALID_JSON:
        problem["fix"] = "write one JSON object per line (.jsonl), or name a single JSON document .json"
    else:
        problem["fix"] = "see the message; every record of this file has the same problem"
    return problem


def side_fields(record: dict[str, Any]) -> dict[str, Any]:
    """Scalar fields that are not part of the conversation (label, id, ...): they travel in meta,
    so split can stratify on a label."""
    skip = set(chat_format.SCHEMA_COLUMNS) | {"messages", "conversations", "meta"}
    if chat_format.uses_system_column(record):
        skip.add("system")
    return {k: v for k, v in record.items() if k not in skip and isinstance(v, (str, int, float, bool))}


def conversation_key(messages: list[dict[str, Any]], tools: list | None = None) -> str:
    return json.dumps([messages, tools] if tools else messages, sort_keys=True, ensure_ascii=False)


# -- examples written by hand ---------------------------------------------------------------

def manual_path(workspace: str | Path) -> Path:
    """WORKSPACE/data/manual.jsonl: examples added in the editor or fixed from rejected rows."""
    return Workspace(workspace).manual


def add_manual_example(workspace: str | Path, record: dict[str, Any], *, columns: Mapping[str, str] | None = None,
                       roles: Mapping[str, str] | None = None, fixed_from: str | None = None) -> int:
    """Validate one example and append it to WORKSPACE/data/manual.jsonl; return its line number.

    `record` is any recognised layout ({"messages": [...]}, prompt/completion, ...); it is
    stored as {"messages": [...]} plus its scalar side fields (label, ...), and `fixed_from`
    when it repairs a rejected row. Raises RecordError and writes nothing when collect would
    reject it — including when the same conversation is already in manual.jsonl or was kept.
    """
    record = chat_format.apply_mapping(record, columns, roles)
    messages = chat_format.to_messages(record)
    path = manual_path(workspace)
    existing = _find_conversation(conversation_key(messages), path, Workspace(workspace).clean)
    if existing:
        raise RecordError(chat_format.DUPLICATE, f"same conversation as {existing}")
    row = {"messages": messages, **side_fields(record)}
    if fixed_from:
        row["fixed_from"] = fixed_from
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.read_bytes() if path.exists() else b""
    prefix = "\n" if data and not data.endswith(b"\n") else ""  # a hand-edited file may lack the last newline
    with open(path, "a", encoding="utf-8", newline="\n") as fh:
        fh.write(prefix + json.dumps(row, ensure_ascii=False) + "\n")
    return data.count(b"\n") + len(prefix) + 1


def _find_conversation(key: str, manual: Path, clean: Path) -> str | None:
    """Where this conversation already is: a line of manual.jsonl, or a kept row's provenance."""
    for path in (manual, clean):
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, start=1):
                try:
                    row = json.loads(line)
                    if conversation_key(chat_format.validate_messages(row["messages"])) != key:
                        continue
                except (ValueError, TypeError, KeyError, RecordError):
                    continue  # a broken line is collect's business, not a match
                if path == manual:
                    return f"{path} line {number}"
                return f"a kept row ({describe_provenance({'source': path, **row.get('meta', {})})})"
    return None


# -- reading ----------------------------------------------------------------------------

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


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file())


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
        p for p in path.rglob("*")
        if p.suffix.lower() in SUFFIXES and p.is_file() and not any(d in p.parents for d in saved)]
    files += [SavedDataset(d) for d in saved]
    return sorted(files, key=lambda f: str(f.path if isinstance(f, SavedDataset) else f))


def hub_source(text: str) -> HubSource:
    name, _, split = text[len(HUB_PREFIX):].strip().partition(":")  # Hub ids contain no colon
    if not name or name.startswith("/") or name.endswith("/") or " " in name:
        raise DataError(f"source {text!r}: write a Hub dataset as \"hf:org/name\" or \"hf:org/name:split\".")
    return HubSource(name, split.strip() or None)


def iter_items(sources: Iterable[Any], reading: Reading | None = None) -> Iterator[Item]:
    reading = reading or Reading(Counter(), {})
    for source in expand_sources(sources):
        if isinstance(source, Path):
            reader = READERS.get(source.suffix.lower())
            if reader is None:
                raise DataError(f"{source}: unsupported file type {source.suffix!r} — use one of "
                                f"{', '.join(SUFFIXES)}, a folder saved with save_to_disk, or \"hf:org/name\".")
            yield from read_file(reader, source, reading)
        elif isinstance(source, SavedDataset):
            yield from read_saved_dataset(source.path)
        elif isinstance(source, HubSource):
            yield from read_hub(source)
        elif isinstance(source, list):
            for i, record in enumerate(source):
                yield Item("<list>", "index", i, _raw(record), record)
        elif is_hf_dataset(source):
            yield from dataset_items(source, "<dataset>")
        elif hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas DataFrame
            for i, record in enumerate(source.to_dict(orient="records")):
                yield Item("<dataframe>", "row", i + 1, _raw(record), _clean_cells(record))
        else:
            raise DataError(f"cannot read a source of type {type(source).__name__} — pass a path, a glob, a folder, "
                            "\"hf:org/name\", a list of dicts, a pandas DataFrame or a datasets.Dataset.")


def read_file(reader, path: Path, reading: Reading) -> Iterator[Item]:
    """A reader's items; a file it cannot read (on) goes to `reading.unreadable`, not up the stack.

    Readers decode and parse the whole file or its header before their first item, so a reported file has
    usually contributed no records; a table that breaks part-way (a cell over csv's field limit) keeps the
    rows before the break, and its report entry keeps their counts."""
    try:
        yield from reader(path, reading)
    except UnreadableFile as err:
        reading.unreadable.append({"source": str(path), "reason": err.reason, "fix": err.fix})
    except Exception as err:  # noqa: BLE001 — a corrupt .xlsx/.parquet raises the library's own errors
        reading.unreadable.append({"source": str(path), "reason": f"cannot be read ({type(err).__name__}: {err})",
                                   "fix": f"open it in the program that wrote it and save it again as {path.suffix}, "
                                          "or export it as CSV UTF-8"})


BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def wide_encoding(head: bytes) -> str | None:
    """UTF-16/32 from a byte-order mark (Excel's "Unicode text", Notepad's "Unicode"), or from the zero
    bytes every ASCII character has in them when the mark is missing; None for UTF-8 and the like."""
    for bom, name in BOMS:
        if head.startswith(bom):
            return None if name == "utf-8-sig" else name
    if len(head) >= 4 and head[1::2].count(0) > 0.4 * len(head[1::2]) and not head[0::2].count(0):
        return "utf-16-le"
    if len(head) >= 4 and head[0::2].count(0) > 0.4 * len(head[0::2]) and not head[1::2].count(0):
        return "utf-16-be"
    return None


def file_wide_encoding(path: Path) -> str | None:
    """`wide_encoding` of a file's first 4 KiB."""
    with open(path, "rb") as fh:
        return wide_encoding(fh.read(4096))


def decoded_text(path: Path) -> str:
    """A whole text file as str: UTF-8 (with or without BOM) or UTF-16/32, or UnreadableFile."""
    data = path.read_bytes()
    encoding = wide_encoding(data[:4096]) or "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UnreadableFile(f"not valid {encoding.replace('-sig', '').upper()} at byte {err.start} (line {line})",
                             "re-save the file as UTF-8 (in Excel: Save As > CSV UTF-8)") from None


def read_jsonl(path: Path, reading: Reading) -> Iterator[Item]:
    if file_wide_encoding(path):  # UTF-16/32: decode the whole file, then read it line by line
        for number, text in enumerate(decoded_text(path).splitlines(), start=1):
            yield from _jsonl_item(path, number, text, reading)
        return
    for number, raw in iter_lines(path):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            yield Item(str(path), "line", number, raw.decode("utf-8", "backslashreplace").rstrip("\r\n"),
                       error=RecordError(chat_format.NOT_UTF8, f"not valid UTF-8 at byte {err.start}"))
            continue
        yield from _jsonl_item(path, number, text.rstrip("\r\n"), reading)


def _jsonl_item(path: Path, number: int, text: str, reading: Reading) -> Iterator[Item]:
    if not text.strip():
        reading.blank[str(path)] += 1
        return
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        yield Item(str(path), "line", number, text,
                   error=RecordError(chat_format.INVALID_JSON, f"invalid JSON: {err.msg} at column {err.colno}"))
        return
    yield Item(str(path), "line", number, text, record)


def read_json(path: Path, reading: Reading) -> Iterator[Item]:
    try:
        data = json.loads(decoded_text(path))
    except json.JSONDecodeError as err:
        raise UnreadableFile(f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}",
                             "fix the file, or write one record per line and name it .jsonl") from None
    if isinstance(data, dict) and not ({"messages", "conversations"} & set(data)):
        # {"data": [...]} or {"id1": {...}, "id2": {...}}
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else list(data.values())
    records = data if isinstance(data, list) else [data]
    for i, record in enumerate(records):
        yield Item(str(path), "index", i, _raw(record), record)


def read_table(path: Path, reading: Reading, text: str | None = None) -> Iterator[Item]:
    """CSV/TSV as spreadsheets write them: any of DELIMITERS (read from the header), quoted cells over
    several lines, UTF-8 or UTF-16; a cell's Windows line endings become "\n"."""
    text = decoded_text(path) if text is None else text
    delimiter = sniff_delimiter(text, "\t" if path.suffix.lower() in (".tsv", ".txt") else ",")
    rows = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, restkey=EXTRA_CELLS)
    try:
        for i, record in enumerate(rows, start=1):
            extra = record.pop(EXTRA_CELLS, None)
            error = None if extra is None else RecordError(
                chat_format.CELL_COUNT, f"{len(rows.fieldnames) + len(extra)} cells where the header has "
                                        f"{len(rows.fieldnames)} (a {_delimiter_name(delimiter)} inside a cell that "
                                        "is not in quotes?)")
            yield Item(str(path), "row", i, _raw({**record, **({EXTRA_CELLS: extra} if extra else {})}),
                       _clean_cells(record), error)
    except csv.Error as err:  # a NUL byte or an unclosed quote: the rows before it are kept
        raise UnreadableFile(f"not a readable table after line {rows.line_num} ({err})",
                             "save it again from the spreadsheet as CSV UTF-8") from None


EXTRA_CELLS = "(cells past the header)"  # where a row with more cells than header columns puts the rest


def _delimiter_name(delimiter: str) -> str:
    return {",": "comma", ";": "semicolon", "\t": "tab", "|": "|"}[delimiter]


def sniff_delimiter(text: str, default: str) -> str:
    """The delimiter that splits the header line into the most columns (the default on a tie)."""
    header = text.split("\n", 1)[0]
    counts = {d: len(next(csv.reader([header], delimiter=d), [])) for d in DELIMITERS}
    best = max(counts.values())
    return default if best <= 1 or counts[default] == best else max(counts, key=counts.get)


def read_excel(path: Path, reading: Reading) -> Iterator[Item]:
    """An .xlsx sheet (the first, or `sheet`) through pandas + openpyxl; cells as text, as the sheet shows them."""
    import pandas as pd

    try:
        sheets = pd.ExcelFile(path, engine="openpyxl")
    except ImportError as err:
        raise UnreadableFile(f"reading .xlsx needs openpyxl ({err})", "pip install openpyxl") from None
    if reading.sheet and reading.sheet not in sheets.sheet_names:
        raise UnreadableFile(f"has no sheet {reading.sheet!r} (sheets: {', '.join(sheets.sheet_names)})",
                             "set `sheet` to one of those names, or leave it empty for the first sheet")
    frame = sheets.parse(reading.sheet or 0, dtype=object)
    for i, record in enumerate(frame.to_dict(orient="records"), start=1):
        record = {str(k): _cell_text(v) for k, v in record.items() if not str(k).startswith("Unnamed: ")
                  or not _is_empty(v)}
        yield Item(str(path), "row", i, _raw(record), _clean_cells(record))


def _cell_text(value: Any) -> Any:
    """A number or date cell as the text a person reads in the sheet (42, not 42.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not _is_empty(value):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_parquet(path: Path, reading: Reading) -> Iterator[Item]:
    import pandas as pd

    for i, record in enumerate(pd.read_parquet(path).to_dict(orient="records"), start=1):
        yield Item(str(path), "row", i, _raw(record), _clean_cells(record))


def read_text(path: Path, reading: Reading) -> Iterator[Item]:
    """`.txt`: one example per block of non-blank lines (format in the module docstring); a .txt whose first
    line is tab-separated column names (Excel's "Unicode text") is read as a table."""
    wide = file_wide_encoding(path)
    if wide:
        text = decoded_text(path)
        first = text.lstrip("\n").split("\n", 1)[0]
    else:
        text = None
        with open(path, "rb") as fh:
            first = fh.readline().decode("utf-8-sig", "replace")
    if "\t" in first and not chat_format.TEXT_HEADER.match(first.strip()):  # a header of tab-separated columns
        yield from read_table(path, reading, text)
        return
    if wide:
        raise UnreadableFile(f"is {wide.upper()} text, not a table with tab-separated columns",
                             "save it as UTF-8 text (or export the sheet as CSV UTF-8)")
    block: list[str] = []
    start, bad = 0, ""
    for number, raw in iter_lines(path):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            text = raw.decode("utf-8", "backslashreplace")
            bad = bad or f"not valid UTF-8 in line {number} at byte {err.start}"
        text = text.rstrip("\r\n")
        if text.strip():
            start = start if block else number
            block.append(text)
            continue
        reading.blank[str(path)] += 1
        if block:
            yield _text_item(path, start, block, bad, reading.roles)
            block, bad = [], ""
    if block:
        yield _text_item(path, start, block, bad, reading.roles)


def _text_item(path: Path, start: int, lines: list[str], bad: str, roles: Mapping[str, str]) -> Item:
    raw = "\n".join(lines)
    if bad:
        return Item(str(path), "line", start, raw, error=RecordError(chat_format.NOT_UTF8, bad))
    try:
        return Item(str(path), "line", start, raw, chat_format.parse_text_block(raw, roles))
    except RecordError as err:
        return Item(str(path), "line", start, raw, error=err)


READERS = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_table, ".tsv": read_table,
           ".parquet": read_parquet, ".txt": read_text, ".xlsx": read_excel, ".xlsm": read_excel}


# -- datasets (save_to_disk folders, in-memory objects, the Hub) ---------------------------

def is_hf_dataset(source: Any) -> bool:
    """A datasets.Dataset / DatasetDict / IterableDataset, recognised without importing datasets."""
    return type(source).__module__.split(".")[0] == "datasets" and hasattr(source, "__iter__")


def dataset_items(data: Any, source: str) -> Iterator[Item]:
    if isinstance(data, dict):  # DatasetDict: every split, named in the source
        for split, part in data.items():
            yield from dataset_items(part, f"{source}:{split}")
        return
    for i, record in enumerate(data, start=1):
        yield Item(source, "row", i, _raw(record), _clean_cells(record))


def read_saved_dataset(path: Path) -> Iterator[Item]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 — any failure here means the folder cannot be used as is
        raise DataError(f"{path}: cannot read this save_to_disk folder ({err}) — save it again with "
                        "`dataset.save_to_disk(folder)` or export it to .jsonl.") from err
    yield from dataset_items(data, str(path))


def read_hub(source: HubSource) -> Iterator[Item]:
    """A Hub dataset via datasets.load_dataset. Offline (HF_HUB_OFFLINE=1) only a cached copy can load;
    online, a quick connection check comes first so a missing network fails at once, not after retries."""
    import datasets

    offline = hub_offline()
    if not offline and not hub_reachable():
        raise DataError(_unreachable(source, f"cannot connect to {_endpoint()}"))
    try:
        data = datasets.load_dataset(source.name, split=source.split)
    except Exception as err:  # noqa: BLE001 — datasets raises many types; all become one clear DataError
        if offline or isinstance(err, ConnectionError):
            why = "HF_HUB_OFFLINE is set and no cached copy was found" if offline else str(err)
            raise DataError(_unreachable(source, why)) from err
        raise DataError(f"cannot load Hub dataset {source.name!r}"
                        f"{f' split {source.split!r}' if source.split else ''}: {err} — check the id and the split "
                        "(\"hf:org/name:train\"), or pass a local path.") from err
    yield from dataset_items(data, source.label)


def hub_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the Hub within `timeout` seconds? Never blocks longer."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy only the hub client can tell
    url = urlparse(endpoint or _endpoint())
    if not url.hostname:
        return False
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    # A thread with a deadline: name resolution ignores socket timeouts on some systems.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result)


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _unreachable(source: HubSource, why: str) -> str:
    return (f"cannot load Hub dataset {source.name!r}: the network/Hugging Face Hub is unreachable ({why}) — "
            f"download the data where you have a connection (e.g. `datasets.load_dataset({source.name!r})"
            ".save_to_disk(folder)`) and pass that folder or a local file path in `sources` instead.")


def _clean_cells(record: dict[str, Any]) -> dict[str, Any]:
    """Table rows -> records: arrays become lists, empty cells (NaN/None) become absent fields,
    a cell's Windows line endings become "\n".

    JSON text in messages/conversations columns is decoded later, after column mapping
    (`chat_format.apply_mapping`), so a renamed column is decoded too.
    """
    out = {}
    for key, value in record.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        if _is_empty(value):
            continue  # an empty cell is an absent field, not the text "nan"
        if isinstance(value, str):
            value = value.replace("\r\n", "\n")
        out[key] = value
    return out


def _raw(record: Any) -> str:
    try:
        return json.dumps(record, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(record)

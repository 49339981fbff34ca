"""Stage 01: read every source, keep each valid row, reject the rest with a reason.

Nothing is lost: every record read lands in `data/clean.jsonl` or `data/rejected.jsonl`
(with source, position, category, message and the raw text), and the report always
satisfies read == kept + rejected. Blank lines are skipped and counted, not rejected.
"""

from __future__ import annotations

import csv
import glob
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from nbkit import chat_format
from nbkit.chat_format import RecordError
from nbkit.config import Config, field
from nbkit.errors import DataError
from nbkit.workspace import Workspace, iter_lines, write_json, write_jsonl

SAMPLE_DATA = Path(__file__).parent / "sample_data" / "support_triage.jsonl"
STRUCTURED_COLUMNS = ("messages", "conversations")
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


@dataclass
class CollectConfig(Config):
    """Where to read examples from.

    Sources accept paths, globs, in-memory lists of dicts or pandas DataFrames; an empty
    list means the bundled sample data (support tickets -> JSON triage record).
    """

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    sources: list = field([], "Paths or globs of .jsonl/.json/.csv/.tsv/.parquet files; empty = bundled sample data.")

    def validate(self) -> None:
        self.require(bool(self.workspace), "workspace", "must not be empty")
        self.require(isinstance(self.sources, (list, tuple)), "sources",
                     f"must be a list of paths or globs, got {type(self.sources).__name__}",
                     'write e.g. sources = ["data/*.jsonl"]')


@dataclass
class Item:
    """One record read from a source, with where it came from."""

    source: str
    where: str  # "line" | "index" | "row"
    position: int
    raw: str
    record: Any = None
    error: RecordError | None = None


def collect(config: CollectConfig) -> dict[str, Any]:
    """Read, validate and de-duplicate all sources; write clean/rejected/report; return the report."""
    ws = Workspace(config.workspace)
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    per_source: dict[str, Counter] = {}
    blank = Counter()

    for item in iter_items(config.sources or [SAMPLE_DATA], blank):
        counts = per_source.setdefault(item.source, Counter())
        counts["read"] += 1
        try:
            if item.error:
                raise item.error
            row = canonical_row(item)
            key = json.dumps(row["messages"], sort_keys=True, ensure_ascii=False)
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
        raise DataError(f"no records found in sources {config.sources!r} — check the paths and globs.")

    write_jsonl(ws.clean, kept)
    write_jsonl(ws.rejected, rejected)
    by_category = Counter(r["category"] for r in rejected)
    report = {
        "read": len(kept) + len(rejected),
        "kept": len(kept),
        "rejected": len(rejected),
        "duplicates": by_category.get(chat_format.DUPLICATE, 0),
        "blank_lines": sum(blank.values()),
        "by_category": dict(sorted(by_category.items())),
        "sources": {src: {k: c[k] for k in ("read", "kept", "rejected")} for src, c in per_source.items()},
    }
    write_json(ws.collect_report, report)
    return report


def canonical_row(item: Item) -> dict[str, Any]:
    messages = chat_format.to_messages(item.record, tabular=item.where == "row")
    meta: dict[str, Any] = {"source": item.source, item.where: item.position}
    # Scalar side fields (label, id, ...) travel in meta: split can stratify on a label.
    for key, value in item.record.items():
        if key not in ("messages", "conversations", "meta") and isinstance(value, (str, int, float, bool)):
            if key not in ("instruction", "input", "output", "prompt", "completion"):
                meta.setdefault(key, value)
    return {"messages": messages, "meta": meta}


# -- reading ----------------------------------------------------------------------------

def expand_sources(sources: Iterable[Any]) -> Iterator[Any]:
    for source in sources:
        if isinstance(source, (str, Path)):
            text = str(source)
            matches = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]
            if not matches:
                raise DataError(f"source {text!r} matches no file — check the glob or the working directory.")
            for match in matches:
                path = Path(match)
                if not path.exists():
                    raise DataError(f"source {match!r} does not exist.")
                if path.is_dir():
                    yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
                else:
                    yield path
        else:
            yield source


def iter_items(sources: Iterable[Any], blank: Counter) -> Iterator[Item]:
    for source in expand_sources(sources):
        if isinstance(source, Path):
            reader = READERS.get(source.suffix.lower())
            if reader is None:
                raise DataError(f"{source}: unsupported file type {source.suffix!r} — use one of {', '.join(SUFFIXES)}.")
            yield from reader(source, blank)
        elif isinstance(source, list):
            for i, record in enumerate(source):
                yield Item("<list>", "index", i, _raw(record), record)
        elif hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas DataFrame
            for i, record in enumerate(source.to_dict(orient="records")):
                yield Item("<dataframe>", "row", i + 1, _raw(record), _parse_cells(record))
        else:
            raise DataError(f"cannot read a source of type {type(source).__name__} — pass a path, a glob, "
                            "a list of dicts or a pandas DataFrame.")


def read_jsonl(path: Path, blank: Counter) -> Iterator[Item]:
    for number, raw in iter_lines(path):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            yield Item(str(path), "line", number, raw.decode("utf-8", "backslashreplace").rstrip("\r\n"),
                       error=RecordError(chat_format.NOT_UTF8, f"not valid UTF-8 at byte {err.start}"))
            continue
        text = text.rstrip("\r\n")
        if not text.strip():
            blank[str(path)] += 1
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            yield Item(str(path), "line", number, text,
                       error=RecordError(chat_format.INVALID_JSON, f"invalid JSON: {err.msg} at column {err.colno}"))
            continue
        yield Item(str(path), "line", number, text, record)


def read_json(path: Path, blank: Counter) -> Iterator[Item]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 at byte {err.start} — re-save the file as UTF-8.") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg} "
                        "(for one record per line use .jsonl).") from err
    if isinstance(data, dict) and not ({"messages", "conversations"} & set(data)):
        # {"data": [...]} or {"id1": {...}, "id2": {...}}
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else list(data.values())
    records = data if isinstance(data, list) else [data]
    for i, record in enumerate(records):
        yield Item(str(path), "index", i, _raw(record), record)


def read_table(path: Path, blank: Counter) -> Iterator[Item]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            for i, record in enumerate(csv.DictReader(fh, delimiter=delimiter), start=1):
                yield Item(str(path), "row", i, _raw(record), _parse_cells(record))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 at byte {err.start} — re-save the file as UTF-8.") from err


def read_parquet(path: Path, blank: Counter) -> Iterator[Item]:
    import pandas as pd

    for i, record in enumerate(pd.read_parquet(path).to_dict(orient="records"), start=1):
        yield Item(str(path), "row", i, _raw(record), _parse_cells(record))


def read_text(path: Path, blank: Counter) -> Iterator[Item]:
    raise DataError(f"{path}: plain text has no prompt/answer structure — convert it to .jsonl with `messages`.")


READERS = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_table, ".tsv": read_table,
           ".parquet": read_parquet, ".txt": read_text}


def _parse_cells(record: dict[str, Any]) -> dict[str, Any]:
    """Table rows -> records: nested columns arrive as JSON text or arrays, empty cells as NaN/None.

    Only the structured columns are decoded, so an answer that *is* JSON text stays text.
    """
    out = {}
    for key, value in record.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue  # an empty cell is an absent field, not the text "nan"
        if key in STRUCTURED_COLUMNS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # left as text: validation reports the wrong type with the row number
        out[key] = value
    return out


def _raw(record: Any) -> str:
    try:
        return json.dumps(record, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(record)

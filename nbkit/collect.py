"""Stage 01: read every source, keep each valid row, reject the rest with a reason.

Nothing is lost: every record read lands in `data/clean.jsonl` or `data/rejected.jsonl`
(with source, position, category, message and the raw text), and the report always
satisfies read == kept + rejected. Blank lines are skipped and counted, not rejected.

What a source can be (CollectConfig.sources):
    .jsonl .json .csv .tsv .parquet .txt   a path, a glob, or a folder (searched recursively)
    a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`   every split is read
    "hf:org/name" or "hf:org/name:split"   a Hub dataset (datasets.load_dataset; every split
                                           without `:split`). Needs the network or a cached copy.
    in memory                              a list of dicts, a pandas DataFrame, a datasets.Dataset
                                           or DatasetDict
`WORKSPACE/data/manual.jsonl` (examples added or fixed by hand, see `add_manual_example`) is
always read too when it exists.

Positions: `line` (from 1) for .jsonl and .txt, `index` (from 0) for JSON arrays and lists,
`row` (from 1, like a spreadsheet) for CSV/TSV/Parquet, DataFrames and datasets. A DatasetDict's
rows name their split in the source: "path/to/folder:train".

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
import json
import math
import os
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import urlparse

from nbkit import chat_format
from nbkit.chat_format import RecordError
from nbkit.config import Config, field
from nbkit.errors import DataError
from nbkit.workspace import Workspace, describe_provenance, iter_lines, write_json, write_jsonl

SAMPLE_DATA = Path(__file__).parent / "sample_data" / "support_triage.jsonl"
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
HUB_PREFIX = "hf:"


@dataclass
class CollectConfig(Config):
    """Where to read examples from, and how to map other layouts onto the recognised ones.

    Sources accept paths, globs, folders (also `save_to_disk` folders), "hf:org/name[:split]"
    Hub ids, in-memory lists of dicts, pandas DataFrames and datasets.Dataset objects; an
    empty list means the bundled sample data (support tickets -> JSON triage record).
    """

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    sources: list = field([], "Paths, globs or folders of .jsonl/.json/.csv/.tsv/.parquet/.txt files, "
                              "save_to_disk folders or \"hf:org/name[:split]\"; empty = bundled sample data.")
    columns: dict = field({}, "Map your column names to the recognised ones, e.g. "
                              '{"question": "prompt", "answer": "completion"} or {"dialog": "messages"}.')
    roles: dict = field({}, "Map other role names to system/user/assistant, e.g. "
                            '{"human": "user", "bot": "assistant"}.')

    def validate(self) -> None:
        self.require(bool(self.workspace), "workspace", "must not be empty")
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
    """What readers share: blank-line counts per source, and role names that count as .txt headers."""

    blank: Counter
    roles: Mapping[str, str]


def collect(config: CollectConfig) -> dict[str, Any]:
    """Read, validate and de-duplicate all sources; write clean/rejected/report; return the report."""
    ws = Workspace(config.workspace)
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    per_source: dict[str, Counter] = {}
    reading = Reading(Counter(), dict(config.roles))
    sources = list(config.sources or [SAMPLE_DATA])
    if manual_path(ws.root).is_file():
        sources.append(manual_path(ws.root))  # hand-written and fixed examples (read once even if listed)

    for item in iter_items(sources, reading):
        counts = per_source.setdefault(item.source, Counter())
        counts["read"] += 1
        try:
            if item.error:
                raise item.error
            record = chat_format.apply_mapping(item.record, config.columns, config.roles, tabular=item.where == "row")
            row = canonical_row(item, record)
            key = conversation_key(row["messages"])
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
        "blank_lines": sum(reading.blank.values()),
        "by_category": dict(sorted(by_category.items())),
        "sources": {src: {k: c[k] for k in ("read", "kept", "rejected")} for src, c in per_source.items()},
    }
    write_json(ws.collect_report, report)
    return report


def canonical_row(item: Item, record: Any = None) -> dict[str, Any]:
    record = item.record if record is None else record
    messages = chat_format.to_messages(record, tabular=item.where == "row")
    meta: dict[str, Any] = {"source": item.source, item.where: item.position}
    for key, value in side_fields(record).items():
        meta.setdefault(key, value)
    return {"messages": messages, "meta": meta}


def side_fields(record: dict[str, Any]) -> dict[str, Any]:
    """Scalar fields that are not part of the conversation (label, id, ...): they travel in meta,
    so split can stratify on a label."""
    skip = set(chat_format.SCHEMA_COLUMNS) | {"messages", "conversations", "meta"}
    if chat_format.uses_system_column(record):
        skip.add("system")
    return {k: v for k, v in record.items() if k not in skip and isinstance(v, (str, int, float, bool))}


def conversation_key(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


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
            yield from reader(source, reading)
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


def read_jsonl(path: Path, reading: Reading) -> Iterator[Item]:
    for number, raw in iter_lines(path):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            yield Item(str(path), "line", number, raw.decode("utf-8", "backslashreplace").rstrip("\r\n"),
                       error=RecordError(chat_format.NOT_UTF8, f"not valid UTF-8 at byte {err.start}"))
            continue
        text = text.rstrip("\r\n")
        if not text.strip():
            reading.blank[str(path)] += 1
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            yield Item(str(path), "line", number, text,
                       error=RecordError(chat_format.INVALID_JSON, f"invalid JSON: {err.msg} at column {err.colno}"))
            continue
        yield Item(str(path), "line", number, text, record)


def read_json(path: Path, reading: Reading) -> Iterator[Item]:
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


def read_table(path: Path, reading: Reading) -> Iterator[Item]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            for i, record in enumerate(csv.DictReader(fh, delimiter=delimiter), start=1):
                yield Item(str(path), "row", i, _raw(record), _clean_cells(record))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 at byte {err.start} — re-save the file as UTF-8.") from err


def read_parquet(path: Path, reading: Reading) -> Iterator[Item]:
    import pandas as pd

    for i, record in enumerate(pd.read_parquet(path).to_dict(orient="records"), start=1):
        yield Item(str(path), "row", i, _raw(record), _clean_cells(record))


def read_text(path: Path, reading: Reading) -> Iterator[Item]:
    """`.txt`: one example per block of non-blank lines (format in the module docstring)."""
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
           ".parquet": read_parquet, ".txt": read_text}


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
    """Table rows -> records: arrays become lists, empty cells (NaN/None) become absent fields.

    JSON text in messages/conversations columns is decoded later, after column mapping
    (`chat_format.apply_mapping`), so a renamed column is decoded too.
    """
    out = {}
    for key, value in record.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue  # an empty cell is an absent field, not the text "nan"
        out[key] = value
    return out


def _raw(record: Any) -> str:
    try:
        return json.dumps(record, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(record)

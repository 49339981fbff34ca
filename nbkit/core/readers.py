"""Stage 01's file readers: each source file kind (.jsonl .json .csv .tsv .txt .xlsx .xlsm .parquet) read
into Items (one record each, with its source, position and raw text), as spreadsheets and editors write them.

Positions: `line` (from 1) for .jsonl and .txt, `index` (from 0) for JSON arrays, `row` (from 1: the
first row under the header) for CSV/TSV/Excel/Parquet.

Files as spreadsheets export them: the delimiter of a CSV is read from its header line
(comma, semicolon, tab or |), UTF-8 and UTF-16/32 with a byte-order mark are decoded (Excel's
"Unicode text" is UTF-16 and tab-delimited, even when named .txt), Windows line endings
become "\n", and .xlsx sheets are read with pandas + openpyxl (the first sheet unless
`sheet` names one).

A file that cannot be read at all (not a table, not decodable) raises UnreadableFile with the
reason and the fix; `read_file` puts it in `Reading.unreadable` so collect goes on with the other
sources. A record that cannot be parsed becomes an Item with an `error` (collect rejects it).

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
import io
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from nbkit.core import schemas
from nbkit.core.errors import UnreadableFile
from nbkit.core.files import iter_lines, unclosed_object
from nbkit.core.messages import CELL_COUNT, INVALID_JSON, RecordError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".xlsx", ".xlsm")
DELIMITERS = (",", ";", "\t", "|")


@dataclass
class Item:
    """One record read from a source, with where it came from."""

    source: str
    where: str  # "line" | "index" | "row"
    position: int
    raw: str
    record: Any = None
    error: RecordError | None = None


@dataclass
class Reading:
    """What readers share: blank-line counts per source, role names that count as .txt headers, the
    .xlsx sheet to read, and the files that could not be read at all (source, reason, fix)."""

    blank: Counter
    roles: Mapping[str, str]
    sheet: str = ""
    unreadable: list = dc_field(default_factory=list)


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
        reading.unreadable.append(
            {
                "source": str(path),
                "reason": f"cannot be read ({type(err).__name__}: {err})",
                "fix": f"open it in the program that wrote it and save it again as {path.suffix}, "
                "or export it as CSV UTF-8",
            }
        )


BOMS = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


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
        raise UnreadableFile(
            f"not valid {encoding.replace('-sig', '').upper()} at byte {err.start} (line {line})",
            "re-save the file as UTF-8 (in Excel: Save As > CSV UTF-8)",
        ) from None


def read_jsonl(path: Path, reading: Reading) -> Iterator[Item]:
    if file_wide_encoding(path):  # UTF-16/32: decode the whole file, then read it line by line
        for number, text in enumerate(decoded_text(path).splitlines(), start=1):
            yield from _jsonl_item(path, number, text, reading)
        return
    for number, raw in iter_lines(path):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            yield Item(
                str(path),
                "line",
                number,
                raw.decode("utf-8", "backslashreplace").rstrip("\r\n"),
                error=RecordError(schemas.NOT_UTF8, f"not valid UTF-8 at byte {err.start}"),
            )
            continue
        yield from _jsonl_item(path, number, text.rstrip("\r\n"), reading)


def _jsonl_item(path: Path, number: int, text: str, reading: Reading) -> Iterator[Item]:
    if not text.strip():
        reading.blank[str(path)] += 1
        return
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        # What a kill mid-append leaves (manual.jsonl): said as such, so the fix is plain (re-add that example).
        cut = " — the line stops mid-record, cut off by an interrupted write" if unclosed_object(text) else ""
        yield Item(
            str(path),
            "line",
            number,
            text,
            error=RecordError(INVALID_JSON, f"invalid JSON: {err.msg} at column {err.colno}{cut}"),
        )
        return
    yield Item(str(path), "line", number, text, record)


def read_json(path: Path, reading: Reading) -> Iterator[Item]:
    try:
        data = json.loads(decoded_text(path))
    except json.JSONDecodeError as err:
        raise UnreadableFile(
            f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}",
            "fix the file, or write one record per line and name it .jsonl",
        ) from None
    if isinstance(data, dict) and not ({"messages", "conversations"} & set(data)):
        # {"data": [...]} or {"id1": {...}, "id2": {...}}
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else list(data.values())
    records = data if isinstance(data, list) else [data]
    for i, record in enumerate(records):
        yield Item(str(path), "index", i, raw_text(record), record)


def read_table(path: Path, reading: Reading, text: str | None = None) -> Iterator[Item]:
    """CSV/TSV as spreadsheets write them: any of DELIMITERS (read from the header), quoted cells over
    several lines, UTF-8 or UTF-16; a cell's Windows line endings become "\n"."""
    text = decoded_text(path) if text is None else text
    delimiter = sniff_delimiter(text, "\t" if path.suffix.lower() in (".tsv", ".txt") else ",")
    rows = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, restkey=EXTRA_CELLS)
    try:
        for i, record in enumerate(rows, start=1):
            extra = record.pop(EXTRA_CELLS, None)
            header = len(rows.fieldnames or ())
            error = (
                None
                if extra is None
                else RecordError(
                    CELL_COUNT,
                    f"{header + len(extra)} cells where the header has "
                    f"{header} (a {_delimiter_name(delimiter)} inside a cell that "
                    "is not in quotes?)",
                )
            )
            yield Item(
                str(path),
                "row",
                i,
                raw_text({**record, **({EXTRA_CELLS: extra} if extra else {})}),
                clean_cells(record),
                error,
            )
    except csv.Error as err:  # a NUL byte or an unclosed quote: the rows before it are kept
        raise UnreadableFile(
            f"not a readable table after line {rows.line_num} ({err})",
            "save it again from the spreadsheet as CSV UTF-8",
        ) from None


EXTRA_CELLS = "(cells past the header)"  # where a row with more cells than header columns puts the rest


def _delimiter_name(delimiter: str) -> str:
    return {",": "comma", ";": "semicolon", "\t": "tab", "|": "|"}[delimiter]


def sniff_delimiter(text: str, default: str) -> str:
    """The delimiter that splits the header line into the most columns (the default on a tie)."""
    header = text.split("\n", 1)[0]
    counts = {d: len(next(csv.reader([header], delimiter=d), [])) for d in DELIMITERS}
    best = max(counts.values())
    return default if best <= 1 or counts[default] == best else max(counts, key=lambda d: counts[d])


def read_excel(path: Path, reading: Reading) -> Iterator[Item]:
    """An .xlsx sheet (the first, or `sheet`) through pandas + openpyxl; cells as text, as the sheet shows them."""
    import pandas as pd

    try:
        sheets = pd.ExcelFile(path, engine="openpyxl")
    except ImportError as err:
        raise UnreadableFile(f"reading .xlsx needs openpyxl ({err})", "pip install openpyxl") from None
    if reading.sheet and reading.sheet not in sheets.sheet_names:
        raise UnreadableFile(
            f"has no sheet {reading.sheet!r} (sheets: {', '.join(sheets.sheet_names)})",
            "set `sheet` to one of those names, or leave it empty for the first sheet",
        )
    frame = sheets.parse(reading.sheet or 0, dtype=object)
    for i, record in enumerate(frame.to_dict(orient="records"), start=1):
        record = {
            str(k): _cell_text(v) for k, v in record.items() if not str(k).startswith("Unnamed: ") or not _is_empty(v)
        }
        yield Item(str(path), "row", i, raw_text(record), clean_cells(record))


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
        yield Item(str(path), "row", i, raw_text(record), clean_cells(record))


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
    if "\t" in first and not schemas.TEXT_HEADER.match(first.strip()):  # a header of tab-separated columns
        yield from read_table(path, reading, text)
        return
    if wide:
        raise UnreadableFile(
            f"is {wide.upper()} text, not a table with tab-separated columns",
            "save it as UTF-8 text (or export the sheet as CSV UTF-8)",
        )
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
        return Item(str(path), "line", start, raw, error=RecordError(schemas.NOT_UTF8, bad))
    try:
        return Item(str(path), "line", start, raw, schemas.parse_text_block(raw, roles))
    except RecordError as err:
        return Item(str(path), "line", start, raw, error=err)


READERS = {
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".csv": read_table,
    ".tsv": read_table,
    ".parquet": read_parquet,
    ".txt": read_text,
    ".xlsx": read_excel,
    ".xlsm": read_excel,
}


def clean_cells(record: dict[str, Any]) -> dict[str, Any]:
    """Table rows -> records: arrays become lists, empty cells (NaN/None) become absent fields,
    a cell's Windows line endings become "\n".

    JSON text in messages/conversations columns is decoded later, after column mapping
    (`schemas.apply_mapping`), so a renamed column is decoded too.
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


def raw_text(record: Any) -> str:
    """A record as the text rejected.jsonl keeps in "raw" (JSON, or its repr when not JSON-serialisable)."""
    try:
        return json.dumps(record, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(record)

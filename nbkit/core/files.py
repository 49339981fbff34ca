"""Writing and reading the workspace's files so that a killed runtime loses nothing.

- Whole files (rows, splits, reports, configs) go through `atomic_file` and the writers built on it: written
  beside the old file and moved over it, so a runtime killed mid-write (Colab's idle timeout, a closed laptop)
  leaves the old version or the new one, never half of one. Folders: `atomic_folder` / `replace_folder`.
- Append-only files (manual.jsonl, ratings, metrics.jsonl, preference ratings) go through `append_jsonl` and are
  read back with `read_appended`, which forgives the one thing a kill can leave there: a line cut off mid-write.
- `file_record(s)`: rows and sha256 of a stage's outputs, listed in its report so the next stage can check them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from nbkit.core.errors import DataError


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file the kit wrote whole (user files go through nbkit.data.collect; append-only files through
    `read_appended`)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@contextmanager
def atomic_file(path: Path, binary: bool = False) -> Iterator[IO]:
    """Open PATH for writing so that it changes whole or not at all.

    The text goes to a hidden file in the same folder (same file system, so the move is atomic), is flushed to
    disk, and replaces PATH only when the block ends without error. A process killed inside the block leaves
    PATH as it was, plus a hidden `.NAME.PID.tmp` that the next write of PATH clears away.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if not _pid_alive(stale.name.rsplit(".", 2)[-2]):
            stale.unlink(missing_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") if binary else open(partial, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _pid_alive(text: str) -> bool:
    """Whether a process with this id runs now (a temp file of a live writer is not stale)."""
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def write_text(path: Path, text: str) -> Path:
    with atomic_file(path) as fh:
        fh.write(text)
    return path


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def file_record(path: Path) -> dict[str, Any]:
    """{"rows": lines, "sha256": first 16 hex digits of the bytes' hash}: what a report says it wrote."""
    digest, rows = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            rows += block.count(b"\n")
    return {"rows": rows, "sha256": digest.hexdigest()[:16]}


def file_records(*paths: Path) -> dict[str, dict[str, Any]]:
    """The `files` entry of a report: each written file (beside the report) by name."""
    return {Path(p).name: file_record(Path(p)) for p in paths if Path(p).is_file()}


def replace_folder(partial: Path, final: Path) -> Path:
    """Move a fully written folder into place (a model, an adapter): the old one is moved aside first and removed
    after, so a kill leaves either folder whole, never a mix of the two."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A fresh hidden folder beside PATH to write into; it replaces PATH when the block ends without error."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # what a killed earlier write left
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_folder(partial, path)


def append_jsonl(path: Path, record: dict[str, Any]) -> int:
    """Append one record to an append-only JSONL file; return its line number.

    Earlier lines are never rewritten. When the file does not end in a newline (a write cut off by a kill, or a
    hand edit), the record starts on a fresh line: the cut-off piece stays where it was, set aside by
    `read_appended`, and the new record is whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        lines = 0
        if size:
            fh.seek(0)
            data = fh.read()
            lines = data.count(b"\n")
            if not data.endswith(b"\n"):
                fh.write(b"\n")
                lines += 1
        fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        fh.flush()
    return lines + 1


def read_appended(path: Path) -> list[dict[str, Any]]:
    """Every complete record of an append-only JSONL file, in order ([] when the file does not exist).

    A kill in the middle of `append_jsonl` can only leave the start of a record: a line that opens a JSON object
    and never closes it. Such lines are set aside with a warning naming the file, line and byte offset, so one
    half line never holds the rest of the file hostage. Anything else that does not read as a JSON object (a hand
    edit gone wrong) is an error naming the line: skipping it silently could lose data.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows, offset = [], 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            start, offset = offset, offset + len(raw)
            body = raw.rstrip(b"\r\n")
            try:
                text = body.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                if err.end < len(body):  # a character cut in two at the end of a line is a cut-off write
                    raise DataError(
                        f"{path} line {number}: not valid UTF-8 at byte {start + err.start} — fix or "
                        "delete that line; the other lines are intact."
                    ) from None
                text = body[: err.start].decode("utf-8", errors="replace")
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                if not unclosed_object(text):
                    raise DataError(
                        f"{path} line {number}: not a JSON record ({err.msg} at column {err.colno}) "
                        "— fix or delete that line; the other lines are intact."
                    ) from None
                warnings.warn(
                    f"{path}: set aside line {number} (byte {start}), cut off by an interrupted write; "
                    "every complete line was read.",
                    stacklevel=2,
                )
                continue
            if not isinstance(record, dict):
                raise DataError(
                    f"{path} line {number}: expected a JSON object, got {type(record).__name__} — "
                    "fix or delete that line."
                )
            rows.append(record)
    return rows


def unclosed_object(text: str) -> bool:
    """Whether TEXT opens a JSON object and stops before closing it (inside a string, or with brackets open):
    what a cut-off write leaves. A complete line with a mistake in it closes its brackets."""
    text = text.strip()
    if not text.startswith("{"):
        return False
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
    return in_string or depth > 0


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw bytes) so callers can report exact positions."""
    with open(path, "rb") as fh:
        yield from enumerate(fh, start=1)

"""The workspace folder: the only way notebooks hand data to each other.

Layout (see DESIGN.md):
    data/clean.jsonl, data/rejected.jsonl, data/collect_report.json      01 collect
    data/manual.jsonl                                                    01 (hand-written and fixed examples)
    data/quality_report.json, data/diversity_map.json                    02 quality report
    data/formatted/rows.jsonl, dropped.jsonl, replay.jsonl, format_report.json  02 format
    data/splits/{train,validation,test}.jsonl, manifest.json, leaked.jsonl  03 split
    runs/<run_id>/...                                                    04 train, 05 evaluate
    executed/                                                            `nbkit run`
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from nbkit.errors import WorkspaceError

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __init__(self, root: str | Path = "workspace") -> None:
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    # 01 collect
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def clean(self) -> Path:
        return self.data / "clean.jsonl"

    @property
    def rejected(self) -> Path:
        return self.data / "rejected.jsonl"

    @property
    def collect_report(self) -> Path:
        return self.data / "collect_report.json"

    @property
    def manual(self) -> Path:
        """Examples added in the editor or fixed from rejected rows; every collect run reads it."""
        return self.data / "manual.jsonl"

    # 02 format (with the quality report)
    @property
    def quality_report(self) -> Path:
        return self.data / "quality_report.json"

    @property
    def diversity_map(self) -> Path:
        return self.data / "diversity_map.json"

    @property
    def formatted(self) -> Path:
        return self.data / "formatted" / "rows.jsonl"

    @property
    def dropped(self) -> Path:
        """Rows 02 set aside, each with its reason: near-duplicates, rows the chat template cannot render, rows
        with nothing to train (kept here, never lost silently)."""
        return self.data / "formatted" / "dropped.jsonl"

    @property
    def replay(self) -> Path:
        """The replay guard's pool: the base model's own answers to general prompts (nbkit.replay); 03 mixes a
        share of them into train only."""
        return self.data / "formatted" / "replay.jsonl"

    @property
    def format_report(self) -> Path:
        return self.data / "formatted" / "format_report.json"

    # 03 split
    @property
    def splits(self) -> Path:
        return self.data / "splits"

    def split(self, name: str) -> Path:
        return self.splits / f"{name}.jsonl"

    @property
    def leaked(self) -> Path:
        """Evaluation rows that copy training rows, when 03 drops them."""
        return self.splits / "leaked.jsonl"

    @property
    def manifest(self) -> Path:
        return self.splits / "manifest.json"

    # 04 train, 05 evaluate
    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    @property
    def executed(self) -> Path:
        return self.root / "executed"

    def require(self, path: Path, notebook: str) -> Path:
        """Fail with the notebook to run when an earlier stage's output is missing."""
        if not path.exists():
            raise WorkspaceError(
                f"{path} is missing — run {notebook} first with the same `workspace` ({self.root})."
            )
        return path


POSITION_KEYS = ("line", "index", "row")  # how a record's place in its source is named


def provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """Where a row came from, as collect records it: {"source": ..., "line"|"index"|"row": ...}."""
    return {"source": meta.get("source"), **{k: meta[k] for k in POSITION_KEYS if k in meta}}


def describe_provenance(meta: dict[str, Any]) -> str:
    """"data.jsonl line 3" — for messages."""
    where = provenance(meta)
    return " ".join(str(v) if k == "source" else f"{k} {v}" for k, v in where.items() if v is not None)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file the kit wrote itself (user files go through nbkit.collect)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw bytes) so callers can report exact positions."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            yield number, raw

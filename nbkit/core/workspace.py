"""The workspace folder: the only way notebooks hand data to each other.

Layout (see DESIGN.md):
    data/clean.jsonl, data/rejected.jsonl, data/collect_report.json      01 collect
    data/manual.jsonl                                                    01 (hand-written and fixed examples)
    data/quality_report.json, data/diversity_map.json                    02 quality report
    data/formatted/rows.jsonl, dropped.jsonl, replay.jsonl, format_report.json  02 format
    data/splits/{train,validation,test}.jsonl, manifest.json, leaked.jsonl  03 split
    runs/<run_id>/...                                                    04 train, 05 evaluate, 06 prefer
    data/preferences/pairs.jsonl, rejected.jsonl, pairs_report.json, ratings.jsonl  06 prefer
    executed/                                                            `nbkit run`

Every file is written through nbkit.core.files (atomic whole files, append-only files read back forgivingly);
`Workspace.checked` and `Workspace.read_split` compare a stage's inputs with the files its report lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.core.errors import WorkspaceError
from nbkit.core.files import file_record, read_json, read_jsonl

SPLITS = ("train", "validation", "test")
EXPORT_FORMATS = ("merged", "gguf", "ollama")


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
        """The replay guard's pool: the base model's own answers to general prompts (nbkit.data.replay); 03 mixes a
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

    # 06 prefer
    @property
    def preferences(self) -> Path:
        return self.data / "preferences"

    @property
    def pairs(self) -> Path:
        """Preference pairs {"prompt", "chosen", "rejected", "source", ...} built from the training split."""
        return self.preferences / "pairs.jsonl"

    @property
    def pairs_rejected(self) -> Path:
        return self.preferences / "rejected.jsonl"

    @property
    def pairs_report(self) -> Path:
        return self.preferences / "pairs_report.json"

    @property
    def preference_ratings(self) -> Path:
        """A person's choices between two sampled answers to training prompts (append-only)."""
        return self.preferences / "ratings.jsonl"

    @property
    def executed(self) -> Path:
        return self.root / "executed"

    def require(self, path: Path, notebook: str) -> Path:
        """Fail with the notebook to run when an earlier stage's output is missing."""
        if not path.exists():
            raise WorkspaceError(f"{path} is missing — run {notebook} first with the same `workspace` ({self.root}).")
        return path

    def checked(self, report_path: Path, notebook: str, required: bool = True) -> dict[str, Any]:
        """An earlier stage's report, after checking that the files it lists are the ones it wrote.

        A stage writes its data files first and its report last (`files`: rows and sha256 of each, from
        `file_records`). A stage killed between the two, or a file changed by hand afterwards, leaves files its
        report does not describe: reading them as truth would train or score on the wrong data, so this fails
        and names the stage to re-run. Reports from before this check have no `files` and pass; so does a missing
        report when not `required` (files made by hand, without the stage).
        """
        if not required and not report_path.exists():
            return {}
        report = read_json(self.require(report_path, notebook))
        for name, expected in (report.get("files") or {}).items():
            path = report_path.parent / name
            found = file_record(path) if path.is_file() else None
            if found != expected:
                state = (
                    "is missing"
                    if found is None
                    else f"has {found['rows']} rows where {report_path.name} lists {expected['rows']}"
                    if found["rows"] != expected["rows"]
                    else f"is not the file {report_path.name} lists"
                )
                raise WorkspaceError(
                    f"{path} {state}: {notebook} was interrupted while writing, or the file was "
                    f"changed afterwards — re-run {notebook} (its inputs are intact)."
                )
        return report

    def read_split(self, name: str) -> list[dict[str, Any]]:
        """One split's rows, after checking it is the file 03's manifest lists (`checked`; when there is one)."""
        self.checked(self.manifest, "03_split", required=False)
        return read_jsonl(self.require(self.split(name), "03_split"))


POSITION_KEYS = ("line", "index", "row")  # how a record's place in its source is named


def provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """Where a row came from, as collect records it: {"source": ..., "line"|"index"|"row": ...}."""
    return {"source": meta.get("source"), **{k: meta[k] for k in POSITION_KEYS if k in meta}}


def describe_provenance(meta: dict[str, Any]) -> str:
    """ "data.jsonl line 3" — for messages."""
    where = provenance(meta)
    return " ".join(str(v) if k == "source" else f"{k} {v}" for k, v in where.items() if v is not None)

"""Stage 01's Hugging Face sources, and whether the Hub can be reached (collect and export both ask).

    a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`   every split is read
    "hf:org/name" or "hf:org/name:split"   a Hub dataset (datasets.load_dataset; every split
                                           without `:split`). Needs the network or a cached copy.
    in memory                              a datasets.Dataset or DatasetDict

Their records are Items (nbkit.core.readers) at `row` positions (from 1). A DatasetDict's rows name
their split in the source: "path/to/folder:train".

The Hub check (`hub_unreachable`) is a TCP connection to HF_ENDPOINT (default huggingface.co) with
a short timeout, so a machine without a network fails at once instead of after the hub client's
retries; `hub_offline` says whether HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) forbids the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbkit.core.errors import DataError
from nbkit.core.network import hub_endpoint, hub_offline, hub_unreachable
from nbkit.core.readers import Item, clean_cells, raw_text

HUB_PREFIX = "hf:"


@dataclass(frozen=True)
class SavedDataset:
    """A folder written by `save_to_disk` (a Dataset, or a DatasetDict with one folder per split)."""

    path: Path


@dataclass(frozen=True)
class HubSource:
    """A Hub dataset named in `sources` as "hf:org/name" or "hf:org/name:split" (None: every split)."""

    name: str
    split: str | None = None

    @property
    def label(self) -> str:
        return f"{HUB_PREFIX}{self.name}" + (f":{self.split}" if self.split else "")


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file()
    )


def hub_source(text: str) -> HubSource:
    name, _, split = text[len(HUB_PREFIX) :].strip().partition(":")  # Hub ids contain no colon
    if not name or name.startswith("/") or name.endswith("/") or " " in name:
        raise DataError(f'source {text!r}: write a Hub dataset as "hf:org/name" or "hf:org/name:split".')
    return HubSource(name, split.strip() or None)


def is_hf_dataset(source: Any) -> bool:
    """A datasets.Dataset / DatasetDict / IterableDataset, recognised without importing datasets."""
    return type(source).__module__.split(".")[0] == "datasets" and hasattr(source, "__iter__")


def dataset_items(data: Any, source: str) -> Iterator[Item]:
    if isinstance(data, dict):  # DatasetDict: every split, named in the source
        for split, part in data.items():
            yield from dataset_items(part, f"{source}:{split}")
        return
    for i, record in enumerate(data, start=1):
        yield Item(source, "row", i, raw_text(record), clean_cells(record))


def read_saved_dataset(path: Path) -> Iterator[Item]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 — any failure here means the folder cannot be used as is
        raise DataError(
            f"{path}: cannot read this save_to_disk folder ({err}) — save it again with "
            "`dataset.save_to_disk(folder)` or export it to .jsonl."
        ) from err
    yield from dataset_items(data, str(path))


def read_hub(source: HubSource) -> Iterator[Item]:
    """A Hub dataset via datasets.load_dataset. Offline (HF_HUB_OFFLINE=1) only a cached copy can load;
    online, a quick connection check comes first so a missing network fails at once, not after retries."""
    import datasets

    offline = hub_offline()
    problem = None if offline else hub_unreachable()
    if problem:
        raise DataError(_unreachable(source, f"cannot connect to {hub_endpoint()}: {problem}"))
    try:
        data = datasets.load_dataset(source.name, split=source.split)
    except Exception as err:  # noqa: BLE001 — datasets raises many types; all become one clear DataError
        if offline or isinstance(err, ConnectionError):
            why = "HF_HUB_OFFLINE is set and no cached copy was found" if offline else str(err)
            raise DataError(_unreachable(source, why)) from err
        raise DataError(
            f"cannot load Hub dataset {source.name!r}"
            f"{f' split {source.split!r}' if source.split else ''}: {err} — check the id and the split "
            '("hf:org/name:train"), or pass a local path.'
        ) from err
    yield from dataset_items(data, source.label)


def _unreachable(source: HubSource, why: str) -> str:
    return (
        f"cannot load Hub dataset {source.name!r}: the network/Hugging Face Hub is unreachable ({why}) — "
        f"download the data where you have a connection (e.g. `datasets.load_dataset({source.name!r})"
        ".save_to_disk(folder)`) and pass that folder or a local file path in `sources` instead."
    )

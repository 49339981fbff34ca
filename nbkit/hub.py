"""Stage 01's Hugging Face sources, and whether the Hub can be reached (collect and export both ask).

    a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`   every split is read
    "hf:org/name" or "hf:org/name:split"   a Hub dataset (datasets.load_dataset; every split
                                           without `:split`). Needs the network or a cached copy.
    in memory                              a datasets.Dataset or DatasetDict

Their records are Items (nbkit.readers) at `row` positions (from 1). A DatasetDict's rows name
their split in the source: "path/to/folder:train".

The Hub check (`hub_unreachable`) is a TCP connection to HF_ENDPOINT (default huggingface.co) with
a short timeout, so a machine without a network fails at once instead of after the hub client's
retries; `hub_offline` says whether HF_HUB_OFFLINE (or HF_DATASETS_OFFLINE) forbids the network.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlparse

from nbkit.errors import DataError
from nbkit.readers import Item, clean_cells, raw_text

HUB_PREFIX = "hf:"
DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


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
        (path / "dataset_info.json").is_file() and (path / "state.json").is_file())


def hub_source(text: str) -> HubSource:
    name, _, split = text[len(HUB_PREFIX):].strip().partition(":")  # Hub ids contain no colon
    if not name or name.startswith("/") or name.endswith("/") or " " in name:
        raise DataError(f"source {text!r}: write a Hub dataset as \"hf:org/name\" or \"hf:org/name:split\".")
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
        raise DataError(f"{path}: cannot read this save_to_disk folder ({err}) — save it again with "
                        "`dataset.save_to_disk(folder)` or export it to .jsonl.") from err
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
        raise DataError(f"cannot load Hub dataset {source.name!r}"
                        f"{f' split {source.split!r}' if source.split else ''}: {err} — check the id and the split "
                        "(\"hf:org/name:train\"), or pass a local path.") from err
    yield from dataset_items(data, source.label)


def hub_offline(variables: Iterable[str] = OFFLINE_VARIABLES) -> bool:
    """Whether one of `variables` is set to 1/on/yes/true (any case), as huggingface_hub reads HF_HUB_OFFLINE."""
    for var in variables:
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def hub_unreachable(endpoint: str | None = None, timeout: float = 3.0) -> str | None:
    """None if the Hub endpoint (default: HF_ENDPOINT) accepts a TCP connection within `timeout`
    seconds, else why not. Never blocks much longer.

    Behind a proxy (HTTPS_PROXY/ALL_PROXY) a direct connection proves nothing, so the answer is None
    and the hub client decides. The probe runs in a daemon thread joined with a timeout, because name
    resolution ignores socket timeouts and can hang for a minute on machines without a network.
    """
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None  # behind a proxy only the hub client can tell
    endpoint = endpoint or hub_endpoint()
    url = urlparse(endpoint)
    if not url.hostname:
        return f"{endpoint!r} is not a URL with a host name (set HF_ENDPOINT to e.g. {DEFAULT_ENDPOINT})"
    host, port = url.hostname, url.port or (80 if url.scheme == "http" else 443)
    problem: list[str] = ["no answer within the timeout"]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            problem[0] = ""
        except OSError as err:
            problem[0] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        return f"no answer from {host}:{port} within {timeout:g} s"
    return problem[0] or None


def hub_endpoint() -> str:
    """The Hub's URL: HF_ENDPOINT when set (a mirror, a private Hub), else huggingface.co."""
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def _unreachable(source: HubSource, why: str) -> str:
    return (f"cannot load Hub dataset {source.name!r}: the network/Hugging Face Hub is unreachable ({why}) — "
            f"download the data where you have a connection (e.g. `datasets.load_dataset({source.name!r})"
            ".save_to_disk(folder)`) and pass that folder or a local file path in `sources` instead.")

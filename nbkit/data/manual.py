"""Examples written by hand (01's editor, fixes of rejected rows) and exchanges promoted from the playground: each
validated exactly as collect validates a record, duplicates refused, appended to data/manual.jsonl, which the next
collect run reads with the other sources."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nbkit.core import schemas
from nbkit.core.files import append_jsonl
from nbkit.core.messages import DUPLICATE, RecordError, validate_messages
from nbkit.core.workspace import Workspace, describe_provenance
from nbkit.data.collect import conversation_key, side_fields


def manual_path(workspace: str | Path) -> Path:
    """WORKSPACE/data/manual.jsonl: examples added in the editor or fixed from rejected rows."""
    return Workspace(workspace).manual


def add_manual_example(
    workspace: str | Path,
    record: dict[str, Any],
    *,
    columns: Mapping[str, str] | None = None,
    roles: Mapping[str, str] | None = None,
    fixed_from: str | None = None,
) -> int:
    """Validate one example and append it to WORKSPACE/data/manual.jsonl; return its line number.

    `record` is any recognised layout ({"messages": [...]}, prompt/completion, ...); it is
    stored as {"messages": [...]} plus its scalar side fields (label, ...), and `fixed_from`
    when it repairs a rejected row. Raises RecordError and writes nothing when collect would
    reject it — including when the same conversation is already in manual.jsonl or was kept.
    """
    record = schemas.apply_mapping(record, columns, roles)
    messages = schemas.to_messages(record)
    path = manual_path(workspace)
    existing = _find_conversation(conversation_key(messages), path, Workspace(workspace).clean)
    if existing:
        raise RecordError(DUPLICATE, f"same conversation as {existing}")
    row = {"messages": messages, **side_fields(record)}
    if fixed_from:
        row["fixed_from"] = fixed_from
    return append_jsonl(path, row)


def _find_conversation(key: str, manual: Path, clean: Path) -> str | None:
    """Where this conversation already is: a line of manual.jsonl, or a kept row's provenance."""
    for path in (manual, clean):
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, start=1):
                try:
                    row = json.loads(line)
                    if conversation_key(validate_messages(row["messages"])) != key:
                        continue
                except (ValueError, TypeError, KeyError, RecordError):
                    continue  # a broken line is collect's business, not a match
                if path == manual:
                    return f"{path} line {number}"
                return f"a kept row ({describe_provenance({'source': path, **row.get('meta', {})})})"
    return None


def promote(
    workspace: str | Path, messages: list[dict[str, str]], run_id: str, model_answer: str = ""
) -> tuple[Path, int]:
    """Append the exchange to data/manual.jsonl, marked {"promoted_from": run_id}; return (path, line).

    `model_answer`: the model's own last answer. When the user corrected it (it differs from the promoted last
    answer beyond whitespace), it is kept as {"model_answer": ...}: stage 06 turns the correction into a
    preference pair (the correction chosen, the model's answer rejected).

    Validated exactly as collect validates a record (RecordError, nothing written, when it
    would be rejected — including a conversation already in manual.jsonl or clean.jsonl).
    The next collect run keeps it with meta["promoted_from"] (and meta["model_answer"]).
    """
    record = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages], "promoted_from": run_id}
    if model_answer.strip() and " ".join(model_answer.split()) != " ".join(messages[-1]["content"].split()):
        record["model_answer"] = model_answer
    line = add_manual_example(workspace, record)
    return manual_path(workspace), line

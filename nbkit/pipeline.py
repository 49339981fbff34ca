"""Run the notebooks headlessly with papermill (what `nbkit run` does): the five stages, or any named with --only.

Each notebook gets only the parameters it declares, so a typo in `-p` is caught here
instead of being silently ignored by papermill.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nbkit.core.errors import ConfigError, NbkitError, NotebookFailed

NOTEBOOKS = ("01_collect", "02_format", "03_split", "04_train", "05_evaluate", "06_prefer")
# What `nbkit run` runs without --only: the five stages from data to evaluated run. 06 refines a finished run and
# is asked for by name (--only 06): on a CPU its sampled pairs and its training take longer than the rest together.
PIPELINE = NOTEBOOKS[:5]


def notebooks_dir() -> Path:
    """The notebooks that ship with the kit (the repository's notebooks/ folder)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "notebooks", here / "notebooks"):
        if (candidate / f"{NOTEBOOKS[0]}.ipynb").exists():
            return candidate
    raise NbkitError("cannot find the kit's notebooks — pass --notebooks DIR pointing at the notebooks/ folder.")


def select(only: str | Iterable[str] | None) -> list[str]:
    """'03,04' or ['3', '04_train'] -> ['03_split', '04_train']."""
    if not only:
        return list(PIPELINE)
    items = only.split(",") if isinstance(only, str) else list(only)
    chosen = []
    for item in (i.strip() for i in items if i.strip()):
        matches = [nb for nb in NOTEBOOKS if nb == item or nb.startswith(item.zfill(2) + "_") or nb[3:] == item]
        if not matches:
            raise ConfigError(f"--only: unknown notebook {item!r} — use numbers like 03,04 or names like split,train.")
        chosen += [m for m in matches if m not in chosen]
    return sorted(chosen)


def plan(names: list[str], params: dict[str, Any], folder: Path) -> dict[str, dict[str, Any]]:
    """Parameters to inject into each notebook; unknown names are an error, not a warning."""
    import papermill

    declared = {name: papermill.inspect_notebook(str(folder / f"{name}.ipynb")) for name in names}
    known = set().union(*declared.values())
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for "
            f"{', '.join(names)} — known: {', '.join(sorted(known))}."
        )
    return {name: {k: v for k, v in params.items() if k in declared[name]} for name in names}


def run_notebooks(
    workspace: str | Path = "workspace",
    only: str | Iterable[str] | None = None,
    params: dict[str, Any] | None = None,
    notebooks: str | Path | None = None,
    kernel_name: str | None = None,
    log_output: bool = True,
) -> list[Path]:
    """Execute the selected notebooks in order; executed copies go to WORKSPACE/executed/."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    workspace = Path(workspace).expanduser().resolve()
    folder = Path(notebooks) if notebooks else notebooks_dir()
    names = select(only)
    base = {"workspace": str(workspace), "interactive": False}
    injected = plan(names, {**base, **(params or {})}, folder)
    out_dir = workspace / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        output = out_dir / f"{name}.ipynb"
        print(f"== {name}", flush=True)
        try:
            papermill.execute_notebook(
                str(folder / f"{name}.ipynb"),
                str(output),
                parameters=injected[name],
                kernel_name=kernel_name,
                progress_bar=False,
                log_output=log_output,
            )
        except PapermillExecutionError as err:
            first_line = next((line for line in err.source.splitlines() if line.strip()), "").strip()
            raise NotebookFailed(
                f"{name}.ipynb, cell {err.cell_index} (`{first_line[:60]}`): {err.ename}: "
                f"{err.evalue} — executed copy: {output}"
            ) from None
        written.append(output)
    return written

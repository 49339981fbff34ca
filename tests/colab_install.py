"""Install the kit into this Python exactly as the notebooks' install cell does on Colab, from this checkout.

`make test-colab` runs it in `.venv-colab` right after Colab's pins (tests/colab_pins.txt) are installed.
The pip runs are read from the install cell itself (tests/notebook_cells.py), only the kit's source swapped
for this checkout, so the Makefile cannot drift from what users run. It writes what was installed before
and after into the venv (colab-before.txt, colab-after.txt) for tests/test_colab_stack.py.

    .venv-colab/bin/python tests/colab_install.py            # snapshot, install, snapshot, print the changes
    .venv-colab/bin/python tests/colab_install.py --changes  # only print what the install changed
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from notebook_cells import pip_installs_from_checkout

VENV = Path(sys.prefix)
BEFORE, AFTER = VENV / "colab-before.txt", VENV / "colab-after.txt"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """Every distribution this Python sees, by canonical name."""
    importlib.invalidate_caches()
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def write_snapshot(path: Path, versions: dict[str, str]) -> None:
    path.write_text("".join(f"{name}=={v}\n" for name, v in sorted(versions.items())), encoding="utf-8")


def read_snapshot(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return dict(line.split("==", 1) for line in lines if line.strip())


def changes(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """name -> (version before, version after) for every package added, removed or changed."""
    names = sorted(set(before) | set(after))
    return {n: (before.get(n), after.get(n)) for n in names if before.get(n) != after.get(n)}


def describe(changed: dict[str, tuple[str | None, str | None]]) -> str:
    moved = [f"  {n} {old} -> {new}" for n, (old, new) in changed.items() if old and new]
    added = [f"{n} {new}" for n, (old, new) in changed.items() if not old]
    removed = [n for n, (old, new) in changed.items() if not new]
    lines = [f"The install changed {len(moved)} of Colab's packages:", *moved]
    lines.append(f"and added {len(added)}: {', '.join(added)}" if added else "and added none")
    if removed:
        lines.append(f"and removed {len(removed)}: {', '.join(removed)}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv == ["--changes"]:
        print(describe(changes(read_snapshot(BEFORE), read_snapshot(AFTER))))
        return 0
    write_snapshot(BEFORE, installed())
    for args in pip_installs_from_checkout():
        print("pip", " ".join(args), flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", *args])
    write_snapshot(AFTER, installed())
    print(describe(changes(read_snapshot(BEFORE), read_snapshot(AFTER))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run Python code in this process, killed with SIGKILL in the middle of writing one file: what Colab does to a
runtime that times out. Used by tests as `python tests/kill_during_write.py NAME WRITES CODE`:

- NAME: the file name whose atomic write (nbkit.core.files.atomic_file) is cut; `WRITES` write calls reach the
  file first, then the process kills itself — a fixed moment, not a timer;
- NAME ending in "/": a folder written with atomic_folder, killed once the block has written into it
  (`WRITES` is ignored).
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import nbkit.core.files as files

NAME, WRITES, CODE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
atomic_file, atomic_folder = files.atomic_file, files.atomic_folder


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class DyingFile:
    """Passes writes through, flushed to disk, and kills the process after the WRITES-th."""

    def __init__(self, fh):
        self.fh, self.writes = fh, 0

    def write(self, data):
        self.fh.write(data)
        self.writes += 1
        if self.writes >= WRITES:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            die()

    def __getattr__(self, name):
        return getattr(self.fh, name)


@contextmanager
def dying_file(path, binary=False):
    with atomic_file(path, binary) as fh:
        yield DyingFile(fh) if Path(path).name == NAME else fh


@contextmanager
def dying_folder(path):
    with atomic_folder(path) as folder:
        yield folder
        if f"{Path(path).name}/" == NAME:
            die()


files.atomic_file, files.atomic_folder = dying_file, dying_folder
for module in list(sys.modules.values()):  # modules that imported the helpers by name
    if getattr(module, "__name__", "").startswith("nbkit.") and getattr(module, "atomic_folder", None) is atomic_folder:
        module.atomic_folder = dying_folder
exec(CODE)
print("the write was not reached", file=sys.stderr)
sys.exit(3)

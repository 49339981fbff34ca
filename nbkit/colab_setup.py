"""After the notebooks' install cell on Colab: did pip change a package this session had already imported?

A Colab kernel starts with some of Colab's own packages imported. When installing the kit upgrades one of
them (trl needs newer datasets and pyarrow than Colab ships), the kernel keeps running the old code from
memory while the files on disk are the new release: errors then appear much later and make no sense.
So the install cell ends with `stop_if_restart_needed()`, which compares each imported package's
`__version__` with the version now installed and stops the notebook with a plain instruction.

Standard library only (plus `packaging` when present), so it runs right after pip, before anything
else the install may have changed gets imported.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata

from nbkit.core.errors import RestartRequired

RESTART = "Runtime > Restart session, then run the notebook from the top"


@dataclass(frozen=True)
class ChangedWhileLoaded:
    distribution: str  # as pip names it: "pyarrow", "huggingface-hub"
    loaded: str  # the imported module's __version__
    installed: str  # what importlib.metadata finds on disk now

    def __str__(self) -> str:
        return (
            f"{self.distribution} was {_direction(self.loaded, self.installed)} {self.loaded} -> "
            f"{self.installed} while this session had it loaded"
        )


def changed_while_loaded(
    modules: Mapping[str, object] | None = None,
    distributions: Mapping[str, list[str]] | None = None,
    installed_version: Callable[[str], str] | None = None,
) -> list[ChangedWhileLoaded]:
    """Imported top-level packages whose installed version is no longer the one in memory.

    modules: defaults to sys.modules; distributions: import name -> distribution names (defaults to
    importlib.metadata.packages_distributions()); installed_version: defaults to importlib.metadata.version.
    Modules without a string `__version__` are skipped: there is nothing to compare.
    """
    importlib.invalidate_caches()  # pip ran in another process: read the metadata on disk afresh
    modules = sys.modules if modules is None else modules
    distributions = metadata.packages_distributions() if distributions is None else distributions
    installed_version = installed_version or metadata.version
    found: dict[str, ChangedWhileLoaded] = {}
    for name, module in sorted(modules.items()):
        loaded = getattr(module, "__version__", None)
        if "." in name or not isinstance(loaded, str):
            continue
        for dist in distributions.get(name, []):
            try:
                installed = installed_version(dist)
            except metadata.PackageNotFoundError:
                continue
            if dist not in found and not _same_release(loaded, installed):
                found[dist] = ChangedWhileLoaded(dist, loaded, installed)
    return sorted(found.values(), key=lambda change: change.distribution.lower())


def restart_message(changes: list[ChangedWhileLoaded]) -> str:
    lines = [f"{change}." for change in changes]
    return "\n".join(lines + [f"The old code is still in memory: {RESTART}."])


def stop_if_restart_needed(**kwargs) -> None:
    """Raise RestartRequired naming each package the install changed under the running kernel."""
    changes = changed_while_loaded(**kwargs)
    if changes:
        raise RestartRequired(restart_message(changes))
    print("The kit is installed; no package this session had already imported changed version.")


def _same_release(loaded: str, installed: str) -> bool:
    """Equal versions; a few packages report a shorter one than their distribution (cv2 4.10.0 is
    opencv-python 4.10.0.84), which counts as the same release."""
    if loaded == installed or installed.startswith(loaded + "."):
        return True
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return False
    try:
        return Version(loaded) == Version(installed)
    except InvalidVersion:
        return False


def _direction(loaded: str, installed: str) -> str:
    try:
        from packaging.version import Version

        older, newer = Version(loaded), Version(installed)
    except (ImportError, ValueError):  # no packaging, or a version it cannot read (InvalidVersion)
        return "changed"  # say only that it changed
    return "upgraded" if newer > older else "downgraded"

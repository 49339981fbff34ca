"""The install cell's last step: stop with "restart the session" when pip changed a package already imported."""

from __future__ import annotations

import types
from importlib import metadata

import pytest

from nbkit.colab_setup import RestartRequired, changed_while_loaded, restart_message, stop_if_restart_needed
from nbkit.core.errors import NbkitError

# A Colab kernel after the kit's install: pyarrow and huggingface_hub were imported before pip upgraded them.
ON_DISK = {
    "pyarrow": "24.0.0",
    "huggingface-hub": "1.35.0",
    "numpy": "2.1.3",
    "opencv-python": "4.10.0.84",
    "transformers": "5.15.0",
}
DISTRIBUTIONS = {
    "pyarrow": ["pyarrow"],
    "huggingface_hub": ["huggingface-hub"],
    "numpy": ["numpy"],
    "cv2": ["opencv-python"],
    "transformers": ["transformers"],
    "gone": ["removed-dist"],
}


def module(name, version=None):
    mod = types.ModuleType(name)
    if version is not None:
        mod.__version__ = version
    return mod


def installed_version(dist):
    if dist not in ON_DISK:
        raise metadata.PackageNotFoundError(dist)
    return ON_DISK[dist]


def check(modules):
    return changed_while_loaded(modules=modules, distributions=DISTRIBUTIONS, installed_version=installed_version)


def test_names_each_package_upgraded_under_the_running_kernel():
    modules = {
        "pyarrow": module("pyarrow", "18.1.0"),
        "huggingface_hub": module("huggingface_hub", "1.27.0"),
        "numpy": module("numpy", "2.1.3"),
        "transformers": module("transformers", "5.15.0"),
    }
    changes = check(modules)
    assert [(c.distribution, c.loaded, c.installed) for c in changes] == [
        ("huggingface-hub", "1.27.0", "1.35.0"),
        ("pyarrow", "18.1.0", "24.0.0"),
    ]
    assert str(changes[1]) == "pyarrow was upgraded 18.1.0 -> 24.0.0 while this session had it loaded"


def test_the_message_says_what_to_do():
    message = restart_message(check({"pyarrow": module("pyarrow", "18.1.0")}))
    assert message.splitlines() == [
        "pyarrow was upgraded 18.1.0 -> 24.0.0 while this session had it loaded.",
        "The old code is still in memory: Runtime > Restart session, then run the notebook from the top.",
    ]


def test_a_downgrade_is_named_as_one():
    (change,) = check({"numpy": module("numpy", "2.2.0")})
    assert str(change).startswith("numpy was downgraded 2.2.0 -> 2.1.3")


def test_unchanged_unversioned_submodules_and_unknown_packages_are_not_reported():
    modules = {
        "numpy": module("numpy", "2.1.3"),
        "pyarrow.lib": module("pyarrow.lib", "18.1.0"),
        "google": module("google"),
        "gone": module("gone", "1.0"),
        "mine": module("mine", "0.1"),
        "odd": types.SimpleNamespace(__version__=(1, 2)),
        "blocked": None,
    }
    assert check(modules) == []


def test_a_module_reporting_a_shorter_version_than_its_distribution_is_the_same_release():
    assert check({"cv2": module("cv2", "4.10.0")}) == []


def test_stop_if_restart_needed_raises_a_kit_error_or_says_all_is_well(capsys):
    kwargs = {"distributions": DISTRIBUTIONS, "installed_version": installed_version}
    with pytest.raises(RestartRequired, match="pyarrow was upgraded 18.1.0 -> 24.0.0") as raised:
        stop_if_restart_needed(modules={"pyarrow": module("pyarrow", "18.1.0")}, **kwargs)
    assert isinstance(raised.value, NbkitError) and "Restart session" in str(raised.value)
    stop_if_restart_needed(modules={"numpy": module("numpy", "2.1.3")}, **kwargs)
    assert "no package this session had already imported changed version" in capsys.readouterr().out


def test_an_untouched_environment_needs_no_restart():
    """No false alarms: in this environment nothing was reinstalled, so every loaded __version__ must match."""
    import yaml  # noqa: F401 - a few packages with __version__

    assert changed_while_loaded() == []

"""nbkit: fine-tune language models with QLoRA from guided notebooks.

The core never imports ipywidgets or IPython.display, so it runs in scripts, tests,
papermill and accelerate launches; the panels live in `nbkit.widgets`.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

# Installed from a wheel, the panels are nbkit/widgets/. In a checkout they are widgets/ beside this folder
# (pyproject.toml maps them): an editable install knows that, but a wheel's nbkit shadowed by the checkout's
# (Python started in the repository root, as a notebook kernel there is) or a checkout on sys.path does not.
# This finder answers for `nbkit.widgets` alone, and only then; nothing is imported until it is asked for.
_CHECKOUT_WIDGETS = Path(__file__).resolve().parent.parent / "widgets"


class _CheckoutWidgetsFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "nbkit.widgets":
            return None
        return importlib.util.spec_from_file_location(
            name, _CHECKOUT_WIDGETS / "__init__.py", submodule_search_locations=[str(_CHECKOUT_WIDGETS)]
        )


if (
    not (Path(__file__).resolve().parent / "widgets").is_dir()
    and (_CHECKOUT_WIDGETS / "__init__.py").is_file()
    and not any(isinstance(f, _CheckoutWidgetsFinder) for f in sys.meta_path)
):
    sys.meta_path.append(_CheckoutWidgetsFinder())

"""Panel for notebook 03: fractions, seed and stratification."""

from __future__ import annotations

from nbkit.data.split import SplitConfig
from nbkit.widgets.panel import ConfigForm, css


def split_panel(config: SplitConfig) -> ConfigForm:
    form = ConfigForm(
        config,
        [
            "validation_fraction",
            "test_fraction",
            "seed",
            "stratify_by",
            "group_by",
            "near_duplicate_threshold",
            "drop_leaked",
        ],
        title="Hold data out: validation watches training, test judges it",
    )
    css(form.box, "nbkit-split-panel")
    return form

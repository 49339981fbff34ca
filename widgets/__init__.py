"""ipywidget panels for the nbkit notebooks (source in widgets/, imported as nbkit.widgets).

Panels edit a stage's config in place and show progress; the work is done by nbkit.
"""

from nbkit.widgets.collect import CollectPanel, ExampleEditor, RejectedFixer, collect_results
from nbkit.widgets.evaluate import comparison_viewer, eval_panel, runs_figure
from nbkit.widgets.format import format_panel, mask_viewer
from nbkit.widgets.pager import Pager, chat_preview
from nbkit.widgets.panel import ConfigForm, Panel
from nbkit.widgets.playground import ChatPlayground
from nbkit.widgets.prefer import PreferenceRatingPanel, PreferPanel, pairs_viewer, prefer_panel, preference_rating
from nbkit.widgets.quality import QualityPanel, quality_figures, quality_panel, show_quality, verdict_html
from nbkit.widgets.rating import RatingPanel
from nbkit.widgets.split import split_panel
from nbkit.widgets.train import LiveMonitor, TrainPanel, loss_curves_figure, show_runs, training_progress

__all__ = [
    "ChatPlayground",
    "CollectPanel",
    "ConfigForm",
    "ExampleEditor",
    "LiveMonitor",
    "Pager",
    "Panel",
    "PreferPanel",
    "PreferenceRatingPanel",
    "pairs_viewer",
    "prefer_panel",
    "preference_rating",
    "QualityPanel",
    "RatingPanel",
    "RejectedFixer",
    "TrainPanel",
    "chat_preview",
    "collect_results",
    "comparison_viewer",
    "eval_panel",
    "format_panel",
    "mask_viewer",
    "quality_figures",
    "quality_panel",
    "loss_curves_figure",
    "runs_figure",
    "show_quality",
    "show_runs",
    "split_panel",
    "training_progress",
    "verdict_html",
]

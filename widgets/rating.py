"""Panel for notebook 05: rate base vs. tuned answers blind, one test prompt at a time.

The two answers appear as "A" and "B" in an order drawn per prompt; nothing visible says
which model wrote which. Each click is saved at once (runs/<run_id>/eval/ratings.jsonl), so
closing the notebook loses nothing and re-opening continues with the prompts not yet rated.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from nbkit.core.errors import NbkitError
from nbkit.core.workspace import Workspace
from nbkit.evaluate import ratings
from nbkit.widgets.collect import guarded
from nbkit.widgets.panel import Panel, css

ANSWER_STYLE = "background:#f5f5f5;border-radius:8px;padding:6px 10px;margin:4px 0;white-space:pre-wrap"


def pair_html(pair: dict[str, Any], show_reference: bool = True) -> str:
    """Prompt, optional reference and the answers A and B — and nothing about which model is which."""
    parts = [
        f'<div class="nbkit-rating-prompt" style="background:#e3f2fd;border-radius:8px;padding:6px 10px;'
        f'white-space:pre-wrap"><b>prompt</b><br>{html.escape(pair["prompt"])}</div>'
    ]
    if show_reference and pair.get("reference"):
        parts.append(
            f'<div class="nbkit-rating-reference" style="color:#555;padding:4px 10px;white-space:pre-wrap">'
            f"<b>reference</b> {html.escape(pair['reference'])}</div>"
        )
    for side in ("A", "B"):
        parts.append(
            f'<div class="nbkit-rating-answer nbkit-rating-answer-{side.lower()}" style="{ANSWER_STYLE}">'
            f"<b>{side}</b><br>{html.escape(pair[side])}</div>"
        )
    return "".join(parts)


def choice_buttons(status: widgets.HTML, prefix: str, rate) -> dict[str, widgets.Button]:
    """ "A is better", "Tie", "B is better": each calls rate(choice), its errors shown in `status` (classes
    `{prefix}-button` and `{prefix}-a|tie|b` for tests)."""
    buttons = {}
    for choice, label in (("A", "A is better"), ("tie", "Tie"), ("B", "B is better")):
        button = css(
            widgets.Button(description=label, layout=widgets.Layout(width="120px")),
            f"{prefix}-button",
            f"{prefix}-{choice.lower()}",
        )
        button.on_click(guarded(status, lambda choice=choice: rate(choice)))
        buttons[choice] = button
    return buttons


class RatingPanel(Panel):
    """Blind A/B rating of runs/<run_id>/eval/predictions.jsonl (written by `evaluate`).

    `live_summary=False` hides the running win rate until every prompt is rated: watching
    it move after each click can tell a careful rater which side was the tuned model.
    """

    def __init__(
        self, workspace: str, run_id: str = "", *, seed: int = 0, show_reference: bool = True, live_summary: bool = True
    ) -> None:
        self.run_id, predictions = ratings.load_predictions(workspace, run_id)
        self.run_dir = Workspace(workspace).run_dir(self.run_id)
        self.show_reference, self.live_summary = show_reference, live_summary
        self.pairs = ratings.pairs_from_predictions(predictions, seed)
        self.ratings = ratings.load_ratings(self.run_dir)
        self.queue = ratings.unrated(self.pairs, self.ratings)
        self.current: dict[str, Any] | None = None

        self.progress = css(widgets.Label(""), "nbkit-rating-progress")
        self.view = css(widgets.HTML(""), "nbkit-rating-pair")
        self.summary = css(widgets.HTML(""), "nbkit-rating-summary")
        self.status = css(widgets.HTML(""), "nbkit-rating-status")
        self.buttons = choice_buttons(self.status, "nbkit-rating", self.rate)
        title = widgets.HTML("<b>Which answer is better? (the models are hidden behind A and B)</b>")
        self.box = css(
            widgets.VBox(
                [title, self.progress, self.view, widgets.HBox(list(self.buttons.values())), self.summary, self.status]
            ),
            "nbkit-rating",
        )
        self.next_pair()

    def rate(self, choice: str) -> dict[str, Any]:
        """Save the verdict on the pair shown and move to the next one."""
        if self.current is None:
            raise NbkitError("every prompt is already rated — nothing to save.")
        record = ratings.save_rating(self.run_dir, self.current, choice)
        self.ratings.append(record)
        self.status.value = ""
        self.next_pair()
        return record

    def next_pair(self) -> None:
        self.current = self.queue.pop(0) if self.queue else None
        done = len(self.pairs) - len(self.queue) - (self.current is not None)
        self.progress.value = f"rated {done} of {len(self.pairs)}"
        if self.current is None:
            self.view.value = (
                f"<i>All {len(self.pairs)} prompts are rated.</i>"
                if self.pairs
                else "<i>No predictions to rate — run the evaluate cell first.</i>"
            )
        else:
            self.view.value = pair_html(self.current, self.show_reference)
        for button in self.buttons.values():
            button.disabled = self.current is None
        self.show_summary()

    def show_summary(self) -> None:
        if self.live_summary or self.current is None:
            text = ratings.summary_line(ratings.summarize(self.ratings))
        else:
            text = "summary shown when every prompt is rated"
        self.summary.value = f'<span style="color:#333">{html.escape(text)}</span>'

    def result(self) -> dict[str, Any]:
        """The summary of every rating saved for this run (all sessions)."""
        return ratings.summarize(self.ratings)

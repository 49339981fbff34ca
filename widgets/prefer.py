"""Panels for notebook 06: the settings of the pairs and of the preference run, a rating panel for two sampled
answers to a training prompt, and a viewer of the pairs (prompt, chosen vs. rejected, source)."""

from __future__ import annotations

import html
import json
from typing import Any

import ipywidgets as widgets

from nbkit.core.errors import NbkitError
from nbkit.train.prefer.config import SOURCES, PairsConfig
from nbkit.train.prefer.sampled import candidates_to_rate, save_preference_rating
from nbkit.widgets.pager import Pager, bubble_html
from nbkit.widgets.panel import ConfigForm, Panel, css
from nbkit.widgets.rating import choice_buttons, pair_html

ANSWER_COLOURS = {"chosen": "#e8f5e9", "rejected": "#ffebee"}


class PreferPanel(Panel):
    """Two forms: where the pairs come from (PairsConfig) and how the preference run trains (PreferConfig).

    The settings both configs have (parent_run, temperature, seed) are shown once, in the run's form, and copied
    into the pairs config as they change: one SFT run, one sampling temperature, one seed for the whole notebook.
    """

    SHARED = ("parent_run", "temperature", "seed")

    def __init__(self, pairs_config: PairsConfig, config: Any) -> None:
        self.pairs = ConfigForm(
            pairs_config,
            ["sources", "files", "max_prompts", "samples_per_prompt", "rate_prompts"],
            title="Preference pairs",
            advanced=["top_p", "max_new_tokens", "min_margin"],
            advanced_title="Sampling for the metric source",
        )
        self.pairs.inputs["sources"].placeholder = "one per line: " + ", ".join(SOURCES)
        main = ["method", "parent_run", "max_steps", "learning_rate", "beta"]
        rest = [name for name in config.to_dict() if name not in main + ["workspace"]]
        self.training = ConfigForm(
            config, main, choices={"method": ("dpo", "grpo")}, title="Preference run", advanced=rest
        )
        for name in self.SHARED:
            self.training.inputs[name].observe(
                lambda _change, name=name: setattr(pairs_config, name, getattr(config, name)), names="value"
            )
        self.box = css(widgets.VBox([self.pairs.box, self.training.box]), "nbkit-prefer-panel")


def prefer_panel(pairs_config: PairsConfig, config: Any) -> PreferPanel:
    return PreferPanel(pairs_config, config)


def answer_html(pair: dict[str, Any], side: str) -> str:
    return (
        f'<div class="nbkit-pair-{side}" style="background:{ANSWER_COLOURS[side]};border-radius:8px;'
        f'padding:6px 10px;margin:4px 0;white-space:pre-wrap"><b>{side}</b><br>'
        f"{html.escape(pair[side][0]['content'])}</div>"
    )


def preference_html(pair: dict[str, Any]) -> str:
    """A pair as the trainer sees it: the prompt's turns, the chosen answer (green), the rejected one (red),
    and where the pair came from."""
    prompt = "".join(bubble_html(m, f"nbkit-msg-{m['role']}") for m in pair["prompt"])
    origin = json.dumps(pair.get("origin", {}), ensure_ascii=False)
    return (
        f'<div class="nbkit-pair-source"><b>source</b> {html.escape(pair["source"])}</div>{prompt}'
        f"{answer_html(pair, 'chosen')}{answer_html(pair, 'rejected')}"
        f'<div style="color:#888;font-size:small">{html.escape(origin)}</div>'
    )


def pairs_viewer(pairs: list[dict[str, Any]]) -> Pager:
    return Pager(pairs, preference_html, f"Preference pairs ({len(pairs)})", name="pairs")


class PreferenceRatingPanel(Panel):
    """Which of two sampled answers to a training prompt is better? Each click is appended at once to
    data/preferences/ratings.jsonl, which `build_pairs` turns into pairs (ties are kept there, but give none)."""

    def __init__(self, workspace: str, candidates: list[dict[str, Any]]) -> None:
        self.workspace, self.queue, self.total = workspace, list(candidates), len(candidates)
        self.saved: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        self.progress = css(widgets.Label(""), "nbkit-prefrating-progress")
        self.view = css(widgets.HTML(""), "nbkit-prefrating-pair")
        self.status = css(widgets.HTML(""), "nbkit-prefrating-status")
        self.buttons = choice_buttons(self.status, "nbkit-prefrating", self.rate)
        title = widgets.HTML("<b>Which answer is better? Both come from the SFT model (two samples).</b>")
        self.box = css(
            widgets.VBox([title, self.progress, self.view, widgets.HBox(list(self.buttons.values())), self.status]),
            "nbkit-prefrating",
        )
        self.next_pair()

    def rate(self, choice: str) -> dict[str, Any]:
        if self.current is None:
            raise NbkitError("every sampled pair is rated — build the pairs in the next cell.")
        record = save_preference_rating(self.workspace, self.current, choice)
        self.saved.append(record)
        self.status.value = ""
        self.next_pair()
        return record

    def next_pair(self) -> None:
        self.current = self.queue.pop(0) if self.queue else None
        self.progress.value = f"rated {len(self.saved)} of {self.total}"
        if self.current is None:
            self.view.value = (
                f"<i>All {self.total} pairs are rated.</i>"
                if self.total
                else "<i>Nothing to rate: no two sampled answers differed.</i>"
            )
        else:
            self.view.value = pair_html({**self.current, "prompt": self.current["prompt"][-1]["content"]})
        for button in self.buttons.values():
            button.disabled = self.current is None


def preference_rating(pairs_config: PairsConfig, interactive: bool = True) -> PreferenceRatingPanel | None:
    """06's rating panel over `rate_prompts` training prompts (two answers sampled from the SFT run each), shown
    when running interactively; under papermill (or with rate_prompts = 0) nothing is sampled or shown."""
    if not interactive or not pairs_config.rate_prompts:
        return None
    panel = PreferenceRatingPanel(pairs_config.workspace, candidates_to_rate(pairs_config))
    panel.show(interactive)
    return panel

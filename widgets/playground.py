"""Panel for notebook 05: chat with the tuned model and promote good (or corrected) exchanges to the dataset.

The model loads on the first Send (a few seconds; the status says so). The reply streams into
the transcript, redrawn at most ~10 times a second so the browser keeps up. The last reply is
copied into an editable box: fix it there, then "Promote to dataset" appends the exchange to
data/manual.jsonl, which the next collect run (01) reads; a fixed answer keeps the model's own beside it
(`model_answer`), which stage 06 turns into a preference pair. An edited reply also becomes the
history the next message is answered from.
"""

from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as widgets

from nbkit.core.runs import resolve_run
from nbkit.data.manual import promote
from nbkit.model.generation import SamplingSettings, conversation, stream_reply
from nbkit.model.loader import load_chat_model
from nbkit.widgets.collect import guarded
from nbkit.widgets.pager import bubble_html
from nbkit.widgets.panel import ConfigForm, Panel, css, message_html

TEXTAREA = {"layout": widgets.Layout(width="640px"), "style": {"description_width": "120px"}}


def transcript_html(messages: list[dict[str, str]], partial: str | None = None) -> str:
    """The conversation as bubbles; `partial` is a reply still being generated."""
    shown = list(messages) + ([{"role": "assistant", "content": partial + " ▌"}] if partial is not None else [])
    if not shown:
        return '<i style="color:#888">Type a message and press Send.</i>'
    return "".join(bubble_html(m, f"nbkit-playground-msg nbkit-playground-msg-{m['role']}") for m in shown)


class ChatPlayground(Panel):
    """Chat with runs/<run_id>'s adapter (empty run_id = the latest run)."""

    def __init__(
        self, workspace: str, run_id: str = "", *, settings: SamplingSettings | None = None, min_interval: float = 0.1
    ) -> None:
        self.workspace = workspace
        self.run_id = resolve_run(workspace, run_id)
        self.config = settings or SamplingSettings()
        self.min_interval = min_interval  # seconds between transcript redraws while streaming
        self.model = self.tokenizer = None
        self.messages: list[dict[str, str]] = []  # user/assistant turns; the system prompt is kept apart
        self.redraws = 0

        self.status = css(
            widgets.HTML(message_html(f"run {self.run_id} — the model loads on the first Send")),
            "nbkit-playground-status",
        )
        self.system = css(
            widgets.Textarea(value="", description="system prompt", placeholder="optional", **TEXTAREA),
            "nbkit-playground-system",
        )
        self.settings = ConfigForm(
            self.config, ["max_new_tokens", "temperature", "top_p"], title="Sampling (temperature 0 = greedy)"
        )
        self.transcript = css(widgets.HTML(transcript_html([])), "nbkit-playground-transcript")
        self.user = css(widgets.Textarea(value="", description="your message", **TEXTAREA), "nbkit-playground-user")
        self.send_button = css(widgets.Button(description="Send", button_style="primary"), "nbkit-playground-send")
        self.clear_button = css(widgets.Button(description="New chat"), "nbkit-playground-clear")
        self.answer = css(
            widgets.Textarea(
                value="",
                description="assistant answer",
                placeholder="the last reply appears here; correct it before promoting",
                **TEXTAREA,
            ),
            "nbkit-playground-answer",
        )
        self.promote_button = css(widgets.Button(description="Promote to dataset"), "nbkit-playground-promote")
        self.promote_status = css(widgets.HTML(""), "nbkit-playground-promote-status")
        self.send_button.on_click(guarded(self.status, self.send))
        self.clear_button.on_click(guarded(self.status, self.clear))
        self.promote_button.on_click(guarded(self.promote_status, self.promote))
        self.box = css(
            widgets.VBox(
                [
                    widgets.HTML(f"<b>Chat with run {html.escape(self.run_id)}</b>"),
                    self.system,
                    self.settings.box,
                    self.transcript,
                    self.user,
                    widgets.HBox([self.send_button, self.clear_button]),
                    self.status,
                    self.answer,
                    self.promote_button,
                    self.promote_status,
                ]
            ),
            "nbkit-playground",
        )

    # -- actions ---------------------------------------------------------------------------
    def ensure_model(self) -> None:
        if self.model is None:
            self.status.value = message_html("loading model…")
            started = time.monotonic()
            self.model, self.tokenizer = load_chat_model(self.workspace, self.run_id)
            self.status.value = message_html(f"model loaded in {time.monotonic() - started:.1f} s")

    def history(self) -> list[dict[str, str]]:
        """The turns so far, with the last reply as edited in the answer box."""
        turns = [dict(m) for m in self.messages]
        if turns and turns[-1]["role"] == "assistant" and self.answer.value.strip():
            turns[-1]["content"] = self.answer.value.strip()
        return turns

    def send(self) -> str:
        """Answer the message in the input box; returns the reply."""
        text = self.user.value.strip()
        if not text:
            self.status.value = message_html("type a message first", "error")
            return ""
        self.send_button.disabled = True
        try:
            self.ensure_model()
            self.messages = self.history() + [{"role": "user", "content": text}]
            self.user.value = ""
            self.status.value = message_html("generating…")
            reply, last, started = "", 0.0, time.monotonic()
            try:
                for piece in stream_reply(
                    self.model,
                    self.tokenizer,
                    self.messages,
                    system=self.system.value,
                    max_new_tokens=self.config.max_new_tokens,
                    temperature=self.config.temperature,
                    top_p=self.config.top_p,
                ):
                    reply += piece
                    if time.monotonic() - last >= self.min_interval:
                        last = time.monotonic()
                        self._draw(reply)
            except Exception:
                self.messages.pop()  # the message was not answered: give it back to edit and resend
                self.user.value = text
                self._draw(None)
                raise
            reply = reply.strip()
            self.messages.append({"role": "assistant", "content": reply})
            self.answer.value = reply
            self._draw(None)
            self.status.value = message_html(f"replied in {time.monotonic() - started:.1f} s", "ok")
            self.promote_status.value = ""
            return reply
        finally:
            self.send_button.disabled = False

    def _draw(self, partial: str | None) -> None:
        self.redraws += 1
        self.transcript.value = transcript_html(conversation(self.messages, self.system.value), partial)

    def clear(self) -> None:
        self.messages = []
        self.answer.value = self.promote_status.value = ""
        self._draw(None)

    def promote(self) -> Any:
        """Append the exchange (with the edited answer) to data/manual.jsonl; show where, or why not. A corrected
        answer keeps the model's own beside it (`model_answer`), for stage 06's preference pairs."""
        from nbkit.core.messages import RecordError

        turns = self.history()
        if not turns or turns[-1]["role"] != "assistant":
            self.promote_status.value = message_html("nothing to promote yet — send a message first", "error")
            return None
        try:
            path, line = promote(
                self.workspace,
                conversation(turns, self.system.value),
                self.run_id,
                model_answer=self.messages[-1]["content"],
            )
        except RecordError as err:
            self.promote_status.value = message_html(f"not saved: {err}", "error")
            return None
        self.promote_status.value = message_html(
            f"saved to {path} line {line} — the next collect run (01) adds it to the dataset", "ok"
        )
        return path, line

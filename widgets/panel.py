"""Shared panel parts: a Panel base that displays as its box, and a form over a config dataclass.

Panels only edit configs and show progress; the work itself is done by nbkit. Works with
ipywidgets 7.7 (Colab) and 8.x (JupyterLab).
"""

from __future__ import annotations

import dataclasses
import html
import typing
from typing import Any

import ipywidgets as widgets

from nbkit.core.errors import ConfigError


class Panel:
    """Owns `self.box`; displaying the panel displays the box. `css` names give tests stable hooks."""

    box: widgets.Box

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.box)

    def _repr_mimebundle_(self, **kwargs: Any):
        if hasattr(self.box, "_repr_mimebundle_"):  # ipywidgets 8
            return self.box._repr_mimebundle_(**kwargs)
        # ipywidgets 7 (Colab) has no _repr_mimebundle_; this is the bundle its display sends.
        return {
            "text/plain": repr(self.box),
            "application/vnd.jupyter.widget-view+json": {
                "version_major": 2,
                "version_minor": 0,
                "model_id": self.box._model_id,
            },
        }

    def show(self, interactive: bool = True) -> None:
        """Display the panel when running interactively; do nothing under papermill."""
        if interactive:
            self._ipython_display_()


def css(widget: widgets.Widget, *classes: str) -> widgets.Widget:
    for name in classes:
        widget.add_class(name)
    return widget


def message_html(text: str, kind: str = "info") -> str:
    colour = {"error": "#b00020", "ok": "#1b5e20", "info": "#555"}[kind]
    return f'<div class="nbkit-msg nbkit-{kind}" style="color:{colour}">{html.escape(text)}</div>'


class ConfigForm(Panel):
    """One input per config field; a change is validated on a copy first and applied only if valid.

    The config object is edited in place, so the notebook's later cells see what the user
    chose. Invalid values are shown in red with the field, the problem and the fix.

    `advanced` puts fields in a collapsed section under the others (an Accordion, class
    `nbkit-advanced`): a list of names, or {heading: names} to group them under headings. They
    are inputs like any other (`inputs`, `set`, `refresh`), and the error line stays outside.
    """

    def __init__(
        self,
        config: Any,
        fields: list[str] | None = None,
        choices: dict[str, tuple] | None = None,
        title: str = "",
        advanced: list[str] | dict[str, list[str]] | None = None,
        advanced_title: str = "Advanced",
    ) -> None:
        self.config = config
        self.inputs: dict[str, widgets.Widget] = {}
        self.error = css(widgets.HTML(""), "nbkit-error")
        self._hints = typing.get_type_hints(type(config))
        self._helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(config)}
        self._choices = choices or {}
        groups = advanced if isinstance(advanced, dict) else {"": list(advanced or [])}
        tucked = [name for names in groups.values() for name in names]
        if not fields:
            fields = [f.name for f in dataclasses.fields(config) if f.name not in tucked]
        if set(fields) & set(tucked):  # one input per field: two would disagree after a refresh
            raise ValueError(f"ConfigForm: {sorted(set(fields) & set(tucked))} are in both fields and advanced")
        header = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        rows = [self._row(name) for name in fields]
        self.advanced: widgets.Accordion | None = None
        if tucked:
            inner = []
            for heading, names in groups.items():
                if heading:
                    inner.append(css(widgets.HTML(f"<b>{html.escape(heading)}</b>"), "nbkit-advanced-heading"))
                inner += [self._row(name) for name in names]
            # selected_index=None: collapsed (ipywidgets 7 opens the first page by default);
            # set_title works on 7.x and 8.x alike (8.x also has `titles=`, 7.x does not).
            self.advanced = css(
                widgets.Accordion(children=[widgets.VBox(inner)], selected_index=None), "nbkit-advanced"
            )
            self.advanced.set_title(0, advanced_title)
            rows.append(self.advanced)
        self.box = css(widgets.VBox(header + rows + [self.error]), "nbkit-form")

    def _row(self, name: str) -> widgets.HBox:
        """The input for one field, wired to `set`, with its help text beside it."""
        control = self._control(name, self._hints[name], getattr(self.config, name), self._choices.get(name))
        css(control, "nbkit-field", f"nbkit-field-{name}")
        control.observe(lambda change, name=name: self.set(name, change["new"]), names="value")
        self.inputs[name] = control
        return widgets.HBox(
            [control, widgets.HTML(f'<span style="color:#666">{html.escape(self._helps[name])}</span>')]
        )

    @staticmethod
    def _control(name: str, hint: Any, value: Any, choices: tuple | None) -> widgets.Widget:
        common = {"description": name, "style": {"description_width": "170px"}, "layout": widgets.Layout(width="420px")}
        if choices:
            return widgets.Dropdown(options=list(choices), value=value, **common)
        if hint is bool:
            return widgets.Checkbox(value=value, indent=False, **common)
        if hint is int:
            return widgets.IntText(value=value, **common)
        if hint is float:
            return widgets.FloatText(value=value, **common)
        if hint is list:
            return widgets.Textarea(value="\n".join(map(str, value)), placeholder="one path or glob per line", **common)
        return widgets.Text(value=str(value), **common)

    def set(self, name: str, value: Any) -> bool:
        """Apply one field if the whole config stays valid; return whether it was applied."""
        if isinstance(getattr(self.config, name), list) and isinstance(value, str):
            value = [line.strip() for line in value.splitlines() if line.strip()]
        try:
            candidate = dataclasses.replace(self.config, **{name: value})
        except ConfigError as err:
            self.error.value = message_html(str(err), "error")
            return False
        setattr(self.config, name, getattr(candidate, name))
        self.error.value = ""
        return True

    def load(self, other: Any) -> None:
        """Take every field of `other` (a valid config of the same type) and show it."""
        for f in dataclasses.fields(self.config):
            setattr(self.config, f.name, getattr(other, f.name))
        self.error.value = ""
        self.refresh()

    def refresh(self) -> None:
        """Put the config's current values back into the inputs (after a preset, say)."""
        for name, control in self.inputs.items():
            value = getattr(self.config, name)
            control.value = "\n".join(map(str, value)) if isinstance(value, list) else value

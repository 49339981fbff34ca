"""The data quality screen for notebook 02: the verdict, the figures, and a pager over near-duplicates.

`quality_figures` returns plain plotly figures (headless runs call `fig.show()` on them);
`quality_panel` puts the same figures in tabs. In JupyterLab they are `go.FigureWidget`s
(anywidget-based since plotly 6); on Colab, where FigureWidget does not render, each figure
is an HTML widget holding the figure's own page in an iframe.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from nbkit.core.workspace import Workspace
from nbkit.widgets.pager import Pager
from nbkit.widgets.panel import ConfigForm, Panel, css
from nbkit.widgets.train import on_colab

LEVELS = {  # badge text, text colour, background
    "fix": ("FIX", "#b00020", "#fdecea"),
    "warn": ("WARN", "#7a5b00", "#fff8e1"),
    "good": ("OK", "#1b5e20", "#e8f5e9"),
}
FIX_FIELDS = ["redact_pii", "drop_near_duplicates", "near_duplicate_threshold", "replay_guard", "replay_share"]
MAX_MAP_POINTS = 5000  # more points than this make the map slow to draw and no easier to read


def verdict_html(report: dict[str, Any]) -> str:
    """The verdict as a coloured list: one line per finding, with what fixes it."""
    items = []
    for item in report.get("verdict", []):
        badge, colour, background = LEVELS[item["level"]]
        fix = (
            (
                f'<div class="nbkit-quality-fix" style="color:#555;font-size:smaller;margin-left:58px">'
                f"{html.escape(item['fix'])}</div>"
            )
            if item.get("fix") and item["level"] != "good"
            else ""
        )
        items.append(
            f'<div class="nbkit-quality-item nbkit-quality-{item["level"]}" style="background:{background};'
            f'border-left:4px solid {colour};padding:4px 8px;margin:3px 0">'
            f'<span class="nbkit-quality-badge" style="display:inline-block;width:58px;font-weight:bold;'
            f'color:{colour}">{badge}</span>{html.escape(item["message"])}{fix}</div>'
        )
    counts = {level: sum(i["level"] == level for i in report.get("verdict", [])) for level in LEVELS}
    summary = (
        f"<b>Data quality: {report.get('rows', 0)} rows</b> — {counts['fix']} to fix, "
        f"{counts['warn']} to check, {counts['good']} fine"
    )
    return f'<div class="nbkit-quality-verdict">{summary}{"".join(items)}</div>'


# -- figures ------------------------------------------------------------------------------------


def _layout(fig, title: str, **kwargs: Any):
    fig.update_layout(title=title, height=360, margin=dict(l=50, r=10, t=40, b=45), template="plotly_white", **kwargs)
    return fig


def lengths_figure(report: dict[str, Any]):
    """Message length histograms, one bar series per role, on shared bins."""
    import plotly.graph_objects as go

    histogram = report["lengths"]["histogram"]
    edges = histogram["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    fig = go.Figure()
    for role, counts in histogram["counts"].items():
        fig.add_bar(x=centres, y=counts, name=role, opacity=0.65, width=(edges[1] - edges[0]) if edges else None)
    return _layout(
        fig, "Message lengths by role", barmode="overlay", xaxis_title="characters per message", yaxis_title="messages"
    )


def labels_figure(report: dict[str, Any]):
    """Rows per label, with the even share marked."""
    import plotly.graph_objects as go

    labels = report["labels"]
    counts = labels["counts"]
    fig = go.Figure(go.Bar(x=list(counts), y=list(counts.values()), marker_color="#5c6bc0"))
    if counts:
        fig.add_hline(
            y=sum(counts.values()) / len(counts), line_dash="dash", line_color="#888", annotation_text="even share"
        )
    return _layout(fig, f"Label balance ({labels['field']})", xaxis_title=labels["field"], yaxis_title="rows")


def read_map(workspace: str | Path) -> dict[str, Any]:
    path = Workspace(workspace).diversity_map
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def diversity_figure(report: dict[str, Any], points: dict[str, Any]):
    """The diversity map: one dot per row (sampled above MAX_MAP_POINTS), coloured by topic cluster."""
    import plotly.graph_objects as go

    n = len(points.get("x", []))
    step = max(1, -(-n // MAX_MAP_POINTS))
    top_terms = points.get("top_terms") or report["diversity"].get("top_terms", {})
    fig = go.Figure()
    for cluster in sorted(set(points.get("cluster", []))):
        idx = [i for i in range(0, n, step) if points["cluster"][i] == cluster]
        terms = ", ".join(top_terms.get(str(cluster), [])[:3])
        fig.add_scatter(
            x=[points["x"][i] for i in idx],
            y=[points["y"][i] for i in idx],
            mode="markers",
            name=f"{cluster}: {terms}" if terms else str(cluster),
            marker=dict(size=6, opacity=0.7),
            hovertext=[points["text"][i] for i in idx],
            hoverinfo="text",
        )
    title = "Diversity map: rows by topic" + (f" (1 in {step} rows shown)" if step > 1 else "")
    return _layout(
        fig,
        title,
        xaxis=dict(showticklabels=False, zeroline=False),
        yaxis=dict(showticklabels=False, zeroline=False),
        legend_title="cluster: top words",
    )


def quality_figures(report: dict[str, Any], workspace: str | Path) -> list:
    """Plain plotly figures (lengths, label balance if labelled, diversity map if there is one)."""
    return [fig for _, fig in _named_figures(report, workspace)]


def _named_figures(report: dict[str, Any], workspace: str | Path) -> list[tuple[str, Any]]:
    out = [("lengths", lengths_figure(report))]
    if report["labels"]["counts"]:
        out.append(("labels", labels_figure(report)))
    points = read_map(workspace)
    if len(points.get("x", [])) >= 3:
        out.append(("map", diversity_figure(report, points)))
    return out


def figure_widget(fig, name: str, mode: str | None = None) -> widgets.Widget:
    """A figure as a widget: FigureWidget in place, or its HTML page in an iframe (Colab, no anywidget)."""
    mode = mode or ("html" if on_colab() else "widget")
    if mode == "widget":
        try:
            import plotly.graph_objects as go

            return css(go.FigureWidget(fig), "nbkit-quality-fig", f"nbkit-quality-fig-{name}")
        except Exception:  # FigureWidget needs anywidget on plotly >= 6
            pass
    page = fig.to_html(include_plotlyjs="cdn", full_html=True)
    frame = f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:390px;border:0"></iframe>'
    return css(widgets.HTML(frame), "nbkit-quality-fig", f"nbkit-quality-fig-{name}")


# -- near-duplicate pager ---------------------------------------------------------------------------


def cluster_html(cluster: list[dict[str, Any]], size: int | None = None) -> str:
    rows = []
    for i, member in enumerate(cluster):
        where = " ".join(f"{k} {v}" for k, v in member.items() if k not in ("text", "source"))
        note = "kept" if i == 0 else "dropped with drop_near_duplicates"
        rows.append(
            f'<tr><td style="color:#888;white-space:nowrap;padding-right:8px">'
            f"{html.escape(Path(str(member.get('source'))).name)} {html.escape(where)}<br>"
            f'<i>{note}</i></td><td style="white-space:pre-wrap">{html.escape(member["text"])}</td></tr>'
        )
    more = (
        f'<div style="color:#888">… and {size - len(cluster)} more rows in this cluster</div>'
        if size and size > len(cluster)
        else ""
    )
    return f'<table class="nbkit-quality-cluster">{"".join(rows)}</table>{more}'


# -- the panel -------------------------------------------------------------------------------------------


class QualityPanel(Panel):
    """Tabs: verdict (with the fixes formatting can apply), lengths, labels, diversity map, near-duplicates.

    `config` (a FormatConfig) is edited in place by the fix checkboxes, so the formatting cell
    that follows applies what the user ticked here.
    """

    def __init__(
        self, report: dict[str, Any], workspace: str | Path, config: Any = None, mode: str | None = None
    ) -> None:
        self.report, self.config = report, config
        self.verdict = css(widgets.HTML(verdict_html(report)), "nbkit-quality-verdict-box")
        verdict_children: list[widgets.Widget] = [self.verdict]
        self.form = None
        if config is not None and all(hasattr(config, name) for name in FIX_FIELDS):
            self.form = ConfigForm(config, FIX_FIELDS, title="Fixes applied when formatting (next cells)")
            css(self.form.box, "nbkit-quality-fixes")
            verdict_children.append(self.form.box)
        self.figures = {name: figure_widget(fig, name, mode) for name, fig in _named_figures(report, workspace)}
        near = report["near_duplicates"]
        sizes = near.get("cluster_sizes") or [len(c) for c in near["clusters"]]
        title = f"Near-duplicate clusters: {near['n_clusters']} at similarity ≥ {near['threshold']}" + (
            f" (first {len(near['clusters'])} shown)" if near["n_clusters"] > len(near["clusters"]) else ""
        )
        self.duplicates = Pager(
            list(zip(near["clusters"], sizes)), lambda item: cluster_html(*item), title, name="quality-duplicates"
        )
        titles = {"lengths": "Lengths", "labels": "Labels", "map": "Diversity map"}
        tabs = [("Verdict", css(widgets.VBox(verdict_children), "nbkit-quality-tab-verdict"))]
        tabs += [
            (titles[name], css(widgets.VBox([fig]), f"nbkit-quality-tab-{name}")) for name, fig in self.figures.items()
        ]
        tabs.append(("Near-duplicates", css(widgets.VBox([self.duplicates.box]), "nbkit-quality-tab-duplicates")))
        self.tabs = css(widgets.Tab(children=[child for _, child in tabs]), "nbkit-quality-tabs")
        for i, (title, _) in enumerate(tabs):
            self.tabs.set_title(i, title)  # works on ipywidgets 7 and 8
        self.box = css(widgets.VBox([self.tabs]), "nbkit-quality-panel")


def quality_panel(
    report: dict[str, Any], workspace: str | Path, config: Any = None, mode: str | None = None
) -> QualityPanel:
    return QualityPanel(report, workspace, config, mode)


def show_quality(report: dict[str, Any], config: Any, interactive: bool) -> None:
    """In a notebook the panel (whose checkboxes edit `config`); under papermill the verdict as
    text and the figures as static plots."""
    if interactive:
        quality_panel(report, config.workspace, config).show()
        return
    from nbkit.data.quality import verdict_text

    print(verdict_text(report))
    for figure in quality_figures(report, config.workspace):
        figure.show()

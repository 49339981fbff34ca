"""The evaluation report: runs/<run_id>/eval/report.md and report.html, written by evaluate().

Both files hold the same content — metrics base vs. tuned, warnings, the forgetting probe,
best and worst examples — so a run can be reviewed without a notebook. The HTML is
self-contained (inline CSS and an SVG bar chart): it opens offline and can be attached to
a ticket or an e-mail.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from nbkit.core.files import write_text

CLIP = 300  # characters of a prompt or answer shown in the report; the full text is in predictions.jsonl


def _clip(text: Any) -> str:
    text = str(text)
    return text if len(text) <= CLIP else text[:CLIP] + "…"


def _esc(value: Any) -> str:
    """A clipped, HTML-escaped cell."""
    return html.escape(_clip(value))


def _md_cell(text: Any) -> str:
    return _clip(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _metric_rows(summary: dict[str, Any]) -> list[tuple[str, float, float]]:
    return [
        (k, summary["base"][k], summary["tuned"][k]) for k in summary["base"] if k != "loss" and k in summary["tuned"]
    ]


def _example_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    examples = summary.get("examples") or {}
    return [(group, ex) for group in ("best", "worst") for ex in examples.get(group, [])]


def markdown_report(summary: dict[str, Any], predictions: list[dict[str, Any]]) -> str:
    """The report as Markdown."""
    metric = summary["task_metric"]
    out = [
        f"# Evaluation of run {summary['run_id']}",
        "",
        f"Base model `{summary['base_model']}` ({summary.get('method', '')}), {summary['n_test']} test rows, "
        f"headline metric **{metric}**.",
        "",
        "## Metrics",
        "",
        "| metric | base | tuned | change |",
        "|---|---:|---:|---:|",
    ]
    for name, base, tuned in _metric_rows(summary):
        label = f"**{name}**" if name == metric else name
        out.append(f"| {label} | {base:.4f} | {tuned:.4f} | {tuned - base:+.4f} |")
    out += ["", "Perplexity: lower is better; every other metric: higher is better.", ""]
    runaway = summary.get("runaway")
    if runaway:
        out += [
            f"Runaway answers (ran to {runaway['max_new_tokens']} tokens without the end-of-turn token): "
            f"base {runaway['base']}, tuned {runaway['tuned']} of {summary['n_test']}.",
            "",
        ]
    out += ["## Warnings", ""]
    out += [f"- {w}" for w in summary.get("warnings") or []] or ["None."]
    forgetting = summary.get("forgetting")
    out += ["", "## Forgetting probe", ""]
    if forgetting:
        out += [
            f"General questions answered correctly: base {forgetting['base']:.0%}, tuned {forgetting['tuned']:.0%} "
            f"({forgetting['n']} questions): the tuned model {forgetting.get('reading', '')}. {_replay(summary)}",
            "",
            "| question | expected | base | tuned |",
            "|---|---|---|---|",
        ]
        for item in forgetting["items"]:
            mark = {True: "✓", False: "✗"}
            out.append(
                f"| {_md_cell(item['prompt'])} | {_md_cell(item['expected'])} | "
                f"{mark[item['base_correct']]} {_md_cell(item['base'])} | "
                f"{mark[item['tuned_correct']]} {_md_cell(item['tuned'])} |"
            )
    else:
        out.append("Not run (forgetting_probe = False).")
    score_name = summary.get("row_score", "score")
    out += [
        "",
        f"## Best and worst examples (tuned {score_name} per row)",
        "",
        "| group | row | tuned score | prompt | reference | tuned | base |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for group, ex in _example_rows(summary):
        out.append(
            f"| {group} | {ex['index']} | {ex['tuned_score']:.2f} | {_md_cell(ex['prompt'])} | "
            f"{_md_cell(ex['reference'])} | {_md_cell(ex['tuned'])} | {_md_cell(ex['base'])} |"
        )
    out += [
        "",
        f"All {len(predictions)} answers: [predictions.jsonl](predictions.jsonl); "
        "numbers: [summary.json](summary.json).",
        "",
    ]
    return "\n".join(out)


def bar_chart_svg(summary: dict[str, Any]) -> str:
    """Grouped horizontal bars, base vs. tuned, for the 0-1 metrics (perplexity has its own scale)."""
    rows = [(n, b, t) for n, b, t in _metric_rows(summary) if n != "perplexity" and 0 <= b <= 1 and 0 <= t <= 1]
    left, width, bar, gap = 130, 300, 12, 14
    height = len(rows) * (2 * bar + gap) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 60}" height="{height}" '
        f'role="img" aria-label="base vs tuned metrics" font-family="sans-serif" font-size="12">'
    ]
    y = 10
    for name, base, tuned in rows:
        parts.append(f'<text x="{left - 8}" y="{y + bar + 4}" text-anchor="end">{html.escape(name)}</text>')
        for value, color in ((base, "#9aa5b1"), (tuned, "#2b6cb0")):
            parts.append(
                f'<rect x="{left}" y="{y}" width="{value * width:.1f}" height="{bar}" fill="{color}"/>'
                f'<text x="{left + value * width + 4:.1f}" y="{y + bar - 2}">{value:.3f}</text>'
            )
            y += bar
        y += gap
    parts.append(
        f'<rect x="{left}" y="{height - 14}" width="10" height="10" fill="#9aa5b1"/>'
        f'<text x="{left + 14}" y="{height - 5}">base</text>'
        f'<rect x="{left + 60}" y="{height - 14}" width="10" height="10" fill="#2b6cb0"/>'
        f'<text x="{left + 74}" y="{height - 5}">tuned</text></svg>'
    )
    return "".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(summary: dict[str, Any], predictions: list[dict[str, Any]]) -> str:
    """The same report as one self-contained HTML page."""
    metric = summary["task_metric"]
    metric_rows = [
        [f"<b>{_esc(n)}</b>" if n == metric else _esc(n), f"{b:.4f}", f"{t:.4f}", f"{t - b:+.4f}"]
        for n, b, t in _metric_rows(summary)
    ]
    warnings = "".join(f"<li>{_esc(w)}</li>" for w in summary.get("warnings") or []) or "<li>None.</li>"
    forgetting = summary.get("forgetting")
    if forgetting:
        mark = {True: "✓ ", False: "✗ "}
        probe = (
            f"<p>General questions answered correctly: base {forgetting['base']:.0%}, tuned "
            f"{forgetting['tuned']:.0%} ({forgetting['n']} questions): the tuned model "
            f"{_esc(forgetting.get('reading', ''))}. {_esc(_replay(summary))}</p>"
            + _table(
                ["question", "expected", "base", "tuned"],
                [
                    [
                        _esc(i["prompt"]),
                        _esc(i["expected"]),
                        mark[i["base_correct"]] + _esc(i["base"]),
                        mark[i["tuned_correct"]] + _esc(i["tuned"]),
                    ]
                    for i in forgetting["items"]
                ],
            )
        )
    else:
        probe = "<p>Not run (forgetting_probe = False).</p>"
    examples = _table(
        ["group", "row", "tuned score", "prompt", "reference", "tuned", "base"],
        [
            [
                group,
                str(ex["index"]),
                f"{ex['tuned_score']:.2f}",
                _esc(ex["prompt"]),
                _esc(ex["reference"]),
                _esc(ex["tuned"]),
                _esc(ex["base"]),
            ]
            for group, ex in _example_rows(summary)
        ],
    )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1a202c}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #cbd5e0;padding:4px 8px;"
        "vertical-align:top;font-size:13px;text-align:left}th{background:#edf2f7}"
        "li{margin:.3em 0}.warn li{color:#9c4221}"
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>Evaluation of run {_esc(summary['run_id'])}</title><style>{style}</style></head><body>",
            f"<h1>Evaluation of run {_esc(summary['run_id'])}</h1>",
            f"<p>Base model <code>{_esc(summary['base_model'])}</code> ({_esc(summary.get('method', ''))}), "
            f"{summary['n_test']} test rows, headline metric <b>{_esc(metric)}</b>.</p>",
            "<h2>Metrics</h2>",
            _table(["metric", "base", "tuned", "change"], metric_rows),
            "<p>Perplexity: lower is better; every other metric: higher is better.</p>",
            bar_chart_svg(summary),
            f'<h2>Warnings</h2><ul class="warn">{warnings}</ul>',
            f"<h2>Forgetting probe</h2>{probe}",
            f"<h2>Best and worst examples (tuned {_esc(summary.get('row_score', 'score'))} per row)</h2>{examples}",
            f'<p>All {len(predictions)} answers: <a href="predictions.jsonl">predictions.jsonl</a>; numbers: '
            '<a href="summary.json">summary.json</a>.</p>',
            "</body></html>",
            "",
        ]
    )


def write_report(summary: dict[str, Any], predictions: list[dict[str, Any]], run_dir: str | Path) -> Path:
    """Write <run_dir>/eval/report.md and report.html; return the Markdown path."""
    eval_dir = Path(run_dir) / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    markdown = eval_dir / "report.md"
    write_text(markdown, markdown_report(summary, predictions))
    write_text(eval_dir / "report.html", html_report(summary, predictions))
    return markdown


def _replay(summary: dict[str, Any]) -> str:
    replay = summary.get("replay") or {}
    if replay.get("rows"):
        return (
            f"Training held {replay['rows']} replay rows ({replay['share']:.0%}): the base model's own answers "
            "to other general prompts."
        )
    return "Training held no replay rows (replay guard off)."

"""The data quality report: near-duplicates, personal data, diversity, and the verdict on real files."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import pytest

from nbkit.core.errors import ConfigError
from nbkit.core.files import read_jsonl
from nbkit.core.workspace import Workspace
from nbkit.data.collect import CollectConfig, collect
from nbkit.data.diversity import diversity_map
from nbkit.data.near_duplicates import (
    cross_near_duplicates,
    minhash_signatures,
    near_duplicate_clusters,
    row_text,
    shingle_hash,
    shingles,
)
from nbkit.data.pii import find_pii, mask_secret, redact_pii
from nbkit.data.quality import QualityConfig, quality_report, verdict_text

TICKET = (
    "Hello, I ordered a pair of headphones three weeks ago and the tracking page still says the parcel is "
    "waiting at the depot. I need them for a trip next Friday, so could you check with the carrier and "
    "tell me when it will arrive? Thanks a lot, Maria"
)
# One word changed near the end: most three-word phrases are shared.
REWORDED = TICKET.replace("Thanks a lot", "Thanks so much")
SAME_IN_CAPS = TICKET.upper().replace(",", "").replace("?", " ?")
OTHERS = [
    "My invoice for March shows the wrong amount and I was charged twice for the Pro plan, please refund one of "
    "the two payments to my Visa card as soon as you can.",
    "The app crashes every time I open the export menu on my phone, since the update yesterday nothing works and "
    "I lost the report I was writing for my manager.",
    "Can I change the email address on my account? I moved to a new company and no longer read the old inbox, so "
    "password reset emails never reach me.",
    "Is there a student discount for the yearly plan? Just curious, no rush at all, I am comparing a few tools "
    "for our study group before the semester starts.",
]


def words_text(rng: random.Random, vocabulary: list[str], n: int) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(n))


# -- near-duplicates -----------------------------------------------------------------------------


def test_row_text_leaves_out_the_system_prompt():
    row = {
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    assert row_text(row) == "Hi\nHello"


def test_shingles_are_word_trigrams_ignoring_case_and_punctuation():
    assert shingles("Where is MY parcel?!") == ["where is my", "is my parcel"]
    assert shingles("Hi, there") == ["hi", "there"]  # under three words: the words themselves


def test_bulk_signatures_equal_datasketch_minhash():
    from datasketch import MinHash

    texts = [TICKET, "two words", "", OTHERS[0]]
    signatures = minhash_signatures(texts, num_perm=64, seed=3)
    for text, signature in zip(texts, signatures):
        reference = MinHash(num_perm=64, seed=3, hashfunc=shingle_hash)
        reference.update_batch(shingles(text))
        assert np.array_equal(reference.hashvalues, signature), text


def test_reworded_and_recased_copies_cluster_but_unrelated_rows_do_not():
    texts = [OTHERS[0], TICKET, OTHERS[1], REWORDED, OTHERS[2], SAME_IN_CAPS, OTHERS[3]]
    assert near_duplicate_clusters(texts) == [[1, 3, 5]]
    assert near_duplicate_clusters(OTHERS) == []
    assert near_duplicate_clusters([]) == [] and near_duplicate_clusters([TICKET]) == []


def test_a_stricter_threshold_keeps_only_closer_copies():
    lightly_edited = TICKET.replace("three weeks ago", "two weeks ago").replace("Maria", "Mia")
    assert near_duplicate_clusters([TICKET, lightly_edited], threshold=0.6) == [[0, 1]]
    assert near_duplicate_clusters([TICKET, lightly_edited], threshold=0.95) == []
    assert near_duplicate_clusters([TICKET, TICKET.lower() + "!"], threshold=1.0) == [[0, 1]]


def test_exact_copies_are_always_found_among_many_rows():
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(3000)]
    texts = [words_text(rng, vocabulary, rng.randint(8, 30)) for _ in range(2000)]
    planted = {5: 1500, 77: 1999, 400: 401}
    for source, target in planted.items():
        texts[target] = texts[source]
    for threshold in (0.7, 0.9, 1.0):
        clusters = near_duplicate_clusters(texts, threshold=threshold)
        assert sorted(clusters) == sorted([[s, t] for s, t in planted.items()]), threshold


def test_clusters_are_sorted_and_chains_join():
    texts = [OTHERS[0], REWORDED, TICKET, OTHERS[1], SAME_IN_CAPS]
    clusters = near_duplicate_clusters(texts)
    assert clusters == [[1, 2, 4]]
    assert all(c == sorted(c) for c in clusters)


def test_ten_thousand_rows_are_fast():
    rng = random.Random(1)
    vocabulary = [f"w{i}" for i in range(5000)]
    texts = [words_text(rng, vocabulary, rng.randint(10, 40)) for _ in range(10_000)]
    for i in range(0, 10_000, 500):  # 20 near copies: last word changed
        texts[i + 1] = texts[i].rsplit(" ", 1)[0] + " changed"
    start = time.perf_counter()
    clusters = near_duplicate_clusters(texts, threshold=0.7)
    elapsed = time.perf_counter() - start
    found = {tuple(c) for c in clusters}
    # a short text with its last word changed can fall under 0.7; long ones must all be found
    long_ones = {(i, i + 1) for i in range(0, 10_000, 500) if len(texts[i].split()) >= 25}
    assert long_ones <= found
    assert elapsed < 5, f"{elapsed:.1f}s for 10,000 rows"


def test_cross_near_duplicates_pairs_query_rows_with_reference_rows():
    reference = [OTHERS[0], TICKET, OTHERS[1], OTHERS[1]]
    query = [OTHERS[2], REWORDED, OTHERS[1].lower(), OTHERS[3]]
    assert cross_near_duplicates(query, reference) == [(1, 1), (2, 2), (2, 3)]
    assert cross_near_duplicates(query, []) == [] and cross_near_duplicates([], reference) == []
    assert cross_near_duplicates(["one two"], ["one two"], threshold=1.0) == [(0, 0)]  # tiny exact copy


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        near_duplicate_clusters([TICKET, TICKET], threshold=0)
    with pytest.raises(ConfigError, match="`near_duplicate_threshold` must be between 0.5 and 1.0"):
        QualityConfig(near_duplicate_threshold=0.2)


def test_quality_config_round_trips_and_reads_the_format_settings(tmp_path):
    from nbkit.data.formatting import FormatConfig

    config = QualityConfig(workspace=str(tmp_path), near_duplicate_threshold=0.9, redact_pii=True)
    assert QualityConfig.from_dict(json.loads(config.to_json())) == config
    derived = QualityConfig.from_config(
        FormatConfig(workspace="w", drop_near_duplicates=True, near_duplicate_threshold=0.85)
    )
    assert (derived.workspace, derived.drop_near_duplicates, derived.near_duplicate_threshold) == ("w", True, 0.85)
    assert derived.label_field == "label"


# -- personal data ------------------------------------------------------------------------------

PII_CASES = [
    ("Write to jane.doe+work@example.co.uk today", [("email", "jane.doe+work@example.co.uk")]),
    ("Call +1 (415) 555-2671 after 5pm", [("phone", "+1 (415) 555-2671")]),
    ("my number is 415-555-2671.", [("phone", "415-555-2671")]),
    ("office +44 20 7946 0958, mobile 07700 900123", [("phone", "+44 20 7946 0958"), ("phone", "07700 900123")]),
    ("phone: 5551234567", [("phone", "5551234567")]),
    ("card 4111 1111 1111 1111 exp 12/27", [("card", "4111 1111 1111 1111")]),
    ("paid with 4012-8888-8888-1881", [("card", "4012-8888-8888-1881")]),
    ("amex 3782 822463 10005", [("card", "3782 822463 10005")]),
    ("from 192.168.1.254 and 10.0.0.1.", [("ip", "192.168.1.254"), ("ip", "10.0.0.1")]),
    ("OPENAI_API_KEY=sk-proj-abc123DEF456ghi789JKL012mno", [("api_key", "sk-proj-abc123DEF456ghi789JKL012mno")]),
    ("use ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", [("api_key", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789")]),
    ("aws id AKIAIOSFODNN7EXAMPLE here", [("api_key", "AKIAIOSFODNN7EXAMPLE")]),
    ("slack xoxb-123456789012-abcdefghijkl", [("api_key", "xoxb-123456789012-abcdefghijkl")]),
    ("token=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b", [("api_key", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b")]),
    ("mail a@b.io from 8.8.8.8", [("email", "a@b.io"), ("ip", "8.8.8.8")]),
]

NOT_PII = [
    "Order #48213 arrived late",
    "order 48213 and order NB-55123",
    "It cost $1,299.00, then $106.00, then 49.99 EUR",
    "on 2024-03-15, 15/03/2024, 03.04.2024 and 3/12",
    "version 1.2.3.4, v2.10.0, Python 3.11.4, build 10.0.19041.1",
    "Error 0x3F2 at 12:45:30",
    "tracking 1Z999AA10123456784",
    "Invoice 2024-0042-17 and ticket 4821-3301",
    "order 4111 1111 1111 1111",  # a card-shaped order number after the word "order"
    "1234 5678 9012 3456",  # card-shaped but fails the Luhn check
    "the key=value pair and token=abc",
    "use the code SPRING25, customer since 2018",
    "score 0.95, temperature 36.6, ISBN 978-3-16-148410-0",
]


@pytest.mark.parametrize("text,expected", PII_CASES)
def test_find_pii_positives(text, expected):
    assert find_pii(text) == expected


@pytest.mark.parametrize("text", NOT_PII)
def test_find_pii_leaves_order_numbers_prices_dates_and_versions_alone(text):
    assert find_pii(text) == []


def test_redact_pii_replaces_each_match_with_its_placeholder():
    text = (
        "Mail bob@example.com or call 415-555-2671, card 4111 1111 1111 1111, host 10.1.2.3, "
        "api_key=Ab12Cd34Ef56Gh78Ij90"
    )
    assert redact_pii(text) == "Mail [EMAIL] or call [PHONE], card [CARD], host [IP], api_key=[API_KEY]"
    assert redact_pii("Order #48213 on 2024-03-15") == "Order #48213 on 2024-03-15"


def test_mask_secret_shows_at_most_four_characters():
    assert mask_secret("sk-proj-abc123DEF456ghi789") == "**********************i789"
    assert mask_secret("a@b.io") == "****io"  # short values show less


# -- diversity ----------------------------------------------------------------------------------


def sample_texts():
    from nbkit.data.collect import SAMPLE_DATA

    return [row_text(json.loads(line)) for line in SAMPLE_DATA.read_text().splitlines()]


def test_diversity_map_is_quiet_for_the_balanced_sample():
    result = diversity_map(sample_texts())
    assert result["warnings"] == []
    assert len(result["x"]) == len(result["y"]) == len(result["cluster"]) == 400
    assert max(map(abs, result["x"] + result["y"])) <= 1.0
    assert sum(result["cluster_sizes"].values()) == 400 and result["largest_cluster_share"] < 0.6
    assert all(result["top_terms"][c] for c in result["cluster_sizes"])


def where_is_my_parcel(rng: random.Random) -> str:
    """The same request, lightly varied: what a data set built from one template looks like."""
    return (
        f"{rng.choice(['Hi', 'Hello', 'Hey'])}, my {rng.choice(['parcel', 'order', 'package'])} "
        f"{rng.randint(100, 999)} has not arrived yet, where is it? {rng.choice(['Thanks', 'Regards', 'Cheers'])}"
    )


def test_diversity_map_warns_about_one_tight_cluster():
    rng = random.Random(2)
    result = diversity_map([where_is_my_parcel(rng) for _ in range(60)])
    assert any("very alike" in w for w in result["warnings"]), result["warnings"]
    assert result["mean_similarity"] > 0.35 > diversity_map(sample_texts())["mean_similarity"]


def test_diversity_map_warns_when_one_topic_dominates():
    rng = random.Random(2)
    varied = [t for t in sample_texts() if '"shipping"' not in t][::7][:40]
    result = diversity_map([where_is_my_parcel(rng) for _ in range(80)] + varied)
    assert any("One topic dominates: 67% of rows" in w for w in result["warnings"]), result["warnings"]
    assert not any("very alike" in w for w in result["warnings"])  # the rows as a whole are not all alike


@pytest.mark.parametrize("texts", [[], ["only one"], ["one", "two"], ["same text"] * 5, ["", "", ""]])
def test_diversity_map_handles_tiny_and_degenerate_inputs(texts):
    result = diversity_map(texts)
    assert len(result["x"]) == len(result["cluster"]) == len(texts)
    assert result["warnings"]  # always says why it cannot judge, or that the rows are alike


# -- the report on real files ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory):
    ws = tmp_path_factory.mktemp("quality")
    collect(CollectConfig(workspace=str(ws)))
    return ws, quality_report(QualityConfig(workspace=str(ws)))


def test_report_on_the_bundled_sample(sample_report):
    ws, report = sample_report
    assert {"rows", "exact_duplicates", "near_duplicates", "pii", "lengths", "labels", "diversity", "verdict"} <= set(
        report
    )
    assert report["rows"] == 400 and report["labels"]["counts"] == {
        "account": 100,
        "billing": 100,
        "shipping": 100,
        "technical": 100,
    }
    assert report["pii"]["counts"]["email"] == report["pii"]["rows_with_pii"] > 0
    assert set(report["lengths"]["per_role"]) == {"system", "user", "assistant"}
    near = report["near_duplicates"]
    assert near["rows_in_clusters"] == sum(near["cluster_sizes"]) and near["rows_in_clusters"] < 20
    assert all({"source", "line", "text"} <= set(member) for cluster in near["clusters"] for member in cluster)
    assert "x" not in report["diversity"] and report["diversity"]["warnings"] == []
    assert json.loads((Workspace(ws).data / "quality_report.json").read_text()) == report
    points = json.loads((Workspace(ws).data / "diversity_map.json").read_text())
    assert len(points["x"]) == len(points["y"]) == len(points["text"]) == 400

    verdict = report["verdict"]
    assert 3 <= len(verdict) <= 8 and {item["level"] for item in verdict} <= {"good", "warn", "fix"}
    messages = " ".join(item["message"] for item in verdict)
    assert "Labels balanced: smallest class 'account' is 25% of rows" in messages
    assert any(item["level"] == "fix" and "redact_pii" in item["fix"] for item in verdict)  # the sample has emails
    assert [item["level"] for item in verdict] == sorted(
        (item["level"] for item in verdict), key=["fix", "warn", "good"].index
    )


def test_report_never_stores_a_raw_email(sample_report):
    ws, report = sample_report
    text = (Workspace(ws).data / "quality_report.json").read_text()
    emails = {value for row in read_jsonl(Workspace(ws).clean) for kind, value in find_pii(row_text(row))}
    assert emails and not any(email in text for email in emails)
    assert all(example["masked"].startswith("*") for example in report["pii"]["examples"])


def test_verdict_names_the_fixes_for_messy_data(tmp_path):
    records = [
        {
            "messages": [{"role": "user", "content": TICKET}, {"role": "assistant", "content": "shipping"}],
            "label": "shipping",
        },
        {
            "messages": [{"role": "user", "content": REWORDED}, {"role": "assistant", "content": "shipping"}],
            "label": "shipping",
        },
        {
            "messages": [
                {"role": "user", "content": "My key is sk-live-abcdefghijklmnop1234567890 oops"},
                {"role": "assistant", "content": "account"},
            ],
            "label": "account",
        },
    ]
    records += [
        {
            "messages": [
                {"role": "user", "content": f"{text} (case {i})"},
                {"role": "assistant", "content": "billing"},
            ],
            "label": "billing",
        }
        for i, text in enumerate(OTHERS * 5)
    ]
    collect(CollectConfig(workspace=str(tmp_path), sources=[records]))
    report = quality_report(QualityConfig(workspace=str(tmp_path)))
    by_fix = {item["fix"]: item for item in report["verdict"]}
    assert report["pii"]["counts"]["api_key"] == 1
    assert any("drop_near_duplicates" in fix for fix in by_fix) and any("redact_pii" in fix for fix in by_fix)
    assert any("Only 23 rows" in item["message"] for item in report["verdict"])
    assert any(
        item["level"] == "warn" and "Labels unbalanced: 'account'" in item["message"] for item in report["verdict"]
    )
    assert "sk-live-abcdefghijklmnop1234567890" not in json.dumps(report)
    text = verdict_text(report)
    assert text.startswith("Data quality: 23 rows") and "[FIX ]" in text and "-> Set redact_pii = True" in text
    # With the fixes switched on, the same findings read as handled.
    handled = quality_report(QualityConfig(workspace=str(tmp_path), redact_pii=True, drop_near_duplicates=True))
    assert not any(
        item["level"] == "fix" and ("redact" in item["fix"] or "drop_near" in item["fix"])
        for item in handled["verdict"]
    )


def test_report_needs_collect_first(tmp_path):
    from nbkit.core.errors import WorkspaceError

    with pytest.raises(WorkspaceError, match="run 01_collect first"):
        quality_report(QualityConfig(workspace=str(tmp_path)))


def test_the_core_module_imports_no_notebook_machinery():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('ipywidgets', 'IPython', 'plotly'): sys.modules[name] = None\n"
        "import nbkit.data.quality, nbkit.data.formatting\nprint('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# -- the panel and figures (nbkit.widgets.quality) -------------------------------------------------


def test_verdict_html_colours_each_level_and_escapes_text():
    import nbkit.widgets as nw

    report = {
        "rows": 3,
        "verdict": [
            {"level": "fix", "message": "<b>bad</b>", "fix": "Set redact_pii = True"},
            {"level": "good", "message": "fine", "fix": ""},
        ],
    }
    page = nw.verdict_html(report)
    assert 'class="nbkit-quality-item nbkit-quality-fix"' in page and "nbkit-quality-good" in page
    assert "&lt;b&gt;bad&lt;/b&gt;" in page and "<b>bad</b>" not in page
    assert "Set redact_pii = True" in page and "1 to fix, 0 to check, 1 fine" in page


def test_quality_figures_hold_the_report_numbers(sample_report):
    import plotly.graph_objects as go

    import nbkit.widgets as nw

    ws, report = sample_report
    lengths, labels, diversity = nw.quality_figures(report, ws)
    assert all(isinstance(fig, go.Figure) for fig in (lengths, labels, diversity))
    assert {trace.name for trace in lengths.data} == {"system", "user", "assistant"}
    assert sum(sum(trace.y) for trace in lengths.data) == 1200  # 400 rows x 3 messages
    assert list(labels.data[0].y) == [100, 100, 100, 100]
    assert sum(len(trace.x) for trace in diversity.data) == 400 and len(diversity.data) == 4
    assert all(trace.hovertext[0] for trace in diversity.data)


def test_quality_panel_shows_tabs_and_edits_the_format_config(sample_report):
    import ipywidgets as widgets

    import nbkit.widgets as nw
    from nbkit.data.formatting import FormatConfig

    ws, report = sample_report
    config = FormatConfig(workspace=str(ws))
    panel = nw.quality_panel(report, ws, config)
    assert isinstance(panel.box, widgets.Box) and "nbkit-quality-panel" in panel.box._dom_classes
    assert "application/vnd.jupyter.widget-view+json" in panel._repr_mimebundle_()
    titles = [panel.tabs.get_title(i) for i in range(len(panel.tabs.children))]
    assert titles == ["Verdict", "Lengths", "Labels", "Diversity map", "Near-duplicates"]
    assert "Labels balanced" in panel.verdict.value
    panel.form.inputs["redact_pii"].value = True
    panel.form.inputs["near_duplicate_threshold"].value = 0.1  # refused: stays valid
    assert config.redact_pii is True and config.near_duplicate_threshold == 0.8
    assert "between 0.5 and 1.0" in panel.form.error.value
    panel.form.inputs["replay_guard"].value = False  # the replay guard's switch, on the same config
    panel.form.inputs["replay_share"].value = 0.6  # refused: the last valid share stays
    assert config.replay_guard is False and config.replay_share == 0.15 and "replay_share" in panel.form.error.value
    assert "Replay guard on: 15%" in panel.verdict.value
    pager = panel.duplicates
    assert pager.position.value == f"1 / {report['near_duplicates']['n_clusters']}"
    assert "kept" in pager.view.value and "dropped with drop_near_duplicates" in pager.view.value
    assert "nbkit-quality-fig-map" in panel.figures["map"]._dom_classes


def test_quality_panel_falls_back_to_html_figures_for_colab(sample_report):
    import nbkit.widgets as nw

    ws, report = sample_report
    panel = nw.quality_panel(report, ws, mode="html")
    assert panel.form is None  # no config given: nothing to edit
    assert panel.figures["lengths"].value.startswith("<iframe srcdoc=")
    assert "nbkit-quality-fig-lengths" in panel.figures["lengths"]._dom_classes


def test_verdict_says_whether_the_replay_guard_is_on_and_what_triggers_the_task(tmp_path):
    from nbkit.core.files import write_jsonl

    ws = tmp_path / "ws"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"ticket {i} about topic {i % 7}"},
                {"role": "assistant", "content": "billing"},
            ],
            "meta": {"source": "t", "line": i + 1},
        }
        for i in range(120)
    ]
    write_jsonl(ws / "data" / "clean.jsonl", rows)
    off = quality_report(QualityConfig(workspace=str(ws), replay_guard=False))
    item = next(i for i in off["verdict"] if "Replay guard off" in i["message"])
    assert item["level"] == "warn" and "replay_guard = True" in item["fix"]
    bare = quality_report(QualityConfig(workspace=str(ws)))
    item = next(i for i in bare["verdict"] if "Replay guard on" in i["message"])
    assert item["level"] == "warn" and "120 rows of 120 have no system prompt" in item["message"]
    assert bare["replay"] == {
        "enabled": True,
        "share": 0.15,
        "rows_with_system_prompt": 0,
        "base_model_without_template": False,
    }

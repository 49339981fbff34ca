"""Task metrics on generated answers, checked by hand."""

from __future__ import annotations

import pytest

from nbkit.core.metrics import exact_match, field_accuracy, normalize, parse_json, score

TRIAGE = '{"team": "billing", "priority": "high"}'


# -- normalize / exact_match ----------------------------------------------------------------


def test_normalize_json_sorts_keys_and_drops_spacing():
    assert normalize('{"b": 2,  "a": [1, 2]}') == '{"a":[1,2],"b":2}'


def test_normalize_text_folds_case_whitespace_and_trailing_period():
    assert normalize("  The   Eiffel\nTower. ") == "the eiffel tower"


def test_json_key_order_and_spacing_ignored():
    assert exact_match('{"priority":"high","team":"billing"}', TRIAGE) == 1.0
    assert exact_match('{\n  "team" : "billing",\n  "priority" : "high"\n}', TRIAGE) == 1.0


def test_json_with_different_value_differs():
    assert exact_match('{"team": "billing", "priority": "low"}', TRIAGE) == 0.0


def test_json_with_extra_field_differs():
    assert exact_match('{"team": "billing", "priority": "high", "note": "x"}', TRIAGE) == 0.0


@pytest.mark.parametrize("prediction", ["Paris.", " paris", "PARIS", "paris!", '"Paris"', "Paris\n"])
def test_text_variants_match(prediction):
    assert exact_match(prediction, "Paris") == 1.0


@pytest.mark.parametrize("prediction", ["Lyon", "Paris, France", "Pari s", ""])
def test_different_text_answers_differ(prediction):
    assert exact_match(prediction, "Paris") == 0.0


def test_inner_punctuation_is_kept():
    assert exact_match("3.5", "35") == 0.0
    assert exact_match("e.g. this", "eg this") == 0.0


def test_unicode_compatibility_forms_match():
    assert exact_match("ｆｕｌｌ width", "full width") == 1.0


def test_fenced_json_matches_bare_json():
    assert exact_match('```json\n{"priority": "high", "team": "billing"}\n```', TRIAGE) == 1.0


def test_exact_match_returns_float():
    assert type(exact_match("a", "a")) is float
    assert type(exact_match("a", "b")) is float


# -- parse_json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ['```json\n{"a": 1}\n```', '```\n{"a": 1}\n```', '  ```json{"a": 1}```  ', '{"a": 1}', '\n {"a": 1} \n']
)
def test_parse_json_tolerates_fences_and_whitespace(text):
    assert parse_json(text) == {"a": 1}


def test_parse_json_arrays():
    assert parse_json("```json\n[1, 2]\n```") == [1, 2]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Paris",
        "42",
        '"a string"',
        "null",
        "true",  # JSON, but not an object/array
        '{"a": 1',  # truncated
        '{"a": 1} and more text',  # trailing prose
        'Sure! {"a": 1}',  # leading prose
        "```json\n{'a': 1}\n```",  # Python dict, not JSON
    ],
)
def test_parse_json_returns_none_for_non_json(text):
    assert parse_json(text) is None


# -- field_accuracy -------------------------------------------------------------------------


def test_field_accuracy_all_fields_right():
    assert field_accuracy('{"priority": "high", "team": "billing"}', TRIAGE) == 1.0


def test_field_accuracy_half_right():
    assert field_accuracy('{"team": "billing", "priority": "low"}', TRIAGE) == 0.5


def test_field_accuracy_missing_field_counts_as_wrong():
    assert field_accuracy('{"team": "billing"}', TRIAGE) == 0.5


def test_field_accuracy_extra_fields_do_not_count():
    assert field_accuracy('{"team": "billing", "priority": "high", "x": 1}', TRIAGE) == 1.0


def test_field_accuracy_values_compare_exactly():
    assert field_accuracy('{"team": "Billing", "priority": "high"}', TRIAGE) == 0.5


@pytest.mark.parametrize("prediction", ["not json", '{"team": "billing"', "[1, 2]", ""])
def test_field_accuracy_invalid_prediction_is_zero(prediction):
    assert field_accuracy(prediction, TRIAGE) == 0.0


@pytest.mark.parametrize("reference", ["Paris", "[1, 2]", "{}", "42"])
def test_field_accuracy_none_for_non_object_reference(reference):
    assert field_accuracy(TRIAGE, reference) is None


# -- score ----------------------------------------------------------------------------------


def test_score_json_references_hand_checked():
    predictions = [
        TRIAGE,  # exact: 1, valid, fields 1.0
        '{"team": "billing", "priority": "low"}',  # exact: 0, valid, fields 0.5
        "billing, high",
    ]  # exact: 0, invalid, fields 0.0
    result = score(predictions, [TRIAGE] * 3)
    assert set(result) == {"exact_match", "json_valid", "field_accuracy"}
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["json_valid"] == pytest.approx(2 / 3)
    assert result["field_accuracy"] == pytest.approx(1.5 / 3)


def test_score_short_text_references_are_scored_as_labels():
    result = score(["Paris.", "Lyon", "rome"], ["Paris", "Marseille", "Rome"])
    # per-class F1: paris 1, marseille 0 (never predicted), rome 1
    assert result == {
        "exact_match": pytest.approx(2 / 3),
        "accuracy": pytest.approx(2 / 3),
        "macro_f1": pytest.approx(2 / 3),
    }


def test_score_mixed_references_has_no_json_metrics():
    result = score([TRIAGE, "Paris"], [TRIAGE, "Paris"])
    assert "json_valid" not in result and result["exact_match"] == 1.0


def test_score_array_references_skip_field_accuracy():
    result = score(["[1, 2]", "nope"], ["[1,2]", "[3]"])
    assert set(result) == {"exact_match", "json_valid"}
    assert result["exact_match"] == 0.5
    assert result["json_valid"] == 0.5


def test_score_empty():
    assert score([], []) == {"exact_match": 0.0}


# -- metrics chosen by answer kind (hand-checked) ------------------------------------------------


def test_label_answers_get_accuracy_and_macro_f1():
    from nbkit.core.metrics import kind_of, score, task_metric

    truth = ["positive", "negative", "negative", "neutral"]
    guess = ["Positive.", "negative", "positive", "neutral"]
    assert kind_of(truth) == "label" and task_metric(truth) == "macro_f1"
    result = score(guess, truth)
    # per class F1: positive 2/3 (P 1/2, R 1), negative 2/3 (P 1, R 1/2), neutral 1 -> mean 7/9
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["macro_f1"] == pytest.approx(7 / 9)


def test_free_text_answers_get_rouge_l_and_bleu():
    from nbkit.core.metrics import bleu, kind_of, rouge_l, score

    refs = ["the cat sat on a mat", "the dog barked loudly at the postman today"]
    preds = ["the cat sat on the mat", "a dog"]
    assert kind_of(refs) == "text"
    # LCS 5 of 6 words both ways -> F 5/6; "dog" 1 of 2 vs 1 of 8 -> F 2*(1/2)(1/8)/(5/8) = 0.2
    assert rouge_l(preds, refs) == pytest.approx((5 / 6 + 0.2) / 2)
    assert bleu(refs, refs) == pytest.approx(1.0)
    assert 0.0 <= score(preds, refs)["bleu"] < 1.0


def test_json_answers_keep_exact_match_as_the_task_metric():
    from nbkit.core.metrics import task_metric

    assert task_metric(['{"team": "billing"}', '{"team": "account"}']) == "exact_match"

"""Loaders on the real data in ../shared/data, and metrics against hand-checked examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.datasets import (
    DatasetError,
    load_hotpotqa,
    load_qa,
    load_routellm_gsm8k,
    load_routerbench,
    load_squad,
)
from pipelines.metrics import (
    auroc,
    exact_match,
    expected_calibration_error,
    normalize_answer,
    reliability_bins,
    token_f1,
)


def test_squad_loaders_split_answerable_from_unanswerable(data_dir: Path) -> None:
    everything = load_qa("squad_v2", data_dir)
    answerable = load_qa("squad", data_dir)
    assert len(everything) == 4449 and 0 < len(answerable) < len(everything)
    assert all(r.answerable for r in answerable)
    first = everything[0]
    assert first.question == "In what country is Normandy located?" and first.answers == ("France",)
    assert "Normandy" in first.context[0]
    assert any(not r.answerable for r in everything)


def test_hotpotqa_has_ten_titled_paragraphs(data_dir: Path) -> None:
    records = load_hotpotqa(data_dir, limit=5)
    assert len(records) == 5
    assert records[0].answers == ("Chief of Protocol",)
    assert len(records[0].context) == 10 and records[0].context[0].startswith("Meet Corliss Archer: ")


def test_official_hotpotqa_json_is_read_too(tmp_path: Path) -> None:
    official = tmp_path / "hotpot_dev_distractor_v1.json"
    official.write_text('[{"_id": "a1", "question": "Q?", "answer": "yes", '
                        '"context": [["Title", ["First sentence. ", "Second."]]]}]')
    [record] = load_hotpotqa(official)
    assert record.context == ("Title: First sentence. Second.",) and record.answers == ("yes",)


def test_routerbench_tables_align_models_and_drop_incomplete_rows(data_dir: Path) -> None:
    bench = data_dir / "routerbench"
    table = load_routerbench([bench / "mbpp_test.csv", bench / "arc_challenge_test.csv"])
    assert len(table.models) == 11 and "gpt-4-1106-preview" in table.models
    assert table.costs is not None
    assert table.scores.shape == table.costs.shape == (len(table), 11)
    assert len(table) + table.dropped == 128 + 445 and table.dropped > 0
    assert set(np.unique(table.scores)) <= {0.0, 1.0}
    assert (table.costs > 0).all()


def test_routellm_gsm8k_outcomes(data_dir: Path) -> None:
    table = load_routellm_gsm8k(data_dir / "routellm" / "gsm8k_responses.csv")
    assert len(table) == 1319 and table.costs is None
    gpt4 = table.models.index("gpt-4-1106-preview")
    assert table.scores[:, gpt4].mean() > table.scores[:, 1 - gpt4].mean()


@pytest.mark.parametrize("content", ["{broken", '{"data": [{"title": "x"}]}'])
def test_malformed_squad_files_are_named(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "squad.json"
    bad.write_text(content)
    with pytest.raises(DatasetError, match=str(bad)):
        load_squad(bad)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_routerbench([tmp_path / "nope.csv"])
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_qa("trivia", tmp_path)


def test_squad_normalization_and_scores() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the France", ["France"]) == 1.0
    assert exact_match("France.", ["Paris", "france"]) == 1.0
    assert exact_match("in France", ["France"]) == 0.0
    assert token_f1("in France", ["France"]) == pytest.approx(2 / 3)
    assert token_f1("Denmark Iceland and Norway", ["Denmark, Iceland and Norway"]) == 1.0
    assert token_f1("nothing", ["France"]) == 0.0


def test_squad_v2_abstention() -> None:
    assert exact_match("", []) == 1.0
    assert exact_match("I don't know.", []) == 1.0
    assert exact_match("Paris", []) == 0.0
    assert token_f1("unanswerable", []) == 1.0


def test_calibration_error_and_bins() -> None:
    confidence = np.array([0.95, 0.95, 0.95, 0.95, 0.15, 0.15])
    correct = np.array([1, 1, 1, 0, 0, 1])
    bins = reliability_bins(confidence, correct, bins=10)
    assert [(b["count"], b["accuracy"]) for b in bins] == [(2, 0.5), (4, 0.75)]
    assert expected_calibration_error(confidence, correct) == pytest.approx(2 / 6 * 0.35 + 4 / 6 * 0.2)
    assert expected_calibration_error(np.array([0.7, 0.7]), np.array([1, 0])) == pytest.approx(0.2)


def test_auroc_by_hand() -> None:
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(np.array([1.0, 1.0]), np.array([0, 1])) == pytest.approx(0.5)
    assert auroc(np.array([0.2, 0.3]), np.array([1, 1])) is None

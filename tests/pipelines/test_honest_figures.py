"""What keeps the held-out figures honest: intervals over articles that do not shrink with more splits
or copies of a question, curves that do not depend on the rows' order, a guarantee that counts token
F1's partial losses, a row cut that never splits an article, and records and tables whose faults are
named (pure functions, no models)."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import orjson
import pytest

from cli.quality import _records
from pipelines.calibrate import _end_with_newline, read_records
from pipelines.datasets import DatasetError, load_routerbench
from pipelines.protocol import (
    Data,
    curve_area,
    group_bootstrap,
    guaranteed_threshold,
    interval,
    kl_bound,
    over_splits,
    run_protocol,
    weighted_curves,
)
from pipelines.routerbench import _aligned
from tests.pipelines.test_protocol import synthetic


def _width(summary: dict, method: str = "min logprob (Chow-quantile)") -> float:
    figure = summary["methods"][method]["audc"]
    return float(figure["high"] - figure["low"])


def test_a_group_bootstrap_moves_an_articles_questions_together() -> None:
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    weights = group_bootstrap(groups, 50, np.random.default_rng(0))
    assert weights.shape == (51, 6) and (weights[0] == 1).all()
    assert (weights[1:, 0] == weights[1:, 1]).all() and (weights[1:, 3] == weights[1:, 5]).all()
    assert (weights[1:, [0, 2, 3]].sum(axis=1) == 3).all(), "each resample draws as many articles as there are"


def test_intervals_do_not_narrow_with_more_splits_or_with_copies_of_each_question() -> None:
    """The splits reuse the same articles and copies add no information: neither may buy precision
    (resampling questions anew in every split and averaging made intervals √splits too narrow)."""
    data = Data.of(synthetic(600))
    few, many = (run_protocol(data, splits=s, bootstrap=200, seed=1) for s in (2, 8))
    assert _width(many) > 0.6 * _width(few)


def test_copies_of_each_question_in_its_article_buy_no_precision() -> None:
    records = synthetic(400)
    tripled = [r.model_copy(update={"id": f"{r.id}-{k}"}) for r in records for k in range(3)]
    once, thrice = (run_protocol(Data.of(r), splits=3, bootstrap=200, seed=2) for r in (records, tripled))
    assert _width(thrice) > 0.7 * _width(once)


def test_tied_scores_give_the_same_curve_whatever_the_rows_order() -> None:
    rng = np.random.default_rng(0)
    small, large = (rng.random(300) < 0.4).astype(float), (rng.random(300) < 0.7).astype(float)
    flagged = (rng.random(300) < 0.3).astype(float)  # a binary rule: every flagged answer ties
    weights = np.vstack([np.ones(300), rng.multinomial(300, np.full(300, 1 / 300), size=20)])
    order = rng.permutation(300)
    shares, quality = weighted_curves(flagged, small, large, weights)
    shuffled_shares, shuffled = weighted_curves(flagged[order], small[order], large[order], weights[:, order])
    assert np.allclose(curve_area(shares, quality), curve_area(shuffled_shares, shuffled))
    for row in range(len(weights)):  # the same line across the tie, wherever each resampled weight sits
        assert np.allclose(np.interp(np.linspace(0, 1, 101), shares[row], quality[row]),
                           np.interp(np.linspace(0, 1, 101), shuffled_shares[row], shuffled[row]))
    end_of_flagged = int(flagged.sum())
    assert quality[0, end_of_flagged] == pytest.approx(np.where(flagged > 0, large, small).mean())


def test_a_resample_without_a_splits_test_articles_is_left_out_of_that_splits_average() -> None:
    """A resample that drew none of a split's test articles has no figure there (NaN): its figure is the
    mean over the splits it holds questions of, and a resample with none anywhere is left out of the
    interval rather than counted as zero."""
    weights = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    _, quality = weighted_curves(np.array([0.3, 0.2, 0.1]), np.ones(3), np.zeros(3), weights)
    assert np.isfinite(quality[0]).all() and np.isnan(quality[1]).all()
    per_split = [np.array([0.5, 0.2, np.nan, np.nan]), np.array([0.7, 0.4, 0.6, np.nan])]
    assert np.allclose(over_splits(per_split)[:3], [0.6, 0.3, 0.6]) and np.isnan(over_splits(per_split)[3])
    figure = interval(over_splits(per_split)[1:])
    assert figure["low"] >= 0.3 and figure["mean"] == pytest.approx(0.45)


def test_a_guarantee_on_token_f1_counts_partial_losses() -> None:
    """Small answers at F1 0.6 against large ones at 1.0 lose 0.4 each when kept: a threshold that
    keeps 97% of large-only quality must escalate nearly all of them (counting only answers below 0.5
    as lost accepted every one)."""
    score = np.linspace(0.0, 1.0, 400)
    small, large = np.full(400, 0.6), np.ones(400)
    kept = score < guaranteed_threshold(score, small, large, 0.97, 0.1)
    assert 0.4 * kept.mean() <= 0.03


def test_the_kl_bound_covers_the_mean_of_values_in_the_unit_interval() -> None:
    rng = np.random.default_rng(0)
    means = rng.beta(0.5, 2.0, size=(2000, 150)).mean(axis=1)  # true mean 0.2
    upper, lower = kl_bound(means, 150, 0.1, upper=True), kl_bound(means, 150, 0.1, upper=False)
    assert (upper >= 0.2).mean() >= 0.9 and (lower <= 0.2).mean() >= 0.9
    assert (upper - means < 0.12).all(), "and it is a bound, not [0, 1]"


def _write(path: Path, records: list) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r.model_dump(mode="json")) + b"\n" for r in records))
    return path


def test_a_row_cut_through_an_article_is_refused_with_where_to_cut(tmp_path: Path) -> None:
    records = [r.model_copy(update={"group": f"article-{i // 10}"}) for i, r in enumerate(synthetic(40))]
    path = _write(tmp_path / "records.jsonl", records)
    with pytest.raises(ValueError, match=r"cuts group 'article-1' \(rows 10 to 19\).*row 10 or 20"):
        _records(path, ":15")
    assert len(_records(path, ":20")) == 20 and len(_records(path, "20:")) == 20


def test_a_record_cut_off_mid_write_is_redone_and_a_bad_one_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "records.jsonl", synthetic(3))
    whole = path.read_bytes()
    path.write_bytes(whole + whole.splitlines()[0][:50])  # a killed run's last write
    assert len(read_records(path)) == 3
    _end_with_newline(path)
    assert path.read_bytes() == whole, "cut, to be redone"
    path.write_bytes(whole.rstrip(b"\n"))  # a whole last record without its newline
    _end_with_newline(path)
    assert path.read_bytes() == whole and len(read_records(path)) == 3, "kept, and the next append starts a line"
    packed = tmp_path / "records.jsonl.gz"
    packed.write_bytes(gzip.compress(whole))
    _end_with_newline(packed)
    assert len(read_records(packed)) == 3, "a gzipped file is never cut"
    lines = whole.splitlines()
    broken = orjson.loads(lines[1])
    del broken["question"]
    path.write_bytes(b"\n".join([lines[0], orjson.dumps(broken), lines[2]]) + b"\n")
    with pytest.raises(DatasetError, match=rf"{path}:2 is not a calibration record: question: Field required"):
        read_records(path)


def _table(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "eval_name", "a", "a|total_cost", "b", "b|total_cost"])
        writer.writerows(rows)
    return path


def test_routerbench_faults_name_their_file_line_and_column(tmp_path: Path) -> None:
    good = _table(tmp_path / "good.csv", [["q1", "arc", "1", "0.1", "0", "0.2"]])
    short = _table(tmp_path / "short.csv", [["q2", "arc", "1"], ["q3", "arc", "0", "0.1", "1", "0.3"]])
    table = load_routerbench([good, short])
    assert table.prompts == ("q1", "q3") and table.dropped == 1, "a short row is incomplete: left out and counted"
    bad = _table(tmp_path / "bad.csv", [["q4", "arc", "1", "0.1", "0", "0.2"], ["q5", "arc", "yes", "0.1", "0", "0.2"]])
    with pytest.raises(DatasetError, match=rf"{bad}, row 2: column 'a' is not a number: 'yes'"):
        load_routerbench([good, bad])
    with pytest.raises(DatasetError, match=r"no columns for the train files' models \['c'\]"):
        _aligned(table, ["a", "c"])
    unscored = tmp_path / "unscored.csv"
    unscored.write_text("prompt,a|total_cost\nq,0.1\n")
    with pytest.raises(DatasetError, match=r"no score column for \['a'\]"):
        load_routerbench([unscored])


def test_fit_deferral_fits_on_the_label_it_is_given() -> None:
    """Small answers all right by token F1 but not by exact match: fitting on F1 has no wrong answer
    to learn from (``cascade fit --label f1`` used to fit on exact match regardless)."""
    from pipelines.fit import fit_deferral

    records = synthetic(300)
    for record in records:
        record.tiers[0].f1 = 1.0
    fit_deferral(records, metric="exact_match")
    with pytest.raises(ValueError, match="one class"):
        fit_deferral(records, metric="f1")


def test_the_summary_counts_the_records_left_out_and_a_method_missing_from_splits(tmp_path: Path) -> None:
    from pipelines.protocol import markdown

    records = synthetic(300)
    for record in records[:7]:
        record.error = "prompt longer than the model's context"
    summary = run_protocol(Data.of(records), splits=3, bootstrap=20)
    assert summary["n"] == 293 and summary["left_out"] == 7
    summary["methods"]["learned logistic (small wrong)"]["audc"]["splits"] = 2  # as when one fit part had one class
    text = markdown(summary, "t")
    assert "(7 records left out" in text and "| learned logistic (small wrong) (2 of 3 splits) |" in text
    assert "| random |" in text

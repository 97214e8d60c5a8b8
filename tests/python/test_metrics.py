"""llmdbg.metrics against scikit-learn's own report and hand-counted error groups."""

from __future__ import annotations

import numpy as np
import pytest

from llmdbg import metrics


def test_classification_report_matches_sklearn():
    # Imported here, not at collection: scikit-learn loads its own libgomp, and
    # test_build.py checks that only torch's OpenMP runtime is loaded.
    from sklearn.metrics import classification_report as sk_report

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 4, 300))
    pred[pred == 3] = 2  # class 3 is never predicted: precision 0, not a crash
    r = metrics.classification_report(y, pred)
    ref = sk_report(y, pred, output_dict=True, zero_division=0)
    assert r.accuracy == pytest.approx(ref["accuracy"])
    for k in range(4):
        for col, key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert r.per_class.loc[k, col] == pytest.approx(ref[str(k)][key])
        assert r.per_class.loc[k, "support"] == ref[str(k)]["support"]
    for avg, name in ((r.macro, "macro avg"), (r.weighted, "weighted avg")):
        assert avg["f1"] == pytest.approx(ref[name]["f1-score"])
        assert avg["precision"] == pytest.approx(ref[name]["precision"])
    np.testing.assert_array_equal(
        r.confusion, np.array([[np.sum((y == i) & (pred == j)) for j in range(4)] for i in range(4)])
    )
    assert list(r.to_frame().index[-2:]) == ["macro avg", "weighted avg"]
    fig = r.plot()
    assert len(fig.axes) >= 2
    assert "accuracy" in r._repr_html_()


def test_classification_report_labels_and_strings():
    r = metrics.classification_report(["pos", "neg", "pos"], ["pos", "pos", "pos"], labels=["pos", "neg"])
    assert r.labels == ["pos", "neg"] and r.confusion.tolist() == [[2, 0], [1, 0]]


@pytest.mark.parametrize(
    "a, b, exc", [([0, 1], [0], ValueError), ([[0, 1]], [[0, 1]], ValueError), ([], [], ValueError)]
)
def test_classification_report_bad_input(a, b, exc):
    with pytest.raises(exc):
        metrics.classification_report(a, b)


def test_error_analysis_groups():
    texts = [
        "good movie",
        "bad movie",
        "not good at all, really",
        "great",
        "not bad",
        "awful not fun at all",
        "fine",
        "not great",
    ]
    y = ["pos", "neg", "neg", "pos", "pos", "neg", "pos", "neg"]
    p = ["pos", "neg", "pos", "pos", "neg", "neg", "pos", "pos"]
    ea = metrics.error_analysis(texts, y, p, n_buckets=2)
    assert len(ea.errors) == 3
    pairs = {(r.true, r.pred): r.errors for r in ea.by_pair.itertuples()}
    assert pairs == {("neg", "pos"): 2, ("pos", "neg"): 1}
    assert ea.by_pair["share"].sum() == pytest.approx(1.0)
    assert ea.by_length["n"].sum() == len(texts) and ea.by_length["errors"].sum() == 3
    # "not" is in all 3 errors and in 1 of 5 correct examples: the most over-represented token.
    assert ea.tokens.iloc[0]["token"] == "not" and ea.tokens.iloc[0]["in_errors"] == 3


def test_error_analysis_with_tokenizer_and_bad_input():
    ea = metrics.error_analysis(["a b", "a c", "b"], [0, 1, 1], [1, 1, 0], tokenizer=str.split, min_count=1)
    assert set(ea.errors["length"]) == {2, 1}
    with pytest.raises(ValueError, match="lengths"):
        metrics.error_analysis(["a"], [0, 1], [0, 1])
    with pytest.raises(TypeError, match="texts"):
        metrics.error_analysis("abc", [0], [0])
    with pytest.raises(TypeError, match="tokenizer"):
        metrics.error_analysis(["a"], [0], [0], tokenizer=3)

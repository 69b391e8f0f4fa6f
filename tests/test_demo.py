"""The demo: the book models trained, their serial and parallel predictions
timed and compared."""

import io

import numpy as np
from sklearn.utils.validation import check_is_fitted

from sklearn_parpredict import ParallelPredictor, _demo
from sklearn_parpredict._demo import DemoResult, _compare, _format_table, run_demo
from sklearn_parpredict.datasets import GENRE_FEATURES, LANGUAGE_FEATURES


def test_demo_fails_when_predictions_differ(monkeypatch):
    def wrong_predict(self, X):
        y = self.estimator.predict(X)
        return np.roll(y, 1)

    monkeypatch.setattr(ParallelPredictor, "predict", wrong_predict)
    out, err = io.StringIO(), io.StringIO()
    assert run_demo(500, n_jobs=2, out=out, err=err) == 1
    assert " NO" in out.getvalue()
    assert "the parallel predictions of the genre model" in err.getvalue()
    assert "the parallel predictions of the language model" in err.getvalue()
    assert "predictions differ" in err.getvalue()


def test_sections_get_the_trained_models(monkeypatch):
    seen = []

    def section(books, models, n_jobs):
        seen.append((books, models, n_jobs))
        return [DemoResult("extra", "Spy", len(books), 1.0, 0.5, True)]

    monkeypatch.setattr(_demo, "DEMO_SECTIONS", [*_demo.DEMO_SECTIONS, section])
    out = io.StringIO()
    assert run_demo(300, n_jobs=1, out=out) == 0
    assert "n_jobs=1 (1 worker)" in out.getvalue()
    assert out.getvalue().splitlines()[-1].split() == [
        "extra",
        "Spy",
        "300",
        "1.000",
        "0.500",
        "2.00x",
        "yes",
    ]
    [(books, models, n_jobs)] = seen
    assert books.shape[0] == 300 and n_jobs == 1
    assert [(features, target) for _, features, target in models] == [
        (GENRE_FEATURES, "genre"),
        (LANGUAGE_FEATURES, "language"),
    ]
    for model, features, target in models:
        check_is_fitted(model)
        assert list(model.feature_names_in_) == features
        assert set(model.classes_) <= set(books[target].cat.categories)


def test_compare():
    a = np.array(["x", "y", "z"], dtype=object)
    assert _compare(a, a.copy()) == (True, "")
    equal, detail = _compare(a, np.array(["x", "y", "y"], dtype=object))
    assert not equal and detail == "1 of 3 predictions differ"
    equal, detail = _compare(a, a[:2])
    assert not equal and "shape" in detail
    equal, detail = _compare(np.arange(3), np.arange(3.0))
    assert not equal and "dtype" in detail


def test_format_table_aligns_columns():
    results = [
        DemoResult("genre", "RandomForestClassifier", 1_000_000, 2.0, 1.0, True),
        DemoResult("language", "HGB", 10, 0.5, 0.25, False),
    ]
    lines = _format_table(results).splitlines()
    assert lines[1].split() == [
        "genre",
        "RandomForestClassifier",
        "1,000,000",
        "2.000",
        "1.000",
        "2.00x",
        "yes",
    ]
    assert lines[2].split()[-2:] == ["2.00x", "NO"]
    # Right-aligned numbers end in the same column.
    ends = {line.index(" 2.00x") + len(" 2.00x") for line in lines[1:]}
    assert len(ends) == 1

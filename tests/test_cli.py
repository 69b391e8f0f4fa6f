import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.utils.validation import check_is_fitted

import sklearn_parpredict
from sklearn_parpredict import ParallelPredictor, __version__, _cli
from sklearn_parpredict._cli import DemoResult, _compare, _format_table, main, run_demo
from sklearn_parpredict.datasets import GENRE_FEATURES, LANGUAGE_FEATURES

ROWS = 2_000


def _check_table(text, rows=ROWS):
    lines = text.strip().splitlines()
    assert lines[0].startswith(f"sklearn-parpredict {__version__} demo:")
    assert f"{os.cpu_count()} cores" in lines[0]
    assert lines[1].split() == [
        "model",
        "estimator",
        "rows",
        "serial",
        "s",
        "parallel",
        "s",
        "speedup",
        "equal",
    ]
    table = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(table) == {"genre", "language", "genre+language", "genre.skops"}
    for _, _, n, serial, parallel, speedup, equal in table.values():
        assert n == f"{rows:,}"
        assert float(serial) >= 0 and float(parallel) >= 0
        assert speedup.endswith("x")
        assert equal == "yes"
    assert table["genre"][1] == "RandomForestClassifier"
    assert table["genre+language"][1] == "MultiModelPredictor"
    assert table["genre.skops"][1] == "predict_file"


def test_main_demo(capsys):
    assert main(["demo", "--rows", str(ROWS), "--n-jobs", "2"]) == 0
    captured = capsys.readouterr()
    _check_table(captured.out)
    assert "n_jobs=2 (2 workers)" in captured.out
    assert captured.err == ""


def test_python_m_demo():
    env = dict(os.environ)
    # Find the package even when it is not installed.
    package_root = str(Path(sklearn_parpredict.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root, *filter(None, [env.get("PYTHONPATH")])]
    )
    completed = subprocess.run(
        [sys.executable, "-m", "sklearn_parpredict", "demo", "--rows", str(ROWS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    _check_table(completed.stdout)
    assert "n_jobs=-1" in completed.stdout


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

    monkeypatch.setattr(_cli, "DEMO_SECTIONS", [*_cli.DEMO_SECTIONS, section])
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


def test_main_returns_the_demo_status(monkeypatch):
    calls = []

    def fake_demo(rows, n_jobs):
        calls.append((rows, n_jobs))
        return 1

    monkeypatch.setattr(_cli, "run_demo", fake_demo)
    assert main(["demo", "--rows", "1_000", "--n-jobs", "-2"]) == 1
    assert main(["demo"]) == 1
    assert calls == [(1_000, -2), (_cli.DEMO_ROWS, -1)]


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


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["demo", "--rows", "0"],
        ["demo", "--rows", "ten"],
        ["demo", "--n-jobs", "0"],
        ["demo", "--n-jobs", "all"],
    ],
)
def test_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exc_info:
        main(argv)
    assert exc_info.value.code == 2
    assert "usage: sklearn-parpredict" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc_info:
        main(["--version"])
    assert exc_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sklearn-parpredict {__version__}"

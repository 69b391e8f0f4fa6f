"""The ``sklearn-parpredict`` command line: the demo run from it, its
arguments, its version."""

import os
import subprocess
import sys
from pathlib import Path

import joblib
import pytest

import sklearn_parpredict
from sklearn_parpredict import __version__, _cli
from sklearn_parpredict._cli import main

ROWS = 2_000


def _check_table(text, rows=ROWS):
    lines = text.strip().splitlines()
    assert lines[0].startswith(f"sklearn-parpredict {__version__} demo:")
    cores = joblib.cpu_count()
    assert f" {cores} core{'s' if cores != 1 else ''}," in lines[0]
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


def test_main_returns_the_demo_status(monkeypatch):
    calls = []

    def fake_demo(rows, n_jobs):
        calls.append((rows, n_jobs))
        return 1

    monkeypatch.setattr(_cli, "run_demo", fake_demo)
    assert main(["demo", "--rows", "1_000", "--n-jobs", "-2"]) == 1
    assert main(["demo"]) == 1
    assert calls == [(1_000, -2), (_cli.DEMO_ROWS, -1)]


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

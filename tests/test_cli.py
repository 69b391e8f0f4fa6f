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


# Run with an import hook that finds no such package, as where it is not
# installed (a module already imported cannot be taken away in this process).
_WITHOUT = """
import sys
missing = sys.argv.pop(1)
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NotInstalled())
from sklearn_parpredict._cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("missing", ["pandas", "pyarrow", "skops", "tqdm"])
def test_a_missing_optional_package_is_a_one_line_error(missing, tmp_path):
    import numpy as np
    from sklearn.linear_model import LinearRegression

    X = np.arange(20.0).reshape(10, 2)
    np.save(tmp_path / "rows.npy", X)
    sio = pytest.importorskip("skops.io")
    sio.dump(LinearRegression().fit(X, X[:, 0]), tmp_path / "model.skops")
    predict = ["predict", str(tmp_path / "model.skops"), str(tmp_path / "rows.npy")]
    predict += ["-o", str(tmp_path / "out.parquet")]
    env = dict(os.environ)
    package_root = str(Path(sklearn_parpredict.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root, *filter(None, [env.get("PYTHONPATH")])]
    )
    statuses = []
    for argv in (["demo", "--rows", "100", "--n-jobs", "1"], predict):
        done = subprocess.run(
            [sys.executable, "-c", _WITHOUT, missing, *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        statuses.append(done.returncode)
        if done.returncode != 0:  # not every command needs every package
            assert done.returncode == 1, done.stderr
            assert done.stderr.startswith("sklearn-parpredict: error: ")
            assert done.stderr.count("\n") == 1
            assert f"needs {missing}" in done.stderr
            assert "pip install 'sklearn-parpredict[io]'" in done.stderr
    assert 1 in statuses

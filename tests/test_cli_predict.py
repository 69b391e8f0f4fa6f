"""The ``predict`` and ``bench`` subcommands: streaming batch scoring."""

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline

import sklearn_parpredict
from sklearn_parpredict import _cli, _loading
from sklearn_parpredict._cli import main
from sklearn_parpredict._io import progress_bar
from sklearn_parpredict.datasets import GENRE_FEATURES, make_books

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
sio = pytest.importorskip("skops.io")
pytest.importorskip("tqdm")

N_BOOKS = 3_000
TREE = "sklearn.tree._tree.Tree"
PACKAGE_ROOT = str(Path(sklearn_parpredict.__file__).parents[1])
CONSOLE_SCRIPT = Path(sys.executable).with_name("sklearn-parpredict")


def _env():
    env = dict(os.environ)
    # Find the package even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_ROOT, *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def _run(*args, script=True):
    """Run the real command line in a subprocess."""
    if script:
        if not CONSOLE_SCRIPT.exists():
            pytest.skip("the sklearn-parpredict console script is not installed")
        command = [str(CONSOLE_SCRIPT)]
    else:
        command = [sys.executable, "-m", "sklearn_parpredict"]
    return subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )


@pytest.fixture(scope="module")
def books_dir(tmp_path_factory):
    """Books as Parquet, CSV and .npy, and a genre model as .skops and .joblib."""
    folder = tmp_path_factory.mktemp("books")
    books = make_books(N_BOOKS, random_state=0)
    books.insert(0, "book_id", np.arange(N_BOOKS) * 10 + 7)
    model = RandomForestClassifier(n_estimators=10, random_state=0)
    model.fit(books[GENRE_FEATURES].iloc[:1_000], books["genre"].iloc[:1_000])
    sio.dump(model, folder / "genre.skops")
    joblib.dump(model, folder / "genre.joblib")
    # Several row groups, so that batches cross row-group boundaries.
    books.to_parquet(folder / "books.parquet", row_group_size=1_000)
    books.to_csv(folder / "books.csv", index=False)
    np.save(folder / "books.npy", books[GENRE_FEATURES].to_numpy(dtype=float))
    return folder, books, model


def _no_output_left(folder, name):
    """Neither the output nor a temporary file of it is in the folder."""
    return not any(
        p.name == name or p.name.startswith(f".{name}.") for p in folder.iterdir()
    )


@pytest.mark.timeout(120)
def test_predict_parquet_matches_serial(books_dir, tmp_path):
    folder, books, model = books_dir
    out = tmp_path / "genre.parquet"
    completed = _run(
        "predict", folder / "genre.skops", folder / "books.parquet", "-o", out,
        "--trust", TREE, "--id-column", "book_id", "--batch-rows", 700,
        "--n-jobs", 2,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    # stderr is not a terminal: no progress bar, only the summary.
    assert completed.stderr == f"wrote {N_BOOKS:,} predictions to {out}\n"
    result = pd.read_parquet(out)
    assert list(result.columns) == ["book_id", "prediction"]
    np.testing.assert_array_equal(result["book_id"], books["book_id"])
    np.testing.assert_array_equal(
        result["prediction"].astype(str), model.predict(books[GENRE_FEATURES])
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["genre.parquet"]


@pytest.mark.timeout(120)
def test_predict_proba_csv_matches_serial(books_dir, tmp_path):
    folder, books, model = books_dir
    out = tmp_path / "proba.csv"
    completed = _run(
        "predict", folder / "genre.skops", folder / "books.csv", "-o", out,
        "--trust", TREE, "--method", "predict_proba", "--id-column", "book_id",
        "--batch-rows", 1_000, "--n-jobs", 1, "--quiet",
        script=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    result = pd.read_csv(out)
    assert list(result.columns) == ["book_id"] + [f"proba_{c}" for c in model.classes_]
    np.testing.assert_array_equal(result["book_id"], books["book_id"])
    expected = model.predict_proba(books[GENRE_FEATURES])
    np.testing.assert_allclose(result.iloc[:, 1:].to_numpy(), expected, rtol=1e-9)


def test_predict_npy_with_trusted_pickle(books_dir, tmp_path):
    folder, books, model = books_dir
    out = tmp_path / "genre.csv"
    status = main(
        ["predict", str(folder / "genre.joblib"), str(folder / "books.npy"),
         "-o", str(out), "--trust-pickle", "--batch-rows", "512", "--n-jobs", "1",
         "-q"]
    )  # fmt: skip
    assert status == 0
    result = pd.read_csv(out)
    assert list(result.columns) == ["prediction"]
    np.testing.assert_array_equal(
        result["prediction"], model.predict(books[GENRE_FEATURES])
    )


def test_predict_columns_option(books_dir, tmp_path):
    """--columns picks the features of a model fitted without names."""
    folder, books, _ = books_dir
    X = books[["pages", "price"]].to_numpy()
    model = LinearRegression().fit(X, books["rating"])
    sio.dump(model, tmp_path / "rating.skops")
    out = tmp_path / "rating.parquet"
    args = ["predict", str(tmp_path / "rating.skops"), str(folder / "books.parquet")]
    status = main([*args, "-o", str(out), "--columns", "pages,price", "-q"])
    assert status == 0
    result = pd.read_parquet(out)
    np.testing.assert_allclose(result["prediction"], model.predict(X), rtol=1e-9)


def _peak_rss_kib(*args):
    """Peak resident memory of the command line run in a fresh process.

    A small parent process runs the command and reads its children's peak:
    RUSAGE_CHILDREN of this test process would be the largest of every child
    it ever waited for.
    """
    code = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "assert done.returncode == 0, done.stderr\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    command = [sys.executable, "-m", "sklearn_parpredict", *map(str, args)]
    completed = subprocess.run(
        [sys.executable, "-c", code, *command],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return int(completed.stdout)


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB on Linux")
@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_memory_bounded_by_batch_not_file(tmp_path, suffix):
    rng = np.random.default_rng(0)
    names = [f"x{i}" for i in range(24)]
    train = pd.DataFrame(rng.standard_normal((1_000, len(names))), columns=names)
    model = LogisticRegression().fit(train, train["x0"] > 0)
    sio.dump(model, tmp_path / "model.skops")
    small_rows, batch_rows = 150_000, 10_000
    # The same random piece ten times: the values do not matter, only the size.
    piece = pd.DataFrame(rng.standard_normal((small_rows, len(names))), columns=names)
    paths = {}
    for rows in (small_rows, 10 * small_rows):
        path = paths[rows] = tmp_path / f"x{rows}{suffix}"
        # Written piece by piece, so that the test itself stays small too.
        if suffix == ".npy":
            array = np.lib.format.open_memmap(path, "w+", float, (rows, len(names)))
            for start in range(0, rows, small_rows):
                array[start : start + small_rows] = piece.to_numpy()
            array.flush()
            del array
        else:
            table = pa.Table.from_pandas(piece)
            # One row group for the whole file, as pandas writes up to a
            # million rows; not compressed, to write it fast.
            with pq.ParquetWriter(path, table.schema, compression="none") as writer:
                for _ in range(rows // small_rows):
                    writer.write_table(table, row_group_size=10 * small_rows)
    peaks = {
        rows: _peak_rss_kib(
            "predict",
            tmp_path / "model.skops",
            path,
            "-o",
            tmp_path / "out.parquet",
            "--n-jobs",
            1,
            "--batch-rows",
            batch_rows,
            "--quiet",
        )  # fmt: skip
        for rows, path in paths.items()
    }
    large_bytes = 10 * small_rows * len(names) * 8
    # The test means something: holding the large file's values in memory
    # once would already push the peak past the bound.
    assert large_bytes / 1024 > 0.5 * peaks[small_rows]
    assert peaks[10 * small_rows] < 1.5 * peaks[small_rows], peaks
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == 10 * small_rows


# Errors: a message, exit status 1 and no output file (nor temporary file).


def _fails(capsys, args, out, message):
    status = main([*map(str, args), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("sklearn-parpredict: error: ")
    assert message in err
    assert _no_output_left(out.parent, out.name)
    return err


def test_error_missing_input(books_dir, tmp_path, capsys):
    folder, _, _ = books_dir
    missing = tmp_path / "nope.parquet"
    _fails(
        capsys,
        ["predict", folder / "genre.skops", missing, "--trust", TREE],
        tmp_path / "out.csv",
        f"input file not found: {missing}",
    )


def test_error_missing_model(books_dir, tmp_path, capsys):
    folder, _, _ = books_dir
    _fails(
        capsys,
        ["predict", tmp_path / "nope.skops", folder / "books.csv"],
        tmp_path / "out.csv",
        "model file not found",
    )


def test_error_unknown_formats(books_dir, tmp_path, capsys):
    folder, _, _ = books_dir
    text = tmp_path / "books.txt"
    text.write_text("pages,price\n1,2\n")
    model = ["predict", folder / "genre.skops"]
    out = tmp_path / "out.csv"
    _fails(capsys, [*model, text, "--trust", TREE], out, "unknown input format '.txt'")
    _fails(
        capsys,
        [*model, folder / "books.csv", "--trust", TREE],
        tmp_path / "out.json",
        "unknown output format '.json'",
    )
    _fails(capsys, [*model[:1], text, text], out, "unknown model format '.txt'")


def test_error_unreadable_input(books_dir, tmp_path, capsys):
    folder, _, _ = books_dir
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"this is not parquet")
    _fails(
        capsys,
        ["predict", folder / "genre.skops", broken, "--trust", TREE],
        tmp_path / "out.parquet",
        f"cannot read {broken} as parquet",
    )


@pytest.mark.timeout(120)
def test_error_missing_columns_subprocess(books_dir, tmp_path):
    folder, books, _ = books_dir
    partial = tmp_path / "partial.csv"
    books.drop(columns=["price", "year"]).to_csv(partial, index=False)
    out = tmp_path / "out.csv"
    completed = _run(
        "predict", folder / "genre.skops", partial, "-o", out, "--trust", TREE
    )
    assert completed.returncode == 1
    assert completed.stderr == (
        f"sklearn-parpredict: error: {partial} lacks 2 columns needed by the "
        "model: price, year\n"
    )
    assert _no_output_left(tmp_path, out.name)


def test_error_missing_id_column(books_dir, tmp_path, capsys):
    folder, _, _ = books_dir
    _fails(
        capsys,
        ["predict", folder / "genre.skops", folder / "books.csv", "--trust", TREE,
         "--id-column", "isbn"],
        tmp_path / "out.csv",
        "id column 'isbn' is not in",
    )  # fmt: skip


def test_error_unknown_backend_before_any_row(books_dir, tmp_path, capsys, monkeypatch):
    folder, _, _ = books_dir
    loads = []
    monkeypatch.setattr(_loading, "load_model", lambda *a, **k: loads.append(a))
    err = _fails(
        capsys,
        ["predict", folder / "genre.skops", folder / "books.csv", "--trust", TREE,
         "--backend", "nope"],
        tmp_path / "out.csv",
        "cannot use --backend nope: Invalid backend: nope, expected one of [",
    )  # fmt: skip
    # Not a batch's failure ("failed on rows 0-..."), and the model not loaded.
    assert "failed on rows" not in err and not loads
    assert err.count("\n") == 1


def test_error_model_without_method(books_dir, tmp_path, capsys):
    folder, books, _ = books_dir
    model = LinearRegression().fit(books[GENRE_FEATURES], books["rating"])
    sio.dump(model, tmp_path / "rating.skops")
    _fails(
        capsys,
        ["predict", tmp_path / "rating.skops", folder / "books.csv",
         "--method", "predict_proba"],
        tmp_path / "out.csv",
        "the model (LinearRegression) has no method predict_proba",
    )  # fmt: skip


def test_error_untrusted_skops_types(books_dir, tmp_path, capsys):
    folder, _, _ = books_dir
    if TREE not in sio.get_untrusted_types(file=folder / "genre.skops"):
        pytest.skip("this skops version trusts scikit-learn's Tree by default")
    err = _fails(
        capsys,
        ["predict", folder / "genre.skops", folder / "books.csv"],
        tmp_path / "out.csv",
        f"not trusted by default: {TREE}",
    )
    assert f"pass --trust {TREE}" in err


def test_error_pickle_needs_trust(books_dir, tmp_path, capsys):
    folder, _, _ = books_dir
    err = _fails(
        capsys,
        ["predict", folder / "genre.joblib", folder / "books.csv"],
        tmp_path / "out.csv",
        "refusing to load",
    )
    assert "--trust-pickle" in err


def test_error_mid_file_leaves_nothing(books_dir, tmp_path, capsys):
    """A batch that fails after others were written: the old output stays."""
    folder, books, _ = books_dir
    bad = books.copy()
    bad["pages"] = bad["pages"].astype(float)
    bad.loc[2_500, "pages"] = np.inf
    bad.to_csv(tmp_path / "bad.csv", index=False)
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")
    status = main(
        ["predict", str(folder / "genre.skops"), str(tmp_path / "bad.csv"),
         "-o", str(out), "--trust", TREE, "--batch-rows", "1000", "-q"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 1
    assert "RandomForestClassifier.predict failed on rows 2000-2999" in err
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "out.csv"]


def test_progress_bar_only_on_terminals():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, quiet, shown in [
        (Terminal(), False, True),
        (Terminal(), True, False),
        (io.StringIO(), False, False),
    ]:
        with progress_bar(100, quiet=quiet, file=stream) as bar:
            bar.update(100)
        assert ("100/100" in stream.getvalue()) is shown


def test_bench_runs_the_benchmarks(monkeypatch):
    calls = []
    monkeypatch.setattr(_cli, "_benchmarks_available", lambda: True)
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda command: (
            calls.append(command) or subprocess.CompletedProcess(command, 0)
        ),
    )
    assert main(["bench", "--quick"]) == 0
    assert calls == [[sys.executable, "-m", "benchmarks", "--quick"]]


def test_bench_without_benchmarks(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "_benchmarks_available", lambda: False)
    assert main(["bench"]) == 1
    assert "the benchmarks package is not importable" in capsys.readouterr().err


def test_core_import_does_not_import_io_packages():
    code = (
        "import sys, sklearn_parpredict, sklearn_parpredict._cli\n"
        "heavy = {'pyarrow.parquet', 'skops', 'tqdm'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), timeout=60)


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_bar_on_a_real_terminal(books_dir, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    folder, _, _ = books_dir
    primary, secondary = pty.openpty()
    # A new pseudo-terminal is 0 columns wide: give it a real terminal's width.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    command = [sys.executable, "-m", "sklearn_parpredict", "predict"]
    args = [folder / "genre.skops", folder / "books.parquet", "-o", tmp_path / "o.csv"]
    try:
        status = subprocess.run(
            [*command, *map(str, args), "--trust", TREE, "--batch-rows", "1000"],
            stdout=subprocess.DEVNULL,
            stderr=secondary,
            env=_env(),
            timeout=120,
        ).returncode
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the terminal closed: everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
    assert status == 0
    err = b"".join(chunks).decode()
    assert f"{N_BOOKS // 1000}.00k/{N_BOOKS // 1000}.00k" in err
    assert f"wrote {N_BOOKS:,} predictions" in err


def _lines(path, text):
    path.write_text(text)
    return path


def test_csv_columns_have_the_dtypes_of_the_whole_file(tmp_path):
    """A text column whose first rows look like numbers stays text in every
    batch, as when pandas reads the whole file."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    data = _lines(tmp_path / "codes.csv", "code,x\n1,0.5\n2,1.5\n1,2\n2,3\nx,4\ny,5\n")
    frame = pd.read_csv(data)
    model = make_pipeline(OneHotEncoder(handle_unknown="ignore"), LogisticRegression())
    joblib.dump(model.fit(frame[["code"]], frame["x"] > 2), tmp_path / "m.joblib")
    out = tmp_path / "out.parquet"
    args = ["predict", str(tmp_path / "m.joblib"), str(data), "-o", str(out)]
    assert main([*args, "--trust-pickle", "-q", "--batch-rows", "2"]) == 0
    np.testing.assert_array_equal(
        pd.read_parquet(out)["prediction"], model.predict(frame[["code"]])
    )


def test_error_reading_the_input_names_it(tmp_path, capsys):
    """A malformed line (more fields than the header) fails as pandas does,
    whatever the batch size, named in one line, and leaves no output."""
    data = _lines(tmp_path / "ragged.csv", "a,b\n1,2\n3,4\n5,6,7,8\n9,10\n")
    with pytest.raises(pd.errors.ParserError):
        pd.read_csv(data)
    joblib.dump(LinearRegression().fit([[0, 1], [1, 0]], [0, 1]), tmp_path / "m.joblib")
    _fails(
        capsys,
        ["predict", tmp_path / "m.joblib", data, "--trust-pickle", "--batch-rows", "1"],
        tmp_path / "out.csv",
        f"cannot read {data} after row 0: Error tokenizing data",
    )


def test_a_stored_index_is_not_a_feature_and_may_be_the_id(tmp_path):
    frame = pd.DataFrame({"a": [0.0, 1, 2, 3], "b": [1.0, 0, 1, 0]})
    frame.index = pd.Index([10, 11, 12, 13], name="row_id")
    frame.to_parquet(tmp_path / "indexed.parquet")
    model = LinearRegression().fit(frame.to_numpy(), [0, 1, 2, 3])
    joblib.dump(model, tmp_path / "m.joblib")
    out = tmp_path / "out.csv"
    args = ["predict", str(tmp_path / "m.joblib"), str(tmp_path / "indexed.parquet")]
    assert (
        main([*args, "-o", str(out), "--trust-pickle", "-q", "--id-column", "row_id"])
        == 0
    )
    written = pd.read_csv(out)
    assert list(written["row_id"]) == [10, 11, 12, 13]
    np.testing.assert_allclose(written["prediction"], model.predict(frame.to_numpy()))


def test_an_unnamed_stored_index_is_no_column(tmp_path, capsys):
    """pandas stores an unnamed index as "__index_level_0__" and reads it
    back as the index, no column: named as a column, it is missing, one
    line (it was a KeyError traceback from the first batch)."""
    frame = pd.DataFrame({"a": [0.0, 1, 2, 3]}, index=[13, 12, 11, 10])
    data = tmp_path / "indexed.parquet"
    frame.to_parquet(data)
    assert "__index_level_0__" in pq.ParquetFile(data).schema_arrow.names
    assert "__index_level_0__" not in pd.read_parquet(data).columns
    joblib.dump(LinearRegression().fit([[0], [1]], [0, 1]), tmp_path / "m.joblib")
    args = ["predict", tmp_path / "m.joblib", data, "--trust-pickle"]
    _fails(
        capsys,
        [*args, "--id-column", "__index_level_0__"],
        tmp_path / "out.csv",
        f"id column '__index_level_0__' is not in {data}",
    )
    _fails(
        capsys,
        [*args, "--columns", "a", "__index_level_0__"],
        tmp_path / "out.csv",
        f"{data} lacks 1 column needed by --columns: __index_level_0__",
    )


def test_an_output_link_is_written_through(tmp_path):
    """An output that is a symbolic link is written where it points, as
    pandas writes it: the link was replaced by the file, and what it points
    to left as it was."""
    data = _lines(tmp_path / "in.csv", "a\n0.5\n1.5\n")
    joblib.dump(LinearRegression().fit([[0], [1]], [0, 1]), tmp_path / "m.joblib")
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "predictions.csv"
    target.write_text("old\n")
    link = tmp_path / "latest.csv"
    link.symlink_to(Path("out") / "predictions.csv")
    args = ["predict", tmp_path / "m.joblib", data, "-o", link, "--trust-pickle"]
    assert main([*map(str, args), "-q"]) == 0
    assert link.is_symlink()
    assert target.read_text().startswith("prediction\n")
    assert sorted(p.name for p in target.parent.iterdir()) == ["predictions.csv"]


def test_an_output_written_over_keeps_its_permissions(tmp_path):
    """As pandas' writers keep them, writing over a file: the output was
    given the permissions of a new file instead."""
    data = _lines(tmp_path / "in.csv", "a\n0.5\n1.5\n")
    joblib.dump(LinearRegression().fit([[0], [1]], [0, 1]), tmp_path / "m.joblib")
    out = tmp_path / "out.csv"
    out.write_text("old\n")
    out.chmod(0o604)
    args = ["predict", tmp_path / "m.joblib", data, "-o", out, "--trust-pickle"]
    assert main([*map(str, args), "-q"]) == 0
    assert out.read_text().startswith("prediction\n")
    assert out.stat().st_mode & 0o777 == 0o604
    # A new output gets a new file's permissions, not mkstemp's 0o600.
    umask = os.umask(0o022)
    try:
        new = tmp_path / "new.csv"
        assert main([*map(str, args[:-3]), "-o", str(new), "--trust-pickle", "-q"]) == 0
    finally:
        os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o644


def test_error_output_that_is_the_input_or_a_folder(books_dir, tmp_path, capsys):
    folder, books, _ = books_dir
    data = tmp_path / "books.csv"
    books.to_csv(data, index=False)
    (tmp_path / "dir.csv").mkdir()
    for out, message in [(data, "is the input"), (tmp_path / "dir.csv", "is a folder")]:
        command = ["predict", folder / "genre.skops", data, "--trust", TREE, "-o", out]
        assert main([*map(str, command), "-q"]) == 1
        assert f"sklearn-parpredict: error: the output {out} {message}" in (
            capsys.readouterr().err
        )
    assert pd.read_csv(data).shape == books.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["books.csv", "dir.csv"]


def _ids_to_parquet(tmp_path, text: str):
    """The CSV ``text`` (an id column and a feature) predicted in batches of
    two rows to Parquet: its path and the CSV's."""
    data = _lines(tmp_path / "ids.csv", text)
    joblib.dump(LinearRegression().fit([[0], [1]], [0, 1]), tmp_path / "m.joblib")
    out = tmp_path / "out.parquet"
    args = ["predict", str(tmp_path / "m.joblib"), str(data), "-o", str(out)]
    assert (
        main([*args, "--trust-pickle", "-q", "--batch-rows", "2", "--id-column", "id"])
        == 0
    )
    return out, data


def test_parquet_output_types_an_id_column_empty_in_the_first_batch(tmp_path):
    out, _ = _ids_to_parquet(tmp_path, "id,a\n,0.5\n,1.5\nk2,2\nk3,3\n")
    assert list(pd.read_parquet(out)["id"])[2:] == ["k2", "k3"]


def test_parquet_output_types_csv_bools_missing_in_the_first_batch(tmp_path):
    """True/False with values missing are bools in the whole file: a first
    batch of missing values alone was typed as text, and the later ones
    were written "false" and "true"."""
    out, data = _ids_to_parquet(tmp_path, "id,a\n,0.5\n,1.5\nFalse,2\nTrue,3\n")
    whole = pd.read_csv(data)
    expected = tmp_path / "expected.parquet"
    whole[["id"]].assign(prediction=whole["a"]).to_parquet(expected)
    assert pq.read_schema(out).field("id").type == pa.bool_()
    assert (
        pq.read_schema(out).field("id").type
        == pq.read_schema(expected).field("id").type
    )
    assert list(pd.read_parquet(out)["id"]) == [None, None, False, True]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_nullable_ids_keep_their_dtype(tmp_path, suffix):
    """A pandas nullable id column (Int64, stored so in the Parquet file's
    pandas metadata) is written as the whole column is: a batch with a value
    missing wrote its ids as floats ("4.0") where the others and the serial
    output write "4", and the Parquet output lost the dtype."""
    frame = pd.DataFrame(
        {
            "id": pd.array([1, 2, None, 4, 5, 6], dtype="Int64"),
            "flag": pd.array([True, False, None, True, True, False], dtype="boolean"),
            "a": [0.5, 1.5, 2.0, 3.0, 4.0, 5.0],
        }
    )
    data = tmp_path / "ids.parquet"
    frame.to_parquet(data)
    model = LinearRegression().fit([[0], [1]], [0, 1])
    joblib.dump(model, tmp_path / "m.joblib")
    read = pd.read_parquet(data)
    for id_column in ["id", "flag"]:
        out = tmp_path / f"out-{id_column}{suffix}"
        args = ["predict", tmp_path / "m.joblib", data, "-o", out, "--columns", "a"]
        args += ["--id-column", id_column, "--batch-rows", "2"]
        assert main([*map(str, args), "--trust-pickle", "-q"]) == 0
        expected = pd.DataFrame(
            {
                id_column: read[id_column],
                "prediction": model.predict(read[["a"]].to_numpy()),
            }
        )
        if suffix == ".csv":
            assert out.read_text() == expected.to_csv(index=False)
        else:
            written = pd.read_parquet(out)
            assert written[id_column].dtype == read[id_column].dtype
            pd.testing.assert_frame_equal(written, expected)


@pytest.mark.parametrize("statistics", [True, False])
def test_parquet_ids_missing_in_a_later_batch_read_as_over_the_whole_file(
    tmp_path, statistics
):
    # Written by pyarrow (as by Spark): no pandas metadata to keep Int64.
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array([1, 2, 3, None, 5, 6], pa.int64()),
            "flag": pa.array([True, False, True, True, None, False]),
            "a": pa.array([0.5, 1.5, 2.0, 3.0, 4.0, 5.0]),
        }
    )
    data = tmp_path / "ids.parquet"
    pq.write_table(table, data, row_group_size=3, write_statistics=statistics)
    model = LinearRegression().fit([[0], [1]], [0, 1])
    joblib.dump(model, tmp_path / "m.joblib")
    whole = pd.read_parquet(data)
    predictions = model.predict(whole[["a"]].to_numpy())
    for id_column in ("id", "flag"):
        out = tmp_path / f"{id_column}.csv"
        args = ["predict", tmp_path / "m.joblib", data, "-o", out, "--columns", "a"]
        args += ["--trust-pickle", "-q", "--batch-rows", "3", "--id-column", id_column]
        assert main(list(map(str, args))) == 0
        # Word for word what the whole file read at once gives: 1.0 ... in
        # every batch, not 1 in the batch without a missing id.
        expected = whole[[id_column]].assign(prediction=predictions)
        assert out.read_text() == expected.to_csv(index=False)


def test_npy_columns_are_the_positions_given_in_their_order(books_dir, tmp_path):
    folder, books, _ = books_dir
    X = books[["pages", "price", "rating"]].to_numpy(dtype=float)
    model = LinearRegression().fit(X[:, [2, 0]], books["accent_rate"])
    joblib.dump(model, tmp_path / "m.joblib")
    for order in ("C", "F"):
        np.save(tmp_path / "X.npy", np.asarray(X, order=order))
        out = tmp_path / f"{order}.csv"
        args = ["predict", tmp_path / "m.joblib", tmp_path / "X.npy", "-o", out]
        args += ["--trust-pickle", "-q", "--columns", "2,0", "--batch-rows", "700"]
        assert main(list(map(str, args))) == 0
        np.testing.assert_allclose(
            pd.read_csv(out)["prediction"], model.predict(X[:, [2, 0]]), rtol=1e-9
        )


def test_error_a_first_line_with_a_field_more_than_the_header(tmp_path, capsys):
    # pandas would take the first column for an index, and shift the others.
    data = _lines(tmp_path / "shifted.csv", "a,b\n0.5,1,9\n2,3,4\n")
    joblib.dump(LinearRegression().fit([[0, 1], [1, 0]], [0, 1]), tmp_path / "m.joblib")
    _fails(
        capsys,
        ["predict", tmp_path / "m.joblib", data, "--trust-pickle"],
        tmp_path / "out.csv",
        "does not match length of data",
    )


def test_csv_true_false_with_values_missing_late_reads_as_bools(tmp_path):
    # Missing values only past the dtype pass's first part: the parts infer
    # bool and object (bools and NaN), as the whole file reads them.
    n = 100_100
    flag = np.where(np.arange(n) % 3 == 0, "True", "False").astype(object)
    flag[-10:] = ""
    x = np.arange(n) % 7
    path = tmp_path / "flags.csv"
    path.write_text("flag,x\n" + "".join(f"{f},{v}\n" for f, v in zip(flag, x)))
    frame = pd.read_csv(path)
    model = make_pipeline(SimpleImputer(strategy="most_frequent"), LinearRegression())
    joblib.dump(model.fit(frame[["flag", "x"]].astype(float), x), tmp_path / "m.joblib")
    out = tmp_path / "out.parquet"
    args = ["predict", tmp_path / "m.joblib", path, "-o", out, "--trust-pickle", "-q"]
    assert main(list(map(str, args))) == 0
    np.testing.assert_allclose(
        pd.read_parquet(out)["prediction"],
        model.predict(frame[["flag", "x"]]),
        rtol=1e-9,
    )


def test_error_an_output_folder_that_cannot_be_written(books_dir, tmp_path, capsys):
    folder, _, _ = books_dir
    locked = tmp_path / "locked"
    locked.mkdir()
    args = ["predict", folder / "genre.skops", folder / "books.csv", "--trust", TREE]

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # (As root, a folder's permissions would not stop the write.)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", refuse)
        _fails(capsys, args, locked / "out.csv", f"cannot write to {locked}")


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    "signum, status, message",
    [
        (signal.SIGINT, 130, "sklearn-parpredict: interrupted"),
        (signal.SIGTERM, 143, ""),
    ],
)
def test_a_run_stopped_by_a_signal_leaves_the_old_output(
    books_dir, tmp_path, signum, status, message
):
    folder, books, _ = books_dir
    big = tmp_path / "big.csv"
    pd.concat([books] * 20).to_csv(big, index=False)
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")
    if not CONSOLE_SCRIPT.exists():
        pytest.skip("the sklearn-parpredict console script is not installed")
    proc = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "predict", str(folder / "genre.skops"), str(big),
         "-o", str(out), "--trust", TREE, "--batch-rows", "20", "--n-jobs", "1"],
        stderr=subprocess.PIPE, text=True, env=_env(),
        # A shell started in the background ignores SIGINT for its children.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    # Until the temporary output holds rows: the run is under way.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
        p.name.startswith(".out.csv.") and p.stat().st_size for p in tmp_path.iterdir()
    ):
        time.sleep(0.05)
    proc.send_signal(signum)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == status
    assert err.strip() == message  # one line, no traceback
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv", "out.csv"]


# Batches read as the whole file reads: the values each column holds, their
# Python types and dtypes, whatever the batch size and however many parts the
# dtype pass reads.
WHOLE_FILE_CSV = {
    "bools with a value missing": "flag,x\nTrue,1\nFalse,2\n,3\nTrue,4\n",
    "an integer past 64 bits": "a\n1\n2\n-9223372036854775809\n4\n",
    "text that looks like numbers first": "a\n01\n02\nx\n03\n",
    "integers, one missing": "a,b\n1,1\n,2\n2,3\n3,4\n",
    "bools with a value missing, then numbers": "a,b\nTrue,1\n,2\n1,3\n2,4\n",
    "an integer past 64 bits, then bools": "a\n99999999999999999999\n1\nTrue\nFalse\n",
    "an integer past 64 bits, then decimals": "a\n99999999999999999999\n1\n1.5\n2\n",
    "every value missing": "a,b\n,1\n,2\n,3\n",
    "integers past int64 last": "a\n1\n2\n3\n9223372036854775813\n",
    "negative integers, then past int64": "a\n-1\n2\n3\n9223372036854775813\n",
    "bools, then text": "a\nTrue\nFalse\nTrue\nx\n",
    "bools, then one missing": "a,b\nTrue,1\nTrue,2\nFalse,3\n,4\n",
    "integers, then floats": "a\n1\n2\n3\n4.5\n",
}


@pytest.mark.parametrize("text", WHOLE_FILE_CSV.values(), ids=WHOLE_FILE_CSV.keys())
@pytest.mark.parametrize("part_rows", [2, 100_000])
def test_csv_batches_hold_what_the_whole_file_holds(
    tmp_path, monkeypatch, text, part_rows
):
    from sklearn_parpredict import _readers as _io

    # Parts of 2 rows: the dtype pass merges what parts of a large file find.
    monkeypatch.setattr(_io, "_DTYPE_PASS_ROWS", part_rows)
    path = _lines(tmp_path / "t.csv", text)
    whole = pd.read_csv(path)
    for batch_rows in (1, 2, 3):
        batches = list(_io.open_input(path).batches(None, batch_rows))
        read = pd.concat(batches, ignore_index=True)
        for name in whole.columns:
            assert read[name].dtype == whole[name].dtype, (name, batch_rows)
            assert list(map(type, read[name])) == list(map(type, whole[name]))
            pd.testing.assert_series_equal(read[name], whole[name])


def test_csv_bools_with_a_value_missing_reach_the_model_as_bools(tmp_path):
    # Read with dtype=object, they reached the model as the text "True" and
    # "False": every prediction 1 where the serial answer is 1 0 1 1.
    from sklearn.preprocessing import OneHotEncoder
    from sklearn.tree import DecisionTreeClassifier

    data = _lines(tmp_path / "b.csv", "flag,x\nTrue,1\nFalse,2\n,3\nTrue,4\n")
    frame = pd.read_csv(data)
    model = make_pipeline(
        OneHotEncoder(handle_unknown="ignore"), DecisionTreeClassifier(random_state=0)
    ).fit(frame[["flag"]], [1, 0, 1, 1])
    joblib.dump(model, tmp_path / "m.joblib")
    for batch_rows in ("1", "4"):
        out = tmp_path / f"out{batch_rows}.csv"
        args = ["predict", str(tmp_path / "m.joblib"), str(data), "-o", str(out)]
        assert main([*args, "--trust-pickle", "-q", "--batch-rows", batch_rows]) == 0
        assert pd.read_csv(out)["prediction"].tolist() == [1, 0, 1, 1]


def test_parquet_with_column_labels_that_are_not_text(tmp_path):
    # pd.DataFrame(X).to_parquet(): labels 0, 1, 2, named "0", "1", "2".
    frame = pd.DataFrame(np.arange(12.0).reshape(4, 3))
    try:
        frame.to_parquet(tmp_path / "X.parquet")
    except ValueError as exc:  # pandas < 2: "must have string column names"
        pytest.skip(f"this pandas cannot write such a file: {exc}")
    model = LinearRegression().fit(frame.to_numpy(), [1, 2, 3, 4])
    joblib.dump(model, tmp_path / "m.joblib")
    args = ["predict", str(tmp_path / "m.joblib"), str(tmp_path / "X.parquet")]
    args += ["--trust-pickle", "-q", "--batch-rows", "3"]
    out = tmp_path / "out.csv"
    assert main([*args, "-o", str(out)]) == 0
    np.testing.assert_allclose(pd.read_csv(out)["prediction"], model.predict(frame))
    assert (
        main([*args, "-o", str(out), "--columns", "0", "1", "2", "--id-column", "1"])
        == 0
    )
    assert pd.read_csv(out)["1"].tolist() == frame[1].tolist()


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_multi_output_probabilities_named_and_clashing_as_single_output(
    tmp_path, capsys
):
    from sklearn.tree import DecisionTreeClassifier

    X = np.arange(8.0).reshape(4, 2)
    model = DecisionTreeClassifier(random_state=0).fit(X, [[0, 1], [1, 0]] * 2)
    joblib.dump(model, tmp_path / "m.joblib")
    data = tmp_path / "X.csv"
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "log_proba_0_0": [7, 8, 9, 10]}).to_csv(
        data, index=False
    )
    args = ["predict", tmp_path / "m.joblib", data, "--trust-pickle", "--columns"]
    args += ["a", "b", "--method", "predict_log_proba"]
    out = tmp_path / "out.csv"
    assert main([*map(str, args), "-o", str(out), "-q"]) == 0
    assert list(pd.read_csv(out).columns) == [
        "log_proba_0_0", "log_proba_0_1", "log_proba_1_0", "log_proba_1_1"
    ]  # fmt: skip
    # The id column was overwritten by a probability column, silently.
    _fails(
        capsys,
        [*args, "--id-column", "log_proba_0_0"],
        tmp_path / "clash.csv",
        "output column 'log_proba_0_0' clashes with the id column",
    )


def test_a_transform_to_a_dataframe_keeps_each_column_dtype(tmp_path):
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import StandardScaler

    frame = pd.DataFrame({"f": [0.5, 1.5, 2.5], "i": [1, 2, 3]})
    data = tmp_path / "X.csv"
    frame.to_csv(data, index=False)
    model = ColumnTransformer(
        [("scaled", StandardScaler(), ["f"])], remainder="passthrough"
    ).set_output(transform="pandas")
    joblib.dump(model.fit(frame), tmp_path / "m.joblib")
    out = tmp_path / "out.csv"
    args = ["predict", tmp_path / "m.joblib", data, "-o", out, "--trust-pickle", "-q"]
    assert main([*map(str, args), "--method", "transform", "--batch-rows", "2"]) == 0
    # 1, 2, 3 as the whole frame writes them, not 1.0, 2.0, 3.0.
    assert out.read_text() == model.transform(frame).to_csv(index=False)


def test_parquet_id_column_missing_in_the_whole_first_batch_keeps_its_type(
    tmp_path,
):
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "flag": [None, None, True, False],
            "price": pa.array([None, None, decimal.Decimal("1.50"), None]),
            "x": [1.0, 2.0, 3.0, 4.0],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    joblib.dump(LinearRegression().fit([[0.0], [1.0]], [0, 1]), tmp_path / "m.joblib")
    for id_column in ("flag", "price"):
        out = tmp_path / f"{id_column}.parquet"
        args = ["predict", tmp_path / "m.joblib", tmp_path / "in.parquet", "-o", out]
        args += ["--trust-pickle", "-q", "--batch-rows", "2", "--columns", "x"]
        assert main([*map(str, args), "--id-column", id_column]) == 0
        written = pq.read_table(out).column(id_column)
        assert written.type == table.schema.field(id_column).type  # not text
        assert written.to_pylist() == table.column(id_column).to_pylist()


def test_an_error_over_several_lines_is_printed_on_one(tmp_path, capsys):
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.0, 1.0, 0.0]})
    joblib.dump(LinearRegression().fit(frame, [1, 2, 3]), tmp_path / "m.joblib")
    data = tmp_path / "X.csv"
    frame.to_csv(data, index=False)
    err = _fails(
        capsys,
        ["predict", tmp_path / "m.joblib", data, "--trust-pickle", "--columns", "a"],
        tmp_path / "out.csv",
        "passed during fit. Feature names seen at fit time, yet now missing: - b",
    )
    assert err.count("\n") == 1


def _times(*texts):
    """A column of datetimes or, for texts with "days", timedeltas."""
    if "days" in texts[0]:
        return pd.Series([pd.Timedelta(t) if t else pd.NaT for t in texts])
    return pd.Series([pd.Timestamp(t) if t else pd.NaT for t in texts])


@pytest.mark.parametrize(
    "times",
    [
        _times("2020-01-01", "2020-01-02 10:00", "", "2020-01-03"),
        _times("2020-01-01", "2020-01-02", "2020-01-02 10:00:00.5", ""),
        _times("1 days", "2 days", "1 days 00:00:01.5", ""),
        _times("2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04"),
        # With a time zone, written with a time of day throughout, and the
        # decimals of the finest (pandas 2 and later).
        _times("2020-01-01", "2020-01-02", "2020-01-02 10:00:00.5", "").dt.tz_localize(
            "Europe/Paris"
        ),
        _times("2020-01-01", "2020-01-02", "2020-01-02 23:30:00.25", "")
        .dt.tz_localize("UTC")
        .dt.tz_convert("Asia/Kolkata"),
    ],
    ids=[
        "a time of day",
        "milliseconds",
        "timedeltas",
        "dates only",
        "a time zone",
        "another time zone",
    ],
)
def test_a_parquet_id_of_times_is_written_as_the_whole_file_writes_it(tmp_path, times):
    # pandas writes a column of times as wide as its widest value needs: a
    # batch of midnights alone was written 2020-01-01 where the whole file
    # writes 2020-01-01 00:00:00.
    frame = pd.DataFrame({"t": times, "x": [1.0, 2.0, 3.0, 4.0]})
    frame.to_parquet(tmp_path / "in.parquet")
    joblib.dump(LinearRegression().fit([[0.0], [1.0]], [0, 1]), tmp_path / "m.joblib")
    whole = pd.read_parquet(tmp_path / "in.parquet")
    model = joblib.load(tmp_path / "m.joblib")
    expected = whole[["t"]].assign(prediction=model.predict(whole[["x"]].to_numpy()))
    for batch_rows in ("1", "2", "4"):
        out = tmp_path / f"out{batch_rows}.csv"
        args = ["predict", tmp_path / "m.joblib", tmp_path / "in.parquet", "-o", out]
        args += ["--trust-pickle", "-q", "--columns", "x", "--id-column", "t"]
        assert main([*map(str, args), "--batch-rows", batch_rows]) == 0
        assert out.read_text() == expected.to_csv(index=False), batch_rows

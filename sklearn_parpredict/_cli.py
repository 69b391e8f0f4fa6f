"""The ``sklearn-parpredict`` command line."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from sklearn_parpredict import __version__

# Default number of books in the demo: big enough that parallel prediction pays
# off, small enough that the demo takes well under a minute on two cores.
DEMO_ROWS = 200_000
# The models are trained on at most this many rows and predict all of them:
# batch inference is the step the demo measures, not training.
DEMO_TRAIN_ROWS = 20_000
# Timed runs per measurement, after one warm-up call; the median is reported.
DEMO_REPEATS = 3


@dataclass
class DemoResult:
    """One line of the demo's table."""

    model: str
    estimator: str
    rows: int
    serial_s: float
    parallel_s: float
    equal: bool
    detail: str = ""


def _timed(func: Callable[[], object], repeats: int = DEMO_REPEATS):
    """Return ``func()``'s output and the median time of ``repeats`` runs.

    One untimed warm-up call comes first, so that one-off costs (starting the
    worker pool, sending the model to it) are not counted.
    """
    output = func()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return output, statistics.median(times)


def _compare(serial, parallel) -> tuple[bool, str]:
    serial, parallel = np.asarray(serial), np.asarray(parallel)
    if serial.shape != parallel.shape or serial.dtype != parallel.dtype:
        return False, (
            f"serial gave shape {serial.shape} dtype {serial.dtype}, parallel "
            f"gave shape {parallel.shape} dtype {parallel.dtype}"
        )
    if np.array_equal(serial, parallel):
        return True, ""
    n_diff = int(np.sum(serial != parallel))
    return False, f"{n_diff} of {serial.shape[0]} predictions differ"


def _measure(model, estimator, rows, serial, parallel) -> DemoResult:
    """Time the ``serial`` and ``parallel`` calls and compare their outputs."""
    serial_out, serial_s = _timed(serial)
    parallel_out, parallel_s = _timed(parallel)
    equal, detail = _compare(serial_out, parallel_out)
    return DemoResult(model, estimator, rows, serial_s, parallel_s, equal, detail)


def _train_book_models(books, n_jobs):
    """The tutorial's genre and language models, as ``(model, features, target)``.

    The tuples are in the form :class:`MultiModelPredictor` takes.
    """
    from sklearn.ensemble import RandomForestClassifier

    from sklearn_parpredict.datasets import GENRE_FEATURES, LANGUAGE_FEATURES

    train = books.iloc[:DEMO_TRAIN_ROWS]
    models = []
    for features, target in [
        (GENRE_FEATURES, "genre"),
        (LANGUAGE_FEATURES, "language"),
    ]:
        model = RandomForestClassifier(n_estimators=100, n_jobs=n_jobs, random_state=0)
        model.fit(train[features], train[target])
        # Training uses n_jobs too; prediction is then reset to one thread so
        # that the serial baseline really is serial.
        model.set_params(n_jobs=1)
        models.append((model, features, target))
    return models


def _demo_single_models(books, models, n_jobs) -> list[DemoResult]:
    """Each model's predict, serial and split by rows with ParallelPredictor."""
    from sklearn_parpredict import ParallelPredictor

    results = []
    for model, features, target in models:
        X = books[features]
        wrapped = ParallelPredictor(model, n_jobs=n_jobs)
        results.append(
            _measure(
                target,
                type(model).__name__,
                len(X),
                lambda model=model, X=X: model.predict(X),
                lambda wrapped=wrapped, X=X: wrapped.predict(X),
            )
        )
    return results


def _demo_all_models(books, models, n_jobs) -> list[DemoResult]:
    """The tutorial's several models on the same rows: a serial loop, model
    by model, against one MultiModelPredictor call."""
    import pandas as pd

    from sklearn_parpredict import MultiModelPredictor

    def serial():
        return pd.DataFrame(
            {
                target: model.predict(books[features])
                for model, features, target in models
            },
            index=books.index,
        )

    together = MultiModelPredictor(models, n_jobs=n_jobs)
    return [
        _measure(
            "+".join(target for _, _, target in models),
            "MultiModelPredictor",
            len(books),
            serial,
            lambda: together.predict(books),
        )
    ]


def _demo_batch_scoring(books, models, n_jobs) -> list[DemoResult]:
    """The production job: a saved model scores a file batch by batch, as
    ``sklearn-parpredict predict`` does, on one worker and on ``n_jobs``.

    Skipped when the ``io`` extra (pyarrow, skops) is not installed.
    """
    try:
        import pyarrow  # noqa: F401
        import skops.io as sio
    except ImportError:
        return []
    import tempfile
    from pathlib import Path

    import pandas as pd

    from sklearn_parpredict._io import predict_file
    from sklearn_parpredict._loading import load_model

    model, features, target = models[0]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = folder / "books.parquet"
        books[features].rename_axis("book_id").reset_index().to_parquet(data)
        saved = folder / f"{target}.skops"
        sio.dump(model, saved)
        # The demo wrote the file itself, so it may trust what is in it.
        loaded = load_model(saved, trusted=sio.get_untrusted_types(file=saved))

        def score(n_workers):
            def run():
                out = folder / f"scored-{n_workers}.parquet"
                predict_file(
                    loaded, data, out, n_jobs=n_workers, id_column="book_id", quiet=True
                )
                return pd.read_parquet(out)

            return run

        return [
            _measure(
                f"{target}.skops",
                "predict_file",
                len(books),
                score(1),
                score(n_jobs),
            )
        ]


# The demo's sections, run in order; each gets the books, the trained
# ``(model, features, target)`` tuples and n_jobs, and returns its table
# lines.
DEMO_SECTIONS: list[Callable[..., list[DemoResult]]] = [
    _demo_single_models,
    _demo_all_models,
    _demo_batch_scoring,
]


def _format_table(results: Sequence[DemoResult]) -> str:
    header = (
        "model",
        "estimator",
        "rows",
        "serial s",
        "parallel s",
        "speedup",
        "equal",
    )
    lines = [
        (
            r.model,
            r.estimator,
            f"{r.rows:,}",
            f"{r.serial_s:.3f}",
            f"{r.parallel_s:.3f}",
            f"{r.serial_s / r.parallel_s:.2f}x" if r.parallel_s > 0 else "-",
            "yes" if r.equal else "NO",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    # Names left-aligned, numbers right-aligned.
    align = ["<", "<", ">", ">", ">", ">", ">"]
    return "\n".join(
        "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths)).rstrip()
        for row in [header, *lines]
    )


def run_demo(
    rows: int = DEMO_ROWS,
    n_jobs: int = -1,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the demo: train the book models, time serial and parallel predict.

    Parameters
    ----------
    rows : int, default=DEMO_ROWS
        Number of books to generate and predict.
    n_jobs : int, default=-1
        Workers of the parallel predictions (and of training).
    out, err : text streams, default=None
        Where the table and the errors go; ``None`` means ``sys.stdout`` and
        ``sys.stderr``.

    Returns
    -------
    status : int
        0 when every parallel prediction equals the serial one, else 1.
    """
    import joblib

    from sklearn_parpredict.datasets import make_books

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    workers = joblib.effective_n_jobs(n_jobs)
    print(
        f"sklearn-parpredict {__version__} demo: {rows:,} books, "
        f"{os.cpu_count()} cores, n_jobs={n_jobs} "
        f"({workers} worker{'s' if workers != 1 else ''})",
        file=out,
        flush=True,
    )
    books = make_books(rows, random_state=0)
    models = _train_book_models(books, n_jobs)
    results = []
    for section in DEMO_SECTIONS:
        results.extend(section(books, models, n_jobs))
    print(_format_table(results), file=out, flush=True)

    failed = [r for r in results if not r.equal]
    for r in failed:
        print(
            f"error: the parallel predictions of the {r.model} model "
            f"({r.estimator}) differ from the serial ones: {r.detail}",
            file=err,
        )
    return 1 if failed else 0


def _positive_int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {value}")
        return value

    return parse


def _n_jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not a valid n_jobs; use -1 for all")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sklearn-parpredict",
        description="Parallel batch prediction for scikit-learn estimators.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="time serial and parallel predict on synthetic books",
        description=(
            "Generate synthetic books, train a genre and a language model, and "
            "time each model's predict serially and with ParallelPredictor. "
            "Exits with status 1 if the parallel predictions differ."
        ),
    )
    demo.add_argument(
        "--rows",
        type=_positive_int(100),
        default=DEMO_ROWS,
        help=f"number of books to predict (default: {DEMO_ROWS:,})",
    )
    demo.add_argument(
        "--n-jobs",
        type=_n_jobs,
        default=-1,
        help="number of workers, -1 for all cores (default: -1)",
    )
    demo.set_defaults(run=lambda args: run_demo(args.rows, args.n_jobs))
    _add_predict(commands)
    _add_bench(commands)
    return parser


def _add_predict(commands) -> None:
    from sklearn_parpredict._io import DEFAULT_BATCH_ROWS
    from sklearn_parpredict._parallel_predictor import PARALLEL_METHODS

    predict = commands.add_parser(
        "predict",
        help="score a Parquet, CSV or .npy file with a saved model",
        description=(
            "Read INPUT in batches of rows, predict each batch in parallel "
            "with the model saved in MODEL, and write the predictions to "
            "OUTPUT (Parquet or CSV) in the input's row order. Memory is "
            "bounded by the batch size; OUTPUT is written only if every row "
            "was scored."
        ),
    )
    predict.add_argument(
        "model",
        metavar="MODEL",
        help="a .skops file (or .pkl/.joblib with --trust-pickle)",
    )
    predict.add_argument(
        "input", metavar="INPUT", help="the rows to score: .parquet, .csv or .npy"
    )
    predict.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="where to write the predictions: .parquet or .csv",
    )
    predict.add_argument(
        "--method",
        choices=PARALLEL_METHODS,
        default="predict",
        metavar="METHOD",
        help="the model's method to call: "
        + ", ".join(PARALLEL_METHODS)
        + " (default: predict)",
    )
    predict.add_argument(
        "--n-jobs",
        type=_n_jobs,
        default=-1,
        help="number of workers, -1 for all cores (default: -1)",
    )
    predict.add_argument(
        "--backend",
        default=None,
        help="a joblib backend: loky, threading, multiprocessing, ... "
        "(default: threads or loky processes, whichever is measured faster)",
    )
    predict.add_argument(
        "--batch-rows",
        type=_positive_int(1),
        default=DEFAULT_BATCH_ROWS,
        help=f"rows read and predicted at a time (default: {DEFAULT_BATCH_ROWS:,})",
    )
    predict.add_argument(
        "--columns",
        nargs="+",
        metavar="COL",
        help="the feature columns, names or, for .npy, positions (default: the "
        "model's feature names, else every column but the id column)",
    )
    predict.add_argument(
        "--id-column",
        metavar="COL",
        help="an input column copied to the output, first, next to each prediction",
    )
    predict.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="TYPE",
        help="a type the .skops file may contain beyond skops's defaults (repeatable)",
    )
    predict.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickle/joblib MODEL: this runs any code it holds",
    )
    predict.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar on stderr"
    )
    predict.set_defaults(run=_run_predict)


def _run_predict(args) -> int:
    from sklearn_parpredict._io import predict_file
    from sklearn_parpredict._loading import load_model

    model = load_model(args.model, trusted=args.trust, trust_pickle=args.trust_pickle)
    # "a,b c" and "a b c" both name three columns.
    columns = None
    if args.columns:
        columns = [c for text in args.columns for c in text.split(",") if c]
    n_rows = predict_file(
        model,
        args.input,
        args.output,
        method=args.method,
        n_jobs=args.n_jobs,
        backend=args.backend,
        batch_rows=args.batch_rows,
        columns=columns,
        id_column=args.id_column,
        quiet=args.quiet,
    )
    if not args.quiet:
        print(f"wrote {n_rows:,} predictions to {args.output}", file=sys.stderr)
    return 0


def _benchmarks_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("benchmarks") is not None


def _add_bench(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="run the benchmark suite (python -m benchmarks)",
        description=(
            "Run the benchmark suite of a source checkout; any further "
            "arguments (--quick, --full, ...) are passed on to it."
        ),
    )
    # Its options are the benchmarks' own: main() passes on what it does not
    # know (argparse's REMAINDER would reject a leading "--quick").
    bench.set_defaults(run=_run_bench, passthrough=True)


def _run_bench(args) -> int:
    import subprocess

    from sklearn_parpredict._loading import CommandError

    # The benchmarks are not part of the installed package: they live next
    # to it in a source checkout.
    if not _benchmarks_available():
        raise CommandError(
            "the benchmarks package is not importable: run this command from "
            "a source checkout of sklearn-parpredict (or use `make bench`)"
        )
    return subprocess.run([sys.executable, "-m", "benchmarks", *args.extra]).returncode


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sklearn-parpredict`` command line.

    Parameters
    ----------
    argv : sequence of str, default=None
        The arguments, without the program name; ``None`` reads
        ``sys.argv[1:]``.

    Returns
    -------
    status : int
        The exit status: 0 on success.
    """
    from sklearn_parpredict._loading import CommandError

    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return args.run(args)
    except CommandError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1

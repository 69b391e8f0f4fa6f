"""The demo: train the book models, then time their serial and parallel
predictions and check that they are equal (``sklearn-parpredict demo``,
``make demo``)."""

from __future__ import annotations

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
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
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
    workers, cores = joblib.effective_n_jobs(n_jobs), joblib.cpu_count()
    print(
        f"sklearn-parpredict {__version__} demo: {rows:,} books, "
        f"{cores} core{'s' if cores != 1 else ''}, n_jobs={n_jobs} "
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

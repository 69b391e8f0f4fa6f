"""The ``sklearn-parpredict`` command line."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence

from sklearn_parpredict import __version__
from sklearn_parpredict._demo import DEMO_ROWS, run_demo


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
    from sklearn_parpredict._engine import _check_backend
    from sklearn_parpredict._io import predict_file
    from sklearn_parpredict._loading import CommandError, load_model

    # Before the model is loaded and any row read; raised by the first
    # batch, joblib's error read as that batch's failure.
    try:
        _check_backend(args.backend)
    except ValueError as exc:
        first_line = str(exc).splitlines()[0]
        raise CommandError(
            f"cannot use --backend {args.backend}: {first_line}"
        ) from exc
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


# The packages of the io extra (pyproject.toml).
_IO_EXTRA = frozenset({"pandas", "pyarrow", "skops", "tqdm"})


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
        with _terminated_as_exit():
            return args.run(args)
    except CommandError as exc:
        # One line, for logs and scripts: scikit-learn's and pandas' own
        # messages may run over several (a list of missing features).
        lines = [line.strip() for line in str(exc).splitlines()]
        message = " ".join(line for line in lines if line)
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        # The commands' files, progress bar and demo data need the io extra,
        # which the core package does not install.
        missing = (exc.name or "").partition(".")[0]
        if missing not in _IO_EXTRA:
            raise
        print(
            f"{parser.prog}: error: {args.command} needs {missing}, which is "
            f"not installed: pip install 'sklearn-parpredict[io]'",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        # What was written so far is removed on the way out (an existing
        # output is kept): the traceback would say nothing more.
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


@contextlib.contextmanager
def _terminated_as_exit():
    """SIGTERM (``kill``, ``docker stop``) ends the command as an exit
    does, running its clean-up, rather than there and then: a run stopped
    so left its temporary output file behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

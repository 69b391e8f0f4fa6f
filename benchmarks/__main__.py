"""Command line: ``python -m benchmarks [--quick | --full] [options]``."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import psutil

from benchmarks._cases import CASES
from benchmarks._peers import N_WORKERS
from benchmarks._report import write
from benchmarks._suite import SECTIONS, log, run

RESULTS = Path(__file__).resolve().parent / "results"
DISTRIBUTIONS = {
    "python": None,
    "numpy": "numpy",
    "scikit-learn": "scikit-learn",
    "joblib": "joblib",
    "sklearn-parpredict": "sklearn-parpredict",
    "pandas": "pandas",
    "dask": "dask",
    "distributed": "distributed",
    "dask-ml": "dask-ml",
}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str | None) -> str:
    if dist is None:
        return platform.python_version()
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _revision() -> str:
    """The checkout's commit, marked when the package has uncommitted edits."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "sklearn_parpredict")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" + uncommitted changes" if dirty else "")


def machine(suite: str, argv: list[str]) -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "cores": os.cpu_count(),
        "workers": N_WORKERS,
        "cpu": _cpu_model(),
        "ram_gib": psutil.virtual_memory().total / (1 << 30),
        "versions": {name: _version(dist) for name, dist in DISTRIBUTIONS.items()},
        "revision": _revision(),
        "command": " ".join(["python -m benchmarks", *argv]),
        "suite": suite,
    }


def _parser() -> argparse.ArgumentParser:
    names = [*CASES, *SECTIONS]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time ParallelPredictor against serial, the fork ceiling and "
        "the usual recipes; write a markdown report and a PNG plot.",
    )
    suite = parser.add_mutually_exclusive_group()
    suite.add_argument(
        "--quick",
        dest="quick",
        action="store_true",
        default=True,
        help="reduced suite, a few minutes on 2 cores (default)",
    )
    suite.add_argument(
        "--full",
        dest="quick",
        action="store_false",
        help="every case up to its row limit (up to 1,000,000 rows)",
    )
    parser.add_argument(
        "--cases",
        type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
        default=names,
        help=f"comma-separated subset of: {','.join(names)} (default: all)",
    )
    parser.add_argument(
        "--rows",
        type=_row_counts,
        default=None,
        help="comma-separated row counts measured instead of the suite's "
        "(each case up to its full row limit), for a short run such as "
        "--cases rf,svc --rows 500000,20000 (default: the suite's)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per row, medians reported (default: 3 quick, 5 full)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="output folder (default: benchmarks/results)",
    )
    return parser


def _row_counts(text: str) -> list[int]:
    try:
        counts = [int(part.replace("_", "")) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers, got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"row counts must be at least 1: {text!r}")
    return counts


def _report(results: dict, meta: dict, out: Path, remaining=()) -> tuple[Path, Path]:
    """Write the report of ``results``; ``remaining``: the parts a run has not
    finished yet, named in a note (a run stopped now leaves this report)."""
    results = dict(results)
    notes = list(results.pop("notes", []))
    if remaining:
        notes.append(
            "Partial results: written before " + ", ".join(remaining) + " finished; "
            "this file is what a run stopped at that point leaves."
        )
    return write(results | {"meta": meta | {"notes": notes}}, out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES and c not in SECTIONS]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    repeats = args.repeats or (3 if args.quick else 5)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    # Estimators' and dask's deprecation chatter would bury the progress log.
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", DeprecationWarning)

    suite = "quick" if args.quick else "full"
    meta = machine(suite, argv)
    start = time.perf_counter()
    results = run(
        args.cases,
        quick=args.quick,
        repeats=repeats,
        rows=args.rows,
        checkpoint=lambda so_far, remaining: _report(so_far, meta, args.out, remaining),
    )
    md_path, png_path = _report(results, meta, args.out)
    log(f"wrote {md_path} and {png_path} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

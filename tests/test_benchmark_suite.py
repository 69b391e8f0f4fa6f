"""The benchmark command's short runs: chosen row counts, and the report a run
leaves after each row, so that one stopped at a time limit is not lost."""

import argparse

import pytest

# The suite measures other processes' load with psutil (the bench extra and
# distributed have it; the oldest-versions environment may not).
pytest.importorskip("psutil")

from benchmarks import __main__ as command  # noqa: E402
from benchmarks import _suite  # noqa: E402
from benchmarks._cases import CASES  # noqa: E402


@pytest.mark.parametrize(
    "only, expected",
    [
        (None, [1, 1_000, 100_000, 500_000]),
        ([500_000, 20_000], [20_000, 500_000]),
        # Past the case's full row limit (1,000,000): not measured.
        ([2_000_000, 100], [100]),
        ([2_000_000], []),
    ],
)
def test_rows_asked_for_replace_the_suite_grid(only, expected):
    assert CASES["rf"].sizes(quick=True, only=only) == expected


def test_row_counts_are_parsed_and_checked():
    assert command._row_counts("500000,20_000") == [500_000, 20_000]
    for bad in ("", "1,x", "0", "-5"):
        with pytest.raises(argparse.ArgumentTypeError):
            command._row_counts(bad)
    args = command._parser().parse_args(["--cases", "svc", "--rows", "1,20000"])
    assert args.rows == [1, 20_000]


@pytest.fixture
def fake_suite(monkeypatch):
    """The suite's sequence with nothing timed: each case gives two rows."""

    def run_case(case, *, rows, on_row, **_):
        info, measured = {"name": case.name, "rows_asked": rows}, []
        for n in (1, 2):
            measured.append({"case": case.name, "rows": n})
            on_row(info, measured)
        return info, measured

    monkeypatch.setattr(_suite, "run_case", run_case)
    monkeypatch.setattr(_suite, "wrapper_overhead", lambda: 0.0)
    monkeypatch.setattr(_suite, "dask_ml_available", lambda: "no dask-ml here")
    monkeypatch.setattr(_suite, "run_isolated_sections", lambda *a, **k: {})
    monkeypatch.setattr(_suite.joblib, "Parallel", lambda **_: list)


def test_a_report_is_left_after_every_row_until_the_last(fake_suite):
    written = []

    def checkpoint(results, remaining):
        got = [(r["case"], r["rows"]) for r in results["rows"]]
        written.append((got, [c["name"] for c in results["cases"]], remaining))

    results = _suite.run(
        ["logreg", "svc"], quick=True, repeats=1, rows=[7], checkpoint=checkpoint
    )
    assert written == [
        ([("logreg", 1)], ["logreg"], ["logreg", "svc"]),
        # The last row's report holds its case: not written again when the
        # case is done.
        ([("logreg", 1), ("logreg", 2)], ["logreg"], ["logreg", "svc"]),
        ([("logreg", 1), ("logreg", 2), ("svc", 1)], ["logreg", "svc"], ["svc"]),
        # After the last row too (its case not yet done); the complete
        # report, without the note, is then the caller's.
        (
            [("logreg", 1), ("logreg", 2), ("svc", 1), ("svc", 2)],
            ["logreg", "svc"],
            ["svc"],
        ),
    ]
    assert [c["rows_asked"] for c in results["cases"]] == [[7], [7]]
    assert results["notes"] == ["no dask-ml here"]
    assert len(results["rows"]) == 4


def test_a_partial_report_says_what_had_not_finished(monkeypatch, tmp_path):
    got = []
    monkeypatch.setattr(command, "write", lambda results, out: got.append(results))
    results = {"rows": [], "notes": ["no dask-ml here"]}
    command._report(results, {"cores": 16}, tmp_path, ["svc", "multi"])
    command._report(results, {"cores": 16}, tmp_path)
    partial, complete = (r["meta"]["notes"] for r in got)
    assert partial[0] == "no dask-ml here"
    assert "Partial results" in partial[1] and "svc, multi" in partial[1]
    assert complete == ["no dask-ml here"]
    # The results themselves are not changed by writing them.
    assert results == {"rows": [], "notes": ["no dask-ml here"]}

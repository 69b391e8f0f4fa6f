"""Run the suite: the isolated measurements, then every case at every size."""

from __future__ import annotations

import gc
import math
import os
import statistics
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import joblib

from benchmarks._cases import CASES, Case, CaseSkipped, build_repeated_forest
from benchmarks._isolated import MEMORY_PARTS, load_sklearn, run_isolated
from benchmarks._machine import OtherLoad
from benchmarks._measure import (
    DecisionLog,
    measure,
    paired,
    versus,
    wrapper_overhead,
)
from benchmarks._peers import METHODS, N_WORKERS, PEERS, dask_ml_available
from benchmarks._targets import CEILING_SHARE, PEER_MIN, ratios

# The repeated-call case of the issue, and the rows of the memory case.
REPEATED_CALLS = 20
REPEATED_ROWS = 10_000
MEMORY_ROWS = {True: 200_000, False: 1_000_000}
ISOLATED = ("repeated", "memory")
SECTIONS = (*ISOLATED, "dask")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_case(
    case: Case,
    *,
    quick: bool,
    repeats: int,
    unavailable: dict,
    rows: Iterable[int] | None = None,
    on_row: Callable[[dict, list[dict]], None] | None = None,
):
    """Time every method on ``case`` at each of its sizes (``rows``: only
    these row counts, see :meth:`Case.sizes`).

    Returns the case's description and one result row per size;
    ``on_row(description, rows so far)`` is called after each row.
    """
    sizes = case.sizes(quick, rows)
    info = {
        "name": case.name,
        "description": case.description,
        "max_rows": case.max_rows,
        "sizes": sizes,
    }
    if not sizes:
        reason = f"no row count asked for is within its limit ({case.max_rows:,})"
        info["skipped"] = reason
        log(f"[{case.name}] skipped: {reason}")
        return info, [{"case": case.name, "skipped": reason}]
    log(f"[{case.name}] fitting ({case.description})")
    try:
        work = case.build(max(sizes))
    except CaseSkipped as exc:
        info["skipped"] = str(exc)
        log(f"[{case.name}] skipped: {exc}")
        return info, [{"case": case.name, "skipped": str(exc)}]
    info["model_bytes"] = work.model_bytes

    methods, errors = {}, dict(unavailable)
    for name, cls in METHODS.items():
        if name in errors:
            continue
        try:
            methods[name] = cls(work)
        except Exception as exc:  # a peer that cannot take this workload
            errors[name] = f"{type(exc).__name__}: {exc}"
    rows = []
    try:
        for n in sizes:
            gc.collect()
            calls = {name: m.bind(0, n) for name, m in methods.items()}
            with OtherLoad() as other:
                timings = measure(
                    calls,
                    repeats,
                    # Methods that start workers around every sample (the
                    # tutorial's fork pool, dask-ml's threads) are timed after
                    # the others, whose samples their after-effects skewed.
                    last=("tutorial", "dask-ml"),
                    # Not the size alone: every case's row of one size then
                    # shuffled the methods alike, and the same method came
                    # first in every case.
                    seed=zlib.crc32(f"{case.name}:{n}".encode()),
                )
                # After the samples, as they ran: the wrapper has learned. A
                # wrong output there fails the wrapper's row, as in them.
                ours = timings.get("parpredict")
                found = None
                if ours is not None and not ours.error:
                    found = paired(calls["serial"], calls["parpredict"], ours)
                pairs = None if found is None else asdict(found)
                # The ceiling and the peers against the wrapper in adjacent
                # calls too, where both gave the right output.
                against = None
                if found is not None:
                    against = versus(
                        calls["parpredict"],
                        {
                            name: calls[name]
                            for name in ("ceiling", *PEERS)
                            if name in timings and not timings[name].error
                        },
                        targets={"ceiling": CEILING_SHARE}
                        | dict.fromkeys(PEERS, PEER_MIN),
                    )
            row = {
                "case": case.name,
                "rows": n,
                "parpredict_ran": _how_ours_ran(methods, n),
                "other_load": other.cores,
                "times": {name: t.median for name, t in timings.items()},
                "samples": {name: t.samples for name, t in timings.items()},
                "paired": pairs,
                "versus": (
                    None
                    if against is None
                    else {k: statistics.median(v) for k, v in against.items()}
                ),
                "versus_pairs": against,
                "errors": {
                    **errors,
                    **{name: t.error for name, t in timings.items() if t.error},
                },
            }
            row["times"] = {
                k: (None if math.isnan(v) else v) for k, v in row["times"].items()
            }
            rows.append(row)
            log(_summary(row))
            if on_row is not None:
                on_row(info, rows)
    finally:
        for method in methods.values():
            method.close()
    return info, rows


def _how_ours_ran(methods: dict, n: int) -> str | None:
    """How the wrapper runs a call on these rows now: one more call, untimed,
    read from its debug log."""
    if "parpredict" not in methods:
        return None
    decisions = DecisionLog()
    with decisions:
        methods["parpredict"].bind(0, n)()
    return decisions.plans[-1]


def _summary(row) -> str:
    q = ratios(row)
    t = row["times"]
    peers = " ".join(f"{p} {q[p]:.2f}x" for p in PEERS)
    return (
        f"[{row['case']}] {row['rows']:>9,} rows: serial {t['serial']:.4g}s, "
        f"parpredict {t.get('parpredict') or math.nan:.4g}s = "
        f"{q['speedup']:.2f}x serial (paired {q['paired']:.3f}x, A/A "
        f"{q['paired_aa']:.3f}x), {100 * q['of_ceiling']:.0f}% of ceiling "
        f"({row.get('parpredict_ran')}); "
        f"vs {peers}; other load {row['other_load']:.2f} cores"
        + (f"; errors {row['errors']}" if row["errors"] else "")
    )


def run_isolated_sections(sections: Iterable[str], *, quick: bool) -> dict:
    """The repeated-call and memory measurements, each in a fresh process."""
    sections = list(sections)
    if not sections:
        return {}
    n_rows = max(REPEATED_CALLS * REPEATED_ROWS, MEMORY_ROWS[quick])
    log("[repeated/memory] fitting RandomForestClassifier(n_estimators=300)")
    model, X = build_repeated_forest(n_rows)
    out = {}
    with tempfile.TemporaryDirectory(prefix="parpredict-bench-") as tmp:
        paths = {
            "model_path": str(Path(tmp, "model.joblib")),
            "X_path": str(Path(tmp, "X.joblib")),
        }
        joblib.dump(model, paths["model_path"])
        joblib.dump(X, paths["X_path"])
        del model, X
        if "repeated" in sections:
            log(f"[repeated] {REPEATED_CALLS} calls of {REPEATED_ROWS:,} rows")
            # The four; the quick suite skips joblib and dask-ml here.
            methods = ["serial", "parpredict", "ceiling", "tutorial"]
            if not quick:
                methods += [p for p in PEERS if p not in methods]
            with OtherLoad() as other:
                out["repeated"] = run_isolated(
                    "repeated",
                    **paths,
                    calls=REPEATED_CALLS,
                    rows_per_call=REPEATED_ROWS,
                    methods=methods,
                )
            out["repeated"]["other_load"] = other.cores
            log(f"[repeated] {out['repeated']}")
        if "memory" in sections:
            log(f"[memory] {n_rows:,} rows")
            out["memory"] = {}
            with OtherLoad() as other:
                for part in MEMORY_PARTS:
                    got = run_isolated("memory", **paths, part=part)
                    if "error" in got:
                        out["memory"] = {"error": f"{part}: {got['error']}"}
                        break
                    out["memory"].update(got)
            out["memory"]["other_load"] = other.cores
            log(f"[memory] {out['memory']}")
    return out


def run(
    selected: list[str],
    *,
    quick: bool,
    repeats: int,
    rows: Iterable[int] | None = None,
    checkpoint: Callable[[dict, list[str]], None] | None = None,
) -> dict:
    """Every selected case and section; the results a report is made from.

    ``checkpoint(results, remaining)``, when given, is called after each
    section and each case's row with the results so far and the parts not yet
    finished, so that a run cut short (a time limit) still leaves what it
    measured.
    """
    # In the order they run.
    remaining = [s for s in SECTIONS if s in selected]
    remaining += [name for name in selected if name in CASES]

    def done(*parts: str, write: bool = True) -> None:
        finished = [part for part in parts if part in remaining]
        for part in finished:
            remaining.remove(part)
        # The last part's results are written by the caller, complete.
        if write and checkpoint is not None and finished and remaining:
            checkpoint(results, list(remaining))

    unavailable = {}
    reason = dask_ml_available()
    if reason:
        unavailable["dask-ml"] = reason
    results = {"repeats": repeats, "cases": [], "rows": [], "load": [load()]}
    results["notes"] = list(unavailable.values())
    results["overhead_s"] = wrapper_overhead()
    log(f"wrapper's fixed cost per in-process call: {results['overhead_s']:.2e} s")
    # The isolated sections first, before this process starts any pool.
    results.update(
        run_isolated_sections([s for s in ISOLATED if s in selected], quick=quick)
    )
    done(*ISOLATED)
    if "dask" in selected:
        log("[dask] LocalCluster of 2 worker processes against loky")
        with OtherLoad() as other:
            results["dask"] = run_isolated("dask", quick=quick, repeats=repeats)
        results["dask"]["other_load"] = other.cores
        log(f"[dask] {results['dask']}")
        done("dask")
    # Start joblib's worker pool now, so that no case's warm-up pays for it.
    joblib.Parallel(n_jobs=N_WORKERS)(
        joblib.delayed(load_sklearn)() for _ in range(N_WORKERS)
    )

    def case_progress(info: dict, case_rows: list[dict]) -> None:
        if checkpoint is not None:
            so_far = {
                **results,
                "cases": [*results["cases"], info],
                "rows": [*results["rows"], *case_rows],
            }
            checkpoint(so_far, list(remaining))

    for name in selected:
        if name in CASES:
            info, case_rows = run_case(
                CASES[name],
                quick=quick,
                repeats=repeats,
                unavailable=unavailable,
                rows=rows,
                on_row=case_progress,
            )
            results["cases"].append(info)
            results["rows"].extend(case_rows)
            # Its last row's report holds it already (a skipped case took no
            # time: the next row's report shows it).
            done(name, write=False)
    results["load"].append(load())
    return results


def load() -> float:
    """The machine's 1-minute load average (other work skews timings)."""
    return os.getloadavg()[0]

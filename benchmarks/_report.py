"""Write a run's results as a markdown report and a PNG plot."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from benchmarks._measure import (
    CHEAP_REPEATS,
    CHEAP_ROW_S,
    PAIRED_BUDGET_S,
    PAIRED_EXTEND_S,
    PAIRED_MAX,
    PAIRED_MIN,
    VERSUS_BUDGET_S,
    VERSUS_EXTEND_S,
    VERSUS_MIN,
)
from benchmarks._peers import PEERS
from benchmarks._targets import (
    BUSY_CORES,
    CEILING_SHARE,
    MB,
    MIN_SPEEDUP,
    PEER_MIN,
    fmt_pct,
    fmt_ratio,
    fmt_seconds,
    in_process_calls,
    ratios,
    round_figures,
    round_plans,
    targets,
    time_of,
    with_paired,
)

COLUMNS = ("serial", "parpredict", "ceiling", *PEERS)
STYLE = {
    "parpredict": {"color": "C0", "lw": 2.5, "marker": "o"},
    "ceiling": {"color": "black", "ls": "--", "marker": "."},
    "tutorial": {"color": "C3", "marker": "s", "ms": 4},
    "joblib": {"color": "C2", "marker": "^", "ms": 4},
    "dask-ml": {"color": "C1", "marker": "v", "ms": 4},
}


def _table(header: list[str], body: list[list[str]], align: str = "") -> list[str]:
    align = align or "l" * len(header)
    marks = {"l": "---", "r": "--:"}
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(marks[a] for a in align) + "|",
        *("| " + " | ".join(cells) + " |" for cells in body),
    ]


def markdown(results: dict, plot_name: str) -> str:
    lines = [
        *_heading(results),
        "",
        "## Targets",
        "",
        *_table(["Target", "Measured", "Result"], [list(t) for t in targets(results)]),
        "",
        "## Methods",
        "",
        *_methods(),
        "",
        "## Cases",
        "",
        *_cases(results["cases"]),
        "",
        "## Results",
        "",
        *_results(results),
        "",
        "## Repeated calls",
        "",
        *_repeated(results.get("repeated")),
        "",
        "## Peak memory",
        "",
        *_memory(results.get("memory")),
        "",
        "## Scaling out on Dask",
        "",
        *_dask(results.get("dask")),
        "",
        "## Speedup vs rows",
        "",
        f"![speedup vs rows]({plot_name})",
        "",
    ]
    return "\n".join(lines)


def _heading(results: dict) -> list[str]:
    meta = results["meta"]
    lines = [
        f"# sklearn-parpredict benchmarks: {meta['date']}, {meta['cores']} cores",
        "",
        f"- Command: `{meta['command']}` ({meta['suite']} suite, "
        f"{results['repeats']} timed repeats per row, at least {CHEAP_REPEATS} "
        f"where the interleaved methods' calls take under {CHEAP_ROW_S:g} s "
        "together; warm-up excluded)",
        f"- Machine: {meta['cores']} cores (`os.cpu_count()`; "
        f"{meta['workers']} workers used), {meta['cpu']}, "
        f"{meta['ram_gib']:.1f} GiB RAM",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- sklearn_parpredict revision: {meta.get('revision', 'unknown')}",
    ]
    if results.get("overhead_s"):
        lines.append(
            "- The wrapper's fixed cost per call that stays in-process: "
            f"{results['overhead_s'] * 1e6:.1f} µs (best of 7 loops of 20,000 "
            "calls on a model that does nothing, minus the bare call)"
        )
    if results.get("load"):
        lines.append(
            "- Load average (1 min, this benchmark included) at start / end: "
            + " / ".join(f"{x:.2f}" for x in results["load"])
            + "; see *other load* per row"
        )
    lines += [f"- Note: {note}" for note in meta.get("notes", [])]
    return lines


def _methods() -> list[str]:
    return [
        "- **serial**: the estimator's own call.",
        "- **serial again**: the same call, timed as a seventh method (the A/A "
        "control): how far apart two medians of one call land in a row.",
        "- **parpredict**: `ParallelPredictor(model, n_jobs=-1)` "
        '(`MultiModelPredictor` for `multi`), `chunk_size="auto"`; one wrapper '
        "per case, reused across rows.",
        "- **ceiling**: the reference. A fork pool (one worker per core) is "
        "started after the model and data are globals of the parent, so workers "
        "inherit both; only row bounds go out and results come back. Times "
        "map + concatenate only.",
        "- **tutorial**: `with multiprocessing.Pool(cores)`, `np.array_split` "
        "into one chunk per core, `pool.map` with the model pickled into every "
        "task, `np.concatenate`, all per call (`multi`: one model per core).",
        "- **joblib**: `joblib.Parallel(n_jobs=cores)` (loky) over "
        "`np.array_split` chunks.",
        "- **dask-ml**: `dask_ml.wrappers.ParallelPostFit` over a dask array "
        "(or dataframe) of one block per core, threaded scheduler, on a pool "
        "of threads started and warmed (each thread predicts one row) before "
        "each sample and shut down after it, neither timed: idle threads that "
        "ran OpenMP made every small OpenMP call in the process about ten "
        "times slower. Its threads leave the estimator's own BLAS/OpenMP "
        "threads unlimited, as dask-ml does: an OpenMP-threaded estimator "
        "(`hgb`, `knn`) runs as many threads as cores on each of them, more "
        "threads than cores, where parpredict and the ceiling keep workers x "
        "threads within the cores (the issue's thread limit).",
        "",
        "Each repeat times serial, serial again, parpredict, ceiling and "
        "joblib once each, in a fresh random order; the tutorial's and "
        "dask-ml's samples are taken after all of those, back to back. Both "
        "start workers around every sample (a fork pool; a pool of threads), "
        "and that slowed the samples interleaved with theirs: with dask-ml "
        "interleaved, parpredict on the pipeline at 1,000 rows measured "
        "1.045x to 1.068x of serial's time in 3 runs, against 1.001x to "
        "1.017x with dask-ml timed last (2 cores). Every method is called "
        "before sampling (twice when a call is shorter than a sample, the "
        "second setting how many calls a sample makes), the tutorial and "
        "dask-ml first; the random order is seeded by case and rows.",
        "",
        "The medians of samples taken seconds apart cannot resolve a few "
        "percent on a shared machine: their A/A control strays as far. So "
        "after a row's samples the wrapper is also timed in *paired* calls: "
        "groups of single calls, serial, serial, parpredict, serial, one after "
        "another (with an untimed serial call and the output check before "
        "each group), as many groups as fit in "
        f"{PAIRED_BUDGET_S:.0f} s (at least {PAIRED_MIN}, at most {PAIRED_MAX}), "
        "then more, for up to "
        f"{PAIRED_EXTEND_S:.0f} s, while the interval of the paired ratio "
        f"(see below) still holds {MIN_SPEEDUP}x. "
        "The medians of the differences between adjacent calls give "
        "parpredict's added time (against the serial call just before it), "
        "the A/A control (the second serial call against the first) and what "
        "parpredict leaves behind for the next call (the serial call just "
        "after it); slow drift in the machine moves both calls of a "
        "difference alike. The target that no row is slower than serial is "
        "judged on these. Then the ceiling and each peer in turn are paired "
        "with parpredict: single calls of the two, in alternating order "
        "(each with its untimed set-up), as many pairs as fit in "
        f"{VERSUS_BUDGET_S:.0f} s (at least {VERSUS_MIN}), then more, for up "
        f"to {VERSUS_EXTEND_S:.0f} s, while the interval of their ratios "
        f"(see below) still holds the target ({fmt_pct(CEILING_SHARE)} of the "
        f"ceiling, {PEER_MIN:.2f}x of a peer); the median of the "
        "pairs' ratios is the paired share of the ceiling or ratio to the "
        "peer. The targets on the ceiling's share, the parallel efficiency "
        "and the peers are judged on the paired figures where a row has "
        "them; the medians' are given too. Where a peer ties with parpredict "
        "(both at the ceiling, nothing left to be faster by), the median of "
        "their pairs lands either side of 1.00x by chance; so each paired "
        "ratio below 1.00x is given with its interval (the order "
        "statistics of the pairs' ratios that hold their median with "
        "probability 95% or more, without assuming a distribution; with fewer "
        "than 6 values none does, and the whole range is given: with 5, it "
        "holds the median with 93.75%; each interval is labelled with its "
        "own probability), and a second line of "
        "the peers' target counts a row as below only when its whole "
        "interval is. The same goes for the ceiling's share on the large "
        f"rows below {fmt_pct(CEILING_SHARE)}, and for a row whose paired "
        f"ratio to serial is below {MIN_SPEEDUP}x: there the interval is that "
        "of the median added time.",
        "",
        "Every timed output is checked against serial (labels equal, floats "
        "to `rtol=1e-9`); a wrong output shows as n/a. Peers split into at most "
        "as many chunks as rows, and forked workers get `cores // workers` "
        "BLAS/OpenMP threads (without that limit forked workers deadlock in "
        "OpenMP once the parent has used it).",
    ]


def _cases(cases: list[dict]) -> list[str]:
    lines: list[str] = []
    body = []
    for case in cases:
        rows = ", ".join(f"{n:,}" for n in case["sizes"])
        size = (
            ""
            if case.get("model_bytes") is None
            else (f"{case['model_bytes'] / MB:.1f} MiB")
        )
        note = case.get("skipped") or ""
        body.append(
            [
                f"`{case['name']}`",
                case["description"],
                rows,
                f"{case['max_rows']:,}",
                size,
                note,
            ]
        )
    lines += _table(
        [
            "case",
            "estimator",
            "rows measured",
            "row limit (full)",
            "pickled model",
            "note",
        ],
        body,
    )
    return lines


def _results(results: dict) -> list[str]:
    lines = [
        "Seconds per call (medians). *speedup*: serial / parpredict. "
        "*A/A*: serial / the same serial call timed as another method in the "
        "same interleaved samples; its distance from 1.00x is the noise of "
        "the row's ratios. *paired*, *paired A/A*, *next call*: from "
        "adjacent single calls (see Methods): serial / parpredict, serial / "
        "the serial call before it, serial / the serial call right after "
        "parpredict's. "
        "*of ceiling*: parpredict's speedup as a share of the ceiling's "
        "(ceiling s / parpredict s). *vs peer*: peer s / parpredict s "
        "(above 1.00x: parpredict is faster). In both, the figure in "
        "brackets is from adjacent single calls of the two (see Methods). "
        "*parpredict ran*: how the "
        "wrapper ran one more call of the row after its samples, untimed, from "
        "its debug log (in-process, or how many tasks on threads or "
        "processes). *other load*: cores kept busy "
        "by other processes on the machine while the row ran (machine CPU "
        "time minus this benchmark's); rows above "
        f"{BUSY_CORES} cores are marked † and their ratios are unreliable.",
        "",
    ]
    header = [
        "case",
        "rows",
        *(f"{c} s" for c in COLUMNS),
        "speedup",
        "A/A",
        "paired",
        "paired A/A",
        "next call",
        "of ceiling",
        *(f"vs {p}" for p in PEERS),
        "parpredict ran",
        "other load",
    ]
    body = []
    for row in results["rows"]:
        if row.get("skipped"):
            body.append(
                [row["case"], "", f"skipped: {row['skipped']}"]
                + [""] * (len(header) - 3)
            )
            continue
        q = ratios(row)
        other = row.get("other_load", 0.0)
        mark = " †" if other > BUSY_CORES else ""
        cells = [row["case"], f"{row['rows']:,}{mark}"]
        cells += [fmt_seconds(time_of(row, c)) for c in COLUMNS]
        cells += [
            fmt_ratio(q[key])
            for key in ("speedup", "aa", "paired", "paired_aa", "next_call")
        ]
        cells.append(with_paired(fmt_pct, q, "of_ceiling"))
        cells += [with_paired(fmt_ratio, q, p) for p in PEERS]
        cells += [row.get("parpredict_ran") or "", f"{other:.2f}"]
        body.append(cells)
    lines += _table(header, body, "lr" + "r" * (len(header) - 2))
    errors = [
        f"- {row['case']} {row['rows']:,} rows, {name}: {message}"
        for row in results["rows"]
        for name, message in row.get("errors", {}).items()
    ]
    if errors:
        lines += ["", "Not measured:", "", *errors]
    return lines


def _repeated(rep: dict | None) -> list[str]:
    lines: list[str] = []
    if not rep:
        return ["Not run."]
    if "error" in rep:
        return [f"Failed: {rep['error']}"]
    lines += [
        f"Two rounds of {rep['calls']} calls of {rep['rows']:,} rows on "
        "`RandomForestClassifier(n_estimators=300, n_jobs=1)` "
        f"({rep['model_bytes'] / MB:.1f} MiB pickled), in a fresh process, "
        "after two calls of each method outside the rounds (parpredict's "
        "first one cold). Each method is built once and reused (the tutorial "
        "re-creates its pool and re-pickles the model every call; it runs in "
        "the first round only). The ceiling's pool and model are in place "
        "before its first call. parpredict runs on threads where it measured "
        "them the fastest; where processes would be clearly faster, it starts "
        "their pool in the background once the time its calls lost without "
        "one reaches what starting it costs, and runs on threads or "
        f"in-process until then: {in_process_calls(rep)}. The "
        "first round is the issue's calls, the second the steady state, every "
        "pool warm. The target is judged on the first round's mean per-call "
        "time: a median hides the calls that ran at serial speed while the "
        "pool started. Other load during the run: "
        f"{rep.get('other_load', 0.0):.2f} cores.",
        "",
    ]
    per_call = rep.get("per_call") or [{}, {}]
    rounds = [rep["median"], rep.get("steady") or {}]
    ceilings = [round_figures(rep, i) for i in range(2)]

    def cells(i: int, name: str) -> list[str]:
        times = per_call[i].get(name)
        median = statistics.median(times) if times else rounds[i].get(name)
        if median is None:
            return ["", "", "", ""]
        mean = statistics.fmean(times) if times else math.nan
        q = ceilings[i]
        return [
            fmt_seconds(mean),
            fmt_seconds(median),
            fmt_ratio(mean / q["mean_ceiling"]),
            fmt_ratio(median / q["median_ceiling"]),
        ]

    body = [
        [name, *cells(0, name), *cells(1, name)]
        for name in [c for c in COLUMNS if c in rounds[0]]
    ]
    # The calls outside the rounds, against the first round's ceiling.
    first_ceiling = ceilings[0]["median_ceiling"]
    for label, seconds in (
        (
            "parpredict, first call (cold: pool start, model shipping, probe)",
            rep["cold"],
        ),
        (
            "parpredict, second call (before the rounds)",
            (rep.get("warm_up") or {}).get("parpredict"),
        ),
    ):
        if seconds is not None:
            body.append(
                [
                    label,
                    "",
                    fmt_seconds(seconds),
                    "",
                    fmt_ratio(seconds / first_ceiling),
                ]
                + [""] * 4
            )
    lines += _table(
        [
            "method",
            "first round: mean s",
            "median s",
            "mean / ceiling's",
            "median / ceiling's",
            "second round: mean s",
            "median s",
            "mean / ceiling's",
            "median / ceiling's",
        ],
        body,
        "l" + "r" * 8,
    )
    lines += ["", *_repeated_calls(rep)]
    lines += [f"- {k}: {v}" for k, v in rep.get("errors", {}).items()]
    return lines


def _repeated_calls(rep: dict) -> list[str]:
    """parpredict's and the ceiling's every call, round by round, each of
    parpredict's marked where it ran in-process; and the model's shipping."""
    lines = []
    per_call = rep.get("per_call")
    plans = round_plans(rep)
    for i, name in enumerate(("First round", "Second round")):
        if not per_call:
            break
        ours, ceiling = per_call[i].get("parpredict"), per_call[i].get("ceiling")
        if not ours:
            continue
        ran = plans[i] or [""] * len(ours)
        q = round_figures(rep, i)
        counted = (
            "" if q["in_process"] is None else f" ({q['in_process']} in-process: *)"
        )
        lines.append(
            f"- {name}, seconds per call in order. parpredict{counted}: "
            + ", ".join(
                fmt_seconds(t) + ("*" if how == "in-process" else "")
                for t, how in zip(ours, ran)
            )
            + ". Ceiling: "
            + (", ".join(map(fmt_seconds, ceiling)) if ceiling else "n/a")
        )
    if not per_call:
        lines.append("- Per-call times: not recorded in this run (medians only).")
    ship = rep.get("shipping")
    if ship:
        lines.append(
            "- The model, written for the workers, by phase ("
            + "; ".join(
                f"{phase}: {w} write(s), {r} reference(s) pickled"
                for phase, w, r in zip(
                    ship["phases"], ship["writes"], ship["references"]
                )
            )
            + f"); {ship['tokens']} fitted state(s) referenced; one reference "
            f"is {ship['reference_bytes']:,} bytes. Counted in this process by "
            "wrapping the package's model writer and its handle's pickling."
        )
    else:
        lines.append("- The model's shipping: not counted in this run.")
    return lines


def _memory(mem: dict | None) -> list[str]:
    lines: list[str] = []
    if not mem:
        lines.append("Not run.")
    elif "error" in mem:
        lines.append(f"Failed: {mem['error']}")
    else:
        lines += [
            f"Peak resident memory of the parent and all its child processes "
            f"(psutil, sampled every 5 ms) predicting {mem['rows']:,} rows with the "
            f"300-tree forest ({mem['model_bytes'] / MB:.1f} MiB pickled, "
            f"{mem['n_workers']} workers). Each method is measured in its own "
            "fresh process, from the same start (model and rows loaded): in one "
            "process, what a method leaves behind (the tutorial's pickled tasks) "
            "stays in the parent's resident size and was charged to the next. "
            "Resident sizes (RSS) count a page shared between processes (shared "
            "libraries, memory-mapped input, a forked parent's heap) once in each "
            "process, which overstates workers, forked ones most; the "
            "proportional set size (PSS, Linux) splits it between them, so its "
            f"sum is what the tree takes. {_pss_sampling(mem)} The targets are "
            "judged on RSS. "
            '*parpredict on workers* is `backend="loky"` with two chunks per '
            "worker; *by default* is `backend=None`, as a user gets it, with "
            "how each call ran: it may keep a call in-process or run it on "
            "threads, and neither needs workers' memory.",
            "",
        ]
        body = [
            ["process at rest, before predicting", "baseline"],
            ["serial", "serial"],
            ["ceiling (fork pool started inside the window)", "ceiling"],
            ["tutorial", "tutorial"],
            [
                "parpredict on workers, first call (ships the model)",
                "parpredict_first",
            ],
            ["parpredict on workers, second call", "parpredict_second"],
            *(
                [f"parpredict by default, {which} call{how}", key]
                for which, key, how in zip(
                    ("first", "second"),
                    ("parpredict_default_first", "parpredict_default_second"),
                    [f" ({ran})" for ran in mem.get("default_ran", [])] or ["", ""],
                )
            ),
            ['parpredict, backend="threading"', "parpredict_threads"],
            ["idle workers with scikit-learn imported, no model", "idle_workers"],
        ]

        def cell(value: float | None) -> str:
            return "n/a" if value is None else f"{value / MB:.0f}"

        body = [
            [
                label,
                cell(mem[key]),
                ""
                if key == "idle_workers"
                else f"{round((mem[key] - mem['serial']) / MB):+d}",
                cell(mem.get(key + "_pss")),
            ]
            for label, key in body
            if key in mem
        ]
        pss = "peak PSS MiB" if mem.get("pss_every_s") else "PSS at the RSS peak MiB"
        lines += _table(["", "peak RSS MiB", "vs serial MiB", pss], body, "lrrr")
    return lines


def _pss_sampling(mem: dict) -> str:
    """How the PSS column was sampled: its own peak, or (older results) its
    value when the resident size peaked, which may be below its peak."""
    every = mem.get("pss_every_s")
    if every:
        return (
            f"The PSS is read every {every * 1e3:.0f} ms and at each new resident "
            "peak (reading it costs about half a millisecond per process), and "
            "its own peak kept."
        )
    return (
        "The PSS was read only when the resident size reached a new peak: it "
        "is the PSS at the RSS peak, which may be below the PSS's own peak."
    )


def _dask(dask: dict | None) -> list[str]:
    """Dask against loky on this machine, and the scheduler's memory."""
    if not dask:
        return ["Not run."]
    if "error" in dask or "skipped" in dask:
        return [f"Not measured: {dask.get('error') or dask['skipped']}"]
    sec = dask["seconds"]
    lines = [
        f"`RandomForestClassifier(n_estimators=300)` "
        f"({dask['model_bytes'] / MB:.1f} MiB pickled) on {dask['rows']:,} rows: "
        f"a `dask scheduler` and `dask worker --nworkers {dask['n_workers']} "
        "--nthreads 1` on 127.0.0.1, against loky's 2 processes on the same "
        f"machine; explicit chunks of {dask['chunk_rows']:,} rows, or `auto`. "
        "Medians after one warm-up call (workers started, model shipped). "
        f"Other load during the run: {dask.get('other_load', 0.0):.2f} cores.",
        "",
    ]
    body = [
        [name, fmt_seconds(t), fmt_ratio(sec["serial"] / t)] for name, t in sec.items()
    ]
    lines += _table(["method", "s per call", "speedup vs serial"], body, "lrr")
    sched = dask["scheduler"]
    rest = sched["at_rest"]
    lines += [
        "",
        "Scheduler's peak resident memory during one call, by chunks per call "
        f"(at rest: {rest / MB:.0f} MiB). parpredict sends the model to each "
        "worker once; the usual recipe (`client.map(predict, [model] * n, "
        "chunks)`) puts it in every task.",
        "",
    ]
    body = [
        [f"{chunks}", f"{(peak - rest) / MB:+.0f}", _naive(sched, chunks, rest)]
        for chunks, peak in sched["parpredict"].items()
    ]
    lines += _table(
        ["chunks", "parpredict MiB vs rest", "model in every task MiB vs rest"],
        body,
        "rrr",
    )
    return lines


def _naive(sched: dict, chunks, rest: int) -> str:
    peak = sched["naive"].get(chunks)
    return "not run" if peak is None else f"{(peak - rest) / MB:+.0f}"


def plot(results: dict, path: Path) -> None:
    """Speedup over serial against rows, one panel per case."""
    # Imported here: the tables need no plotting library (the tests import
    # them without the bench extra).
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on benchmark machines
    import matplotlib.pyplot as plt

    by_case: dict[str, list] = {}
    for row in results["rows"]:
        if not row.get("skipped"):
            by_case.setdefault(row["case"], []).append(row)
    if not by_case:
        return
    ncols = min(4, len(by_case))
    nrows = -(-len(by_case) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(3.6 * ncols, 3.0 * nrows),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    cores = results["meta"]["workers"]
    for ax, (case, rows) in zip(axes.flat, by_case.items()):
        n = [r["rows"] for r in rows]
        for name, style in STYLE.items():
            speedup = [time_of(r, "serial") / time_of(r, name) for r in rows]
            ax.plot(n, speedup, label=name, **style)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(cores, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(case)
        ax.set_xlabel("rows")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes.flat[len(by_case) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("speedup vs serial")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    meta = results["meta"]
    fig.suptitle(
        f"sklearn-parpredict, {meta['suite']} suite, {meta['date']}, "
        f"{meta['cores']} cores (dotted: cores; solid grey: serial)"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write ``<date>-<cores>cores.md`` and ``.png`` into ``out_dir``.

    The raw results (every timed sample) go to a ``.json`` beside them.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = results["meta"]
    stem = f"{meta['date']}-{meta['cores']}cores"
    md_path, png_path = out_dir / f"{stem}.md", out_dir / f"{stem}.png"
    plot(results, png_path)
    md_path.write_text(markdown(results, png_path.name))
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    return md_path, png_path

"""Measurements that need a fresh process: repeated calls and peak memory.

A first call is only cold, and a process tree's memory only clean, in a
process that has started no pool yet. The suite runs
``python -m benchmarks._isolated KIND JSON_ARGS`` and reads the JSON result
printed on the last line of its output.
"""

from __future__ import annotations

import contextlib
import gc
import json
import pickle
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import psutil

from benchmarks._cases import Workload
from benchmarks._machine import PSS_INTERVAL, PeakRSS, tree_memory
from benchmarks._measure import DecisionLog, after, assert_same, before
from benchmarks._peers import METHODS, N_WORKERS, Ceiling, Tutorial, rows
from sklearn_parpredict import ParallelPredictor, _sharing


def run_isolated(kind: str, **kwargs) -> dict:
    """Run ``kind`` in a fresh interpreter; its result, or ``{"error": ...}``."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks._isolated", kind, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,  # where `benchmarks` imports
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"{kind} exited with {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


class ModelShipping:
    """Within ``with``: how often this process wrote a fitted model for
    worker processes, and which written state each reference pickled into a
    task named (its token).

    Counted by wrapping the package's own writer and its handle's pickling,
    so a model written again (a new token) or put into a task whole would
    show. Each worker loads a written state once and keeps it under its
    token (:mod:`sklearn_parpredict._sharing`); that side is not counted.
    """

    def __init__(self):
        self.writes = 0
        self.tokens: list[str] = []

    def __enter__(self):
        self._dump = _sharing._dump_model
        self._reduce = _sharing.ModelHandle.__reduce__
        dump, reduce = self._dump, self._reduce

        def counted_dump(model, path):
            self.writes += 1
            return dump(model, path)

        def counted_reduce(handle):
            self.tokens.append(handle.token)
            return reduce(handle)

        _sharing._dump_model = counted_dump
        _sharing.ModelHandle.__reduce__ = counted_reduce
        return self

    def __exit__(self, *exc):
        _sharing._dump_model = self._dump
        _sharing.ModelHandle.__reduce__ = self._reduce

    def mark(self) -> tuple[int, int]:
        """Writes and references so far, to tell the phases of a run apart."""
        return self.writes, len(self.tokens)


def _load(model_path: str, X_path: str) -> Workload:
    model, X = joblib.load(model_path), joblib.load(X_path)
    return Workload([(model, None)], X, ParallelPredictor(model, n_jobs=-1))


def repeated(
    model_path: str, X_path: str, calls: int, rows_per_call: int, methods: list[str]
) -> dict:
    """Per-call seconds of two rounds of ``calls`` calls on consecutive batches.

    Every method is built once and reused across calls (the same fitted
    ``ParallelPredictor``; the ceiling's fork pool); the tutorial pickles the
    model with every chunk of every call, as written. The first call of
    ``parpredict`` in this fresh process (pool start, model shipping, cost
    probe) is reported on its own as ``cold``, and each method's second
    call, made before the rounds, as ``warm_up``.

    The first round is what the calls after those cost, while
    ``parpredict`` may still run them in-process: it starts its pool in the
    background only once the time that calls lost without it reaches what
    starting it costs. The second round (every method but the tutorial,
    whose calls are all alike) is the steady state, ``parpredict``'s pool
    warm as the ceiling's is from the start. Every call's time is kept
    (``per_call``, one dict per round): a median hides the calls a round
    ran at serial speed while the pool started, a mean does not. How each
    of ``parpredict``'s calls ran is read from its debug log, per round
    (``round_plans``), and how often the model was written for workers and
    referenced in tasks is counted per phase (``shipping``, see
    :class:`ModelShipping`).
    """
    work = _load(model_path, X_path)
    bounds = [(i * rows_per_call, (i + 1) * rows_per_call) for i in range(calls)]
    expected = [work.serial(rows(work.X, a, b)) for a, b in bounds]
    log = DecisionLog()
    shipping = ModelShipping()
    # Writes and references at the end of each phase: before, cold call,
    # warm-up calls, first round, second round.
    marks = [(0, 0)]
    plan_marks = []

    with shipping:
        start = time.perf_counter()
        with log:
            out = work.ours.predict(rows(work.X, *bounds[0]))
        cold = time.perf_counter() - start
        assert_same(expected[0], out)
        marks.append(shipping.mark())

        built, errors, warm_up_s = {}, {}, {}
        for name in methods:
            try:
                built[name] = METHODS[name](work)
                # Warm-up, not in the rounds.
                warm_up = built[name].bind(*bounds[0])
                before(warm_up)
                try:
                    with log if name == "parpredict" else contextlib.nullcontext():
                        start = time.perf_counter()
                        out = warm_up()
                        warm_up_s[name] = time.perf_counter() - start
                    assert_same(expected[0], out)
                finally:
                    after(warm_up)
            except Exception as exc:  # a peer that is unavailable or wrong
                errors[name] = f"{type(exc).__name__}: {exc}"
        marks.append(shipping.mark())
        methods = built
        rounds: list[dict[str, list[float]]] = [
            {name: [] for name in methods},
            {name: [] for name in methods if name != Tutorial.name},
        ]

        def timed(name: str, i: int, samples: dict) -> None:
            call = methods[name].bind(*bounds[i])
            before(call)
            with log if name == "parpredict" else contextlib.nullcontext():
                start = time.perf_counter()
                out = call()
                samples[name].append(time.perf_counter() - start)
            after(call)
            try:
                assert_same(expected[i], out)
            except AssertionError as exc:
                errors.setdefault(name, f"wrong output: {exc}")

        # As in the suite: the others interleaved in a random order per call,
        # then the tutorial's calls, whose forks would slow whatever came next.
        rng = random.Random(0)
        for samples in rounds:
            plan_marks.append(len(log.plans))
            names = [n for n in samples if n not in errors and n != Tutorial.name]
            for i in range(calls):
                rng.shuffle(names)
                for name in names:
                    timed(name, i, samples)
            marks.append(shipping.mark())
        plan_marks.append(len(log.plans))
        if Tutorial.name in methods and Tutorial.name not in errors:
            for i in range(calls):
                timed(Tutorial.name, i, rounds[0])
        for method in methods.values():
            method.close()
    # What one task carries in place of the model (outside the count).
    reference_bytes = len(pickle.dumps(_sharing.ModelHandle(work.models[0][0])))

    def medians(samples: dict) -> dict:
        return {
            name: (statistics.median(s) if name not in errors and s else None)
            for name, s in samples.items()
        }

    return {
        "calls": calls,
        "rows": rows_per_call,
        "cold": cold,
        "warm_up": warm_up_s,
        "median": medians(rounds[0]),
        "steady": medians(rounds[1]),
        "per_call": [
            {name: s for name, s in samples.items() if name not in errors}
            for samples in rounds
        ],
        "on_workers": log.on_workers,
        "plans": log.plans,
        "round_plans": [
            log.plans[a:b] for a, b in zip(plan_marks[:-1], plan_marks[1:])
        ],
        "shipping": {
            "phases": ["cold call", "warm-up calls", "first round", "second round"],
            "writes": [b[0] - a[0] for a, b in zip(marks[:-1], marks[1:])],
            "references": [b[1] - a[1] for a, b in zip(marks[:-1], marks[1:])],
            "tokens": len(set(shipping.tokens)),
            "reference_bytes": reference_bytes,
        },
        "errors": errors,
        "model_bytes": work.model_bytes,
    }


def load_sklearn() -> int:
    # Run in a worker: import what unpickling the model will import.
    import sklearn.ensemble  # noqa: F401

    return 0


# The parts of the memory case, each measured in a fresh process: what one
# method leaves behind (the tutorial's pickled tasks, a pool's threads' malloc
# arenas) stays in the parent's resident size and would be charged to the
# next method. Measured in one process, the ceiling and the tutorial left the
# parent 120 MiB larger at rest than serial's (2 cores, 200,000 rows).
MEMORY_PARTS = ("serial", "ceiling", "tutorial", "default", "threads", "processes")


def memory(model_path: str, X_path: str, part: str) -> dict:
    """Peak memory, parent + workers, of one part of the memory case.

    Each part runs in its own fresh process and measures from the same
    start: the model and rows loaded, nothing else run. ``serial`` also
    records the process at rest. The ceiling and the tutorial give context
    (forked workers count the pages they share with the parent once in each
    resident size, so that overstates them; the proportional set size does
    not). ``default`` is ``parpredict`` as a user gets it, ``backend=None``:
    two calls, the first cold, each with how it ran (it may run on threads or
    in-process and start no workers). ``threads`` is ``parpredict`` with
    ``backend="threading"``.
    ``processes`` first starts workers with scikit-learn imported but no
    model, to tell the fixed price of any worker process from what a call
    adds, then makes two ``parpredict`` calls on them (``backend="loky"``,
    two chunks per worker): the first ships the model.
    The output of every call is checked against serial's, computed after
    the measurement so that it is not in the window.
    """
    work = _load(model_path, X_path)
    n = len(work.X)
    gc.collect()
    result: dict = {
        "rows": n,
        "n_workers": N_WORKERS,
        "model_bytes": work.model_bytes,
        # How the peak PSS was sampled (results before this kept the PSS at
        # the resident peak only).
        "pss_every_s": PSS_INTERVAL,
    }
    outputs = []

    def measure(label, call):
        with PeakRSS(pss=True) as peak:
            outputs.append(call())
        result[label], result[label + "_pss"] = peak.peak, peak.peak_pss
        gc.collect()

    if part == "serial":
        result["baseline"], result["baseline_pss"] = tree_memory(pss=True)
        measure("serial", lambda: work.serial(work.X))
    elif part in ("ceiling", "tutorial"):
        cls = {"ceiling": Ceiling, "tutorial": Tutorial}[part]

        def call():
            method = cls(work)
            out = method.bind(0, n)()
            method.close()
            return out

        measure(part, call)
    elif part == "default":
        default = ParallelPredictor(work.models[0][0], n_jobs=-1)
        decisions = DecisionLog()
        for label in ("parpredict_default_first", "parpredict_default_second"):
            with decisions:
                measure(label, lambda: default.predict(work.X))
        result["default_ran"] = decisions.plans
    elif part == "threads":
        threads = ParallelPredictor(work.models[0][0], n_jobs=-1, backend="threading")
        measure("parpredict_threads", lambda: threads.predict(work.X))
    elif part == "processes":
        joblib.Parallel(n_jobs=N_WORKERS)(
            joblib.delayed(load_sklearn)() for _ in range(N_WORKERS)
        )
        time.sleep(0.5)  # let the workers settle after the imports
        rss, pss = tree_memory(pss=True)
        own = psutil.Process().memory_full_info()
        result["idle_workers"] = rss - own.rss
        result["idle_workers_pss"] = pss - own.pss if pss is not None else None
        # Workers for certain: by default, the wrapper may measure threads
        # faster for this forest, or keep a call in-process, and neither needs
        # worker memory. Two chunks per worker, as "auto" picks here.
        processes = ParallelPredictor(
            work.models[0][0],
            n_jobs=-1,
            backend="loky",
            chunk_size=-(-n // (2 * N_WORKERS)),
        )
        for label in ("parpredict_first", "parpredict_second"):
            measure(label, lambda: processes.predict(work.X))
    else:
        raise ValueError(f"unknown part of the memory case: {part!r}")
    expected = work.serial(work.X)
    for out in outputs:
        assert_same(expected, out)
    return result


def main(argv: list[str]) -> None:
    kind, kwargs = argv[0], json.loads(argv[1])
    from benchmarks._dask import measure as dask

    result = {"repeated": repeated, "memory": memory, "dask": dask}[kind](**kwargs)
    print(json.dumps(result, default=lambda o: o.item() if np.isscalar(o) else o))


if __name__ == "__main__":
    main(sys.argv[1:])

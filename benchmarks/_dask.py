"""Scaling out: Dask against loky on this machine, and the scheduler's memory.

A real cluster as a user would start one: ``dask scheduler`` and ``dask
worker --nworkers 2 --nthreads 1`` as separate processes on 127.0.0.1, so the
scheduler's memory is its own process's. The suite runs this in a fresh
process (``python -m benchmarks._isolated dask ...``); it is skipped with a
message when Dask is not installed.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks._cases import build_repeated_forest
from benchmarks._machine import PeakRSS
from benchmarks._measure import assert_same

ROWS = {True: 100_000, False: 400_000}
N_WORKERS = 2
# Chunks per call: the scheduler's memory should not grow with them.
CHUNKS = (4, 16, 64, 256)
# The same for the recipe that puts the model in every task; bounded, as the
# scheduler holds a copy of the model per task.
NAIVE_CHUNKS = (4, 16)


@contextlib.contextmanager
def _cluster():
    """A scheduler and two single-threaded worker processes on 127.0.0.1."""
    with tempfile.TemporaryDirectory(prefix="parpredict-dask-") as tmp:
        file = str(Path(tmp, "scheduler.json"))
        dask = [sys.executable, "-m", "dask"]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        scheduler = subprocess.Popen(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", "0"]
            + ["--no-dashboard", "--scheduler-file", file],
            **quiet,
        )
        workers = subprocess.Popen(
            [*dask, "worker", "--scheduler-file", file, "--host", "127.0.0.1"]
            + ["--nworkers", str(N_WORKERS), "--nthreads", "1", "--no-dashboard"],
            **quiet,
        )
        try:
            deadline = time.monotonic() + 60
            while not Path(file).exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            yield file, psutil.Process(scheduler.pid)
        finally:
            for proc in (workers, scheduler):
                proc.terminate()
                proc.wait(timeout=30)


def _median_seconds(call, expected, repeats: int) -> float:
    assert_same(expected, call())  # warm-up: workers started, model shipped
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        samples.append(time.perf_counter() - start)
        assert_same(expected, out)
    return statistics.median(samples)


def _wrapper_seconds(model, X, expected, backend: str, chunk: int, repeats: int):
    from sklearn_parpredict import ParallelPredictor

    seconds = {}
    for label, size in ((backend, chunk), (f"{backend}, auto", "auto")):
        wrapper = ParallelPredictor(model, backend=backend, chunk_size=size)
        call = functools.partial(wrapper.predict, X)
        seconds[label] = _median_seconds(call, expected, repeats)
    return seconds


def _predict(model, X):
    return model.predict(X)


def _scheduler_memory(client, scheduler, model, X, expected) -> dict:
    """The scheduler's peak resident bytes over one call, per chunk count."""
    from sklearn_parpredict import ParallelPredictor

    n = len(X)
    out = {"at_rest": scheduler.memory_info().rss, "parpredict": {}, "naive": {}}
    for chunks in CHUNKS:
        wrapper = ParallelPredictor(model, backend="dask", chunk_size=-(-n // chunks))
        with PeakRSS(process=scheduler) as peak:
            assert_same(expected, wrapper.predict(X))
        out["parpredict"][chunks] = peak.peak
    for chunks in NAIVE_CHUNKS:
        # The usual recipe: the model is an argument of every task.
        size = -(-n // chunks)
        parts = [X[i : i + size] for i in range(0, n, size)]
        with PeakRSS(process=scheduler) as peak:
            futures = client.map(_predict, [model] * len(parts), parts, pure=False)
            assert_same(expected, np.concatenate(client.gather(futures)))
            del futures
        out["naive"][chunks] = peak.peak
    return out


def measure(quick: bool, repeats: int) -> dict:
    """Seconds per call (serial, loky, Dask) and the scheduler's peak memory."""
    try:
        import distributed
    except ImportError:
        return {"skipped": "dask/distributed not installed (pip install '.[dask]')"}
    n = ROWS[quick]
    model, X = build_repeated_forest(n)
    expected = model.predict(X)
    chunk = -(-n // (2 * N_WORKERS))
    result = {
        "rows": n,
        "n_workers": N_WORKERS,
        "chunk_rows": chunk,
        "model_bytes": len(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)),
    }
    serial = functools.partial(model.predict, X)
    seconds = {"serial": _median_seconds(serial, expected, repeats)}
    seconds.update(_wrapper_seconds(model, X, expected, "loky", chunk, repeats))
    with _cluster() as (file, scheduler):
        with distributed.Client(scheduler_file=file) as client:
            client.wait_for_workers(N_WORKERS, timeout=120)
            seconds.update(_wrapper_seconds(model, X, expected, "dask", chunk, repeats))
            result["scheduler"] = _scheduler_memory(
                client, scheduler, model, X, expected
            )
    result["seconds"] = seconds
    return result

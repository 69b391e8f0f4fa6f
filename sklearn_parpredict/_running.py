"""Running a call's plan: its tasks on a joblib backend, their outputs
filed by rows, and what their timings teach the costs.

Processes get the model through a :class:`~._sharing.ModelHandle` (shipped
once per worker) and large dense rows through a memory-mapped file; threads
get both as they are, with the estimator's own threads limited to their
share of the cores; a cluster gets its own references.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

from sklearn_parpredict import _costs, _distributed, _planning, _pools, _threads
from sklearn_parpredict._fanout import fan_out
from sklearn_parpredict._jobs import Job, log, run_piece, run_returned, run_timed
from sklearn_parpredict._pickled import PickledRows, Spool, object_columns, received
from sklearn_parpredict._rows import SharedArray, SharedRows, laid_out, shares
from sklearn_parpredict._sharing import ModelHandle


def run(
    jobs: list[Job],
    sizes: list[int],
    plan: _planning.Plan,
    costs: list | None,
    cold_s: float,
    done: list,
    workers: _pools.Workers,
    verbose: int,
) -> None:
    """Run ``plan`` on ``workers`` and file each task's output in ``done``;
    with ``costs`` (the plan was chosen on them), teach them what the tasks
    took."""
    n_workers, cluster = workers.n, workers.cluster
    # A thread plan chosen for a backend left to us runs on threads.
    run_backend = (
        "threading"
        if plan.kind != workers.kind
        else _distributed.parallel_backend(workers.backend, workers.active)
    )

    # What the plan's rows cost serially, before its tasks teach the costs.
    rows_s = (
        sum(c.per_row * (b - a) for c, r in zip(costs, plan.ranges) for a, b in r)
        if costs
        else 0.0
    )

    def run():
        return _run_tasks(
            jobs, plan, costs, done, n_workers, run_backend, verbose, cluster
        )

    calm = _pools.calm()
    with _costs.Timer() as timer:
        if cluster is None:
            timings = run()
        else:
            # Once more, should a lost worker take a model with it.
            timings = cluster.run(run, [job.estimator for job in jobs])
    log(
        jobs,
        sizes,
        f"{sum(map(len, plan.ranges))} tasks on {n_workers} {plan.kind} "
        f"workers in {timer.wall:.3g} s"
        + (f" (predicted {plan.seconds:.3g} s)" if costs is not None else ""),
    )
    if costs is not None and _pools.calm_since(calm):
        _learn(jobs, sizes, plan, costs, cold_s, n_workers, timer.wall, rows_s, timings)
    if plan.kind == "process":
        _pools.ran(jobs, workers.key)


def _learn(jobs, sizes, plan, costs, cold_s, n_workers, wall, rows_s, timings):
    """Teach the costs what a plan chosen on them took: ``wall`` in all,
    ``timings`` per task, where its rows were to cost ``rows_s`` serially.
    Tasks on threads that outgrew their costs teach nothing (see
    :func:`_forget_outgrown`)."""
    if plan.kind == "thread" and _forget_outgrown(jobs, costs, timings):
        return
    cpu_s = sum(t[3] for t in timings)
    # A trial was planned at the threads' best: what it took beyond that is
    # their speedup, learnt from it, not slowness or overhead.
    warm = not cold_s and not plan.trial
    if plan.trial:
        _planning.learn_thread_trial(costs, plan, wall, cpu_s, n_workers)
        log(
            jobs,
            sizes,
            "threads tried on the whole call: their speedup now "
            f"{costs[0].thread_speedup:.2f}x",
        )
    # A warm thread plan far slower than planned teaches nothing from its
    # tasks: they would teach the cost a serial time as slow as the threads
    # were, against which they would go on looking fast enough.
    if warm and _planning.learn_thread_speedup(costs, plan, wall, rows_s, n_workers):
        return
    if warm:
        _planning.raise_thread_speedup(costs, plan, wall, cpu_s, n_workers)
    _learn_from_tasks(costs, plan, n_workers, timings)
    if warm:
        _planning.learn_overhead(costs, plan, wall, n_workers)


def _run_tasks(jobs, plan, costs, done, n_workers, backend, verbose, cluster=None):
    """Run the planned row ranges on the backend and file their outputs."""
    ranges = plan.ranges
    process = plan.kind == "process"
    shared: dict[int, SharedArray] = {}
    spool = Spool()
    keys, tasks, weights = [], [], []
    for j, job in enumerate(jobs):
        if not ranges[j]:
            continue
        # Processes get handles that ship the model once per worker and
        # large dense input through a memory-mapped file; a cluster gets its
        # own reference to the model, and the rows with each task.
        if cluster is not None:
            model = cluster.model(job.estimator)
        else:
            model = ModelHandle(job.estimator) if process else job.estimator
        X = job.X
        share = process and cluster is None and shares(X)
        if share:
            ref = shared.setdefault(id(X), SharedArray(X))
        # Asked once of all the chunks: a DataFrame lists its dtypes in the
        # time it takes to pickle 500 of its rows.
        objects = process and cluster is None and not share and object_columns(X)
        for start, stop in ranges[j]:
            rows: Any
            if share:
                rows = ref.rows(start, stop)
            elif cluster is not None:
                rows = cluster.rows(laid_out(job.rows(start, stop)))
            elif process:
                # Other rows for processes go pickled on their own.
                rows = PickledRows(job.rows(start, stop), spool, objects)
            else:
                rows = job.rows(start, stop)
            keys.append((j, start, stop))
            tasks.append(
                (model, job.method, rows, job.columns, job.params_for(start, stop))
            )
            weights.append((stop - start) * (costs[j].per_row if costs else 1.0))
    # Longest tasks first, so that short ones fill the gaps at the end.
    order = sorted(range(len(tasks)), key=weights.__getitem__, reverse=True)
    limits = contextlib.nullcontext()
    if not process:
        limits = _threads.limit_inner_threads(costs, n_workers)
    function: Callable = run_timed
    calls: list = [tasks[i] for i in order]
    if process and cluster is None:
        function = run_returned
    if cluster is not None:
        # The worker finds the model behind its reference and the rows in
        # their carrier.
        function, calls = _distributed.run_carried, [(run_timed, *c) for c in calls]
    # A task's exception says which job's rows failed, and how soon.
    function = functools.partial(run_piece, function)
    calls = [
        (id(jobs[keys[i][0]]), keys[i][1], keys[i][2], *call)
        for i, call in zip(order, calls)
    ]
    try:
        # Rows shared through files are written on threads of their own,
        # several at once, in the order their tasks are sent.
        for rows in (tasks[i][2] for i in order):
            if isinstance(rows, SharedRows):
                rows.write_ahead()
        with limits:
            # Failed, the call raises the first rows' error, as the serial
            # call does: the tasks go longest first, ranked in row order.
            outputs = fan_out(
                function,
                calls,
                n_workers=n_workers,
                backend=backend,
                verbose=verbose,
                rank=order,
                tallies=[jobs[keys[i][0]].tally for i in order],
            )
    finally:
        spool.close()
        for array in shared.values():
            array.close()
    timings = []
    for i, (out, wall, cpu) in zip(order, outputs):
        j, start, stop = keys[i]
        done[j].append((start, stop, received(out)))
        timings.append((j, stop - start, wall, cpu))
    return timings


def _forget_outgrown(jobs: list[Job], costs, timings) -> bool:
    """Forget the costs of the jobs whose tasks on threads outgrew them (see
    :data:`._costs.OUTGROWN`), and say whether any did: the run then teaches
    nothing. Judged on the tasks' own CPU time, which other load on the
    machine leaves alone (a process worker's would count loading the model).
    """
    predicted = [0.0] * len(jobs)
    seconds = [0.0] * len(jobs)
    sizes = [0] * len(jobs)
    for j, rows, _, cpu in timings:
        predicted[j] += costs[j].seconds(rows)
        seconds[j] += cpu
        sizes[j] += rows
    outgrown = [
        j for j in range(len(jobs)) if _costs.outgrown(predicted[j], seconds[j])
    ]
    for j in outgrown:
        _costs.forget_cost(jobs[j].estimator, jobs[j].method, costs[j])
    if outgrown:
        log(jobs, sizes, "tasks outgrew the costs (refitted): forgotten")
    return bool(outgrown)


def _learn_from_tasks(costs, plan, n_workers: int, timings) -> None:
    """Teach each job's cost the serial time its tasks imply, or, for an
    estimator with threads of its own on workers that each get one core,
    its speed on one thread."""
    one_core = plan.kind == "process" and _planning.cores_per_worker(n_workers) == 1
    for j, rows, wall, _ in timings:
        cost = costs[j]
        unmeasured = cost.wants_own_measurement()
        if one_core and (cost.one_thread_per_row is not None or unmeasured):
            # The task timed the rows on one thread, as the plan's workers
            # run them. Scaled back to the serial call by a speedup measured
            # in-process, it would teach the cost a serial time as far off
            # as that speedup, and the next plans the same misjudged gain.
            cost.add_one_thread_task(rows, wall)
            continue
        if unmeasured:
            # Scaled back by a speedup of the estimator's own threads that
            # is a guess (all the cores it kept busy), the serial time would
            # be as far off: a model whose threads gain nothing, guessed at
            # 2x, learnt serial calls twice as fast as they run (2 cores).
            continue
        serial_s = _planning.serial_equivalent(cost, plan.kind, n_workers, wall)
        # Workers are limited to their share of the cores: keep the serial
        # call's measure of how many cores it uses.
        cost.add(rows, serial_s, serial_s * cost.threads, in_process=False)

"""What the machine gives a measurement: peak memory of a process tree, and
the cores that other work kept busy."""

from __future__ import annotations

import math
import threading
import time

import psutil


def tree_memory(
    process: psutil.Process | None = None, *, pss: bool = False
) -> tuple[int, int | None]:
    """Resident and proportional bytes of a process and its descendants.

    Resident sizes count a page shared by several processes (a shared
    library, a memory-mapped input, a forked parent's heap) once in each;
    the proportional set size (Linux only, ``None`` elsewhere or unless
    ``pss``) splits it between them, so its sum is what the tree takes.
    """
    process = process or psutil.Process()
    rss, proportional = 0, 0 if pss else None
    for p in [process, *process.children(recursive=True)]:
        try:
            if proportional is None:
                rss += p.memory_info().rss
                continue
            info = p.memory_full_info()
            rss += info.rss
            proportional = proportional + info.pss if hasattr(info, "pss") else None
        except psutil.Error:  # a worker that exited while we looked
            pass
    return rss, proportional


# Seconds between reads of the proportional set size, apart from those at
# each new resident peak: reading it costs about half a millisecond per
# process, and reading it every 5 ms took 40% of a core, enough to change
# the wrapper's own timings; every 50 ms takes about a tenth of that.
PSS_INTERVAL = 0.05


class PeakRSS:
    """Peak resident memory of a process and its children over a block.

    The process is this one unless given (a Dask scheduler, ...). A
    background thread samples every ``interval`` seconds; workers that start
    and end inside the block are caught as long as they live for at least a
    sample. With ``pss``, the peak proportional set size is kept too
    (``peak_pss``; ``None`` where the system does not give it), read at each
    new resident peak and every ``pss_interval`` seconds besides: the two
    peaks need not coincide (a forked worker writing to pages it shares
    with its parent adds to the PSS sum, not to the resident one), and
    reading it is too costly for every sample.
    """

    def __init__(
        self,
        interval: float = 0.005,
        process: psutil.Process | None = None,
        *,
        pss: bool = False,
        pss_interval: float = PSS_INTERVAL,
    ):
        self.interval = interval
        self.process = process
        self.pss = pss
        self.pss_interval = pss_interval
        self.peak = 0
        self.peak_pss = None
        self._next_pss = -math.inf

    def _update(self):
        rss, _ = tree_memory(self._process)
        now = time.perf_counter()
        if self.pss and (rss >= self.peak or now >= self._next_pss):
            # Read again: the resident size may have moved in between.
            rss, pss = tree_memory(self._process, pss=True)
            self._next_pss = now + self.pss_interval
            if pss is not None:
                self.peak_pss = max(self.peak_pss or 0, pss)
        self.peak = max(self.peak, rss)

    def _sample(self):
        while not self._stop.is_set():
            self._update()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._process = self.process or psutil.Process()
        self._update()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._update()


def _tree_cpu(process: psutil.Process) -> tuple[float, dict[int, float]]:
    """CPU seconds of reaped children, and of each live process of the tree."""
    own = process.cpu_times()
    live = {}
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        live[p.pid] = times.user + times.system
    return own.children_user + own.children_system, live


def _machine_busy() -> float:
    t = psutil.cpu_times()
    # Steal is a core lost to other tenants of the host: other work too.
    return sum(
        getattr(t, name, 0.0)
        for name in ("user", "nice", "system", "irq", "softirq", "steal")
    )


class OtherLoad:
    """Cores kept busy by other work than this process tree, over a block.

    The machine's busy CPU time minus this process tree's (live workers and
    reaped children included), divided by the block's wall time: how much of
    the machine other users took while we measured. On a 2-core machine a
    value near 1 means parallel methods had one core, not two.
    """

    def __enter__(self):
        self._process = psutil.Process()
        self._wall = time.perf_counter()
        self._busy = _machine_busy()
        self._reaped, self._live = _tree_cpu(self._process)
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._wall
        busy = _machine_busy() - self._busy
        reaped, live = _tree_cpu(self._process)
        ours = reaped - self._reaped
        ours += sum(cpu - self._live.get(pid, 0.0) for pid, cpu in live.items())
        self.cores = max(0.0, (busy - ours) / max(wall, 1e-9))

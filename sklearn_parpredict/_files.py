"""This process's temporary files: a private folder on shared memory, new
names in it, their pages mapped copy-on-write, files kept for the next call
to write into, and their removal outside the calls' time, by background
threads.

Models (:mod:`._sharing`), shared rows (:mod:`._rows`), and pickled rows
and outputs (:mod:`._pickled`) go to other processes through these files.
"""

from __future__ import annotations

import atexit
import mmap
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sklearn_parpredict._locks import fork_safe

_lock = fork_safe(globals(), "_lock", threading.RLock)
_temp_dir: str | None = None
# The process that made the folder, and the forked child, if this process
# is one, that has registered its clean-up (see _in_parents_folder).
_owner: int | None = None
_cleans_up: int | None = None
# What a forked child removes from its parent's folder when it exits.
_child_exit_hooks: list[Callable[[], None]] = []


def temp_folder() -> str:
    """A private folder on shared memory when it has room, else on disk.

    It is removed at exit and, should the process be killed, by loky's
    resource tracker (as joblib's folders are): files on shared memory
    otherwise hold memory until the machine restarts. A forked child
    shares its parent's folder (a ``multiprocessing`` worker writes its
    outputs there), which only the parent removes. A folder removed from
    under the process is made anew.
    """
    global _temp_dir, _owner
    with _lock:
        if _temp_dir is None or not os.path.isdir(_temp_dir):
            base = os.environ.get("JOBLIB_TEMP_FOLDER")
            if base is None and os.path.isdir("/dev/shm"):
                stats = os.statvfs("/dev/shm")
                if stats.f_bavail * stats.f_frsize > 2 << 30:
                    base = "/dev/shm"
            _temp_dir = tempfile.mkdtemp(prefix="sklearn_parpredict_", dir=base)
            _owner = os.getpid()
            _track(_temp_dir, "register")
            atexit.register(_remove_folder, _temp_dir, _owner)
        elif _owner != os.getpid():
            _in_parents_folder()
        return _temp_dir


def at_child_exit(hook: Callable[[], None]) -> Callable[[], None]:
    """Have ``hook`` remove, when a forked child exits, files it wrote into
    its parent's folder; return it."""
    _child_exit_hooks.append(hook)
    return hook


def _in_parents_folder() -> None:
    """In a forked child about to write into its parent's folder, which
    goes only when the parent exits (a server recycling its forked workers
    filled it): have what it leaves there removed when it exits.

    Registered on its first file, both as an exit handler and as a
    multiprocessing finalizer: a ``multiprocessing`` child runs its
    finalizers and then ends with ``os._exit``, and it clears those of its
    parent when it starts.
    """
    global _cleans_up
    pid = os.getpid()
    if _cleans_up == pid:
        return
    _cleans_up = pid
    from multiprocessing import util

    atexit.register(_child_exit, pid)
    util.Finalize(None, _child_exit, args=(pid,), exitpriority=0)


def _child_exit(pid: int) -> None:
    global _cleans_up
    # Once: both the exit handler and the finalizer run in a forked child.
    if os.getpid() == pid and _cleans_up == pid:
        _cleans_up = -1
        drop_kept()
        for hook in _child_exit_hooks:
            hook()


def _remove_folder(path: str, owner: int) -> None:
    # A forked child runs its parent's exit handlers too.
    if os.getpid() == owner:
        _track(path, "unregister")
        shutil.rmtree(path, ignore_errors=True)


def _track(path: str, action: str) -> None:
    """(Un)register ``path`` with loky's resource tracker, which removes it
    once every process that could register it is gone."""
    try:
        from joblib.externals.loky.backend import resource_tracker

        getattr(resource_tracker, action)(path, "folder")
    except Exception:  # noqa: S110 - no tracker: the exit handler still removes it
        pass


def temp_path(what: str) -> str:
    """A new file name in this process's temporary folder."""
    return os.path.join(temp_folder(), f"{what}-{uuid.uuid4().hex}")


# Files that a call wrote and no longer reads are kept for the next call to
# write into, up to this many bytes, for this long after they were kept: a
# write into pages that shared memory holds already is a copy, where a new
# file's pages are first allocated and zeroed (80 MB of rows: 16.5 ms
# against 35 ms). Calls on 2 processes, paired, ran 1.01x to 1.05x faster
# (gradient boosting on 20,000 to 500,000 rows, a 20-tree forest on 100,000;
# 2 cores). Bounded, as the pages count against the process's memory limit
# (a container's) while they are kept.
KEEP_BYTES = 256 << 20
KEEP_S = 30.0
# Kept files, (size, when kept, path), and the pid that kept them: a forked
# child must not write into its parent's files.
_kept: list[tuple[int, float, str]] = []
_kept_pid: int | None = None
_sweeping = False


def _own_kept() -> list[tuple[int, float, str]]:
    global _kept, _kept_pid, _sweeping
    if _kept_pid != os.getpid():
        _kept, _kept_pid, _sweeping = [], os.getpid(), False
    return _kept


def reused(nbytes: int) -> str | None:
    """A kept file of at least ``nbytes``, the smallest, now the caller's to
    write into from its start and to :func:`keep` again; None if none is."""
    with _lock:
        kept = _own_kept()
        fits = [entry for entry in kept if entry[0] >= nbytes]
        if not fits:
            return None
        entry = min(fits)
        kept.remove(entry)
        return entry[2]


def keep(paths: list[str]) -> None:
    """Keep the files at ``paths``, which nothing reads any more, for
    :func:`reused`: up to ``KEEP_BYTES`` in all, each for ``KEEP_S``
    seconds; the others are removed soon."""
    global _sweeping
    gone = []
    with _lock:
        kept = _own_kept()
        total = sum(entry[0] for entry in kept)
        for path in paths:
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            if size == 0 or total + size > KEEP_BYTES:
                gone.append(path)
                continue
            kept.append((size, time.monotonic(), path))
            total += size
        if kept and not _sweeping:
            _sweeping = True
            _sweep_later(KEEP_S)
    unlink_soon(gone)


def _sweep_later(delay: float) -> None:
    timer = threading.Timer(delay, _sweep)
    # Not waited for at exit: the folder goes then, and the files with it.
    timer.daemon = True
    timer.start()


def _sweep() -> None:
    """Remove the files kept for ``KEEP_S``; again when the next one is
    due, while any are kept."""
    global _sweeping
    with _lock:
        kept = _own_kept()
        now = time.monotonic()
        old = [entry for entry in kept if now - entry[1] >= KEEP_S]
        for entry in old:
            kept.remove(entry)
        _sweeping = bool(kept)
        if _sweeping:
            due = min(entry[1] for entry in kept) + KEEP_S
            _sweep_later(max(due - now, 0.01))
    _unlink_all([entry[2] for entry in old])


def drop_kept() -> None:
    """Remove every kept file now."""
    with _lock:
        kept = _own_kept()
        paths = [entry[2] for entry in kept]
        kept.clear()
    _unlink_all(paths)


def copied_pages(path: str, start: int = 0, length: int = 0) -> mmap.mmap:
    """``length`` bytes of the file at ``path`` from ``start`` (0: to its
    end), mapped copy-on-write: the process may write into what it maps, and
    the file keeps what was written to it."""
    with open(path, "rb") as file:
        return mmap.mmap(file.fileno(), length, access=mmap.ACCESS_COPY, offset=start)


def unlink(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


# Executors of this process's background threads, by name, with the pid
# that started them: a forked child holds the executor but not its threads.
_executors: dict[str, tuple[int, ThreadPoolExecutor]] = {}


def background(name: str, max_workers: int = 1) -> ThreadPoolExecutor:
    """This process's executor called ``name``, started on first use."""
    with _lock:
        pid, executor = _executors.get(name, (None, None))
        if pid != os.getpid() or executor is None:
            executor = ThreadPoolExecutor(
                max_workers, thread_name_prefix=f"parpredict-{name}"
            )
            _executors[name] = (os.getpid(), executor)
        return executor


def unlink_soon(paths: list[str]) -> None:
    """Remove ``paths`` on a thread of their own, not in the call's time.

    Removing a file from shared memory frees the pages no process maps
    any more there and then: 1.1 to 1.7 ms at the end of each call on
    16 MB of rows; 13 ms for 80 MB that nothing maps (2 cores). Files not
    yet removed at exit go with the folder.
    """
    paths = [path for path in paths if path]
    if not paths:
        return
    try:
        background("unlink").submit(_unlink_all, paths)
    except RuntimeError:  # the interpreter is shutting down
        _unlink_all(paths)


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        unlink(path)


def removed() -> None:
    """Wait until the files given to :func:`unlink_soon` are removed."""
    with _lock:
        pid, executor = _executors.get("unlink", (None, None))
    if pid == os.getpid() and executor is not None:
        executor.submit(lambda: None).result()

"""This process's temporary files: a private folder on shared memory, new
names in it, their pages mapped copy-on-write, and their removal outside
the calls' time, by background threads.

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
import uuid
from concurrent.futures import ThreadPoolExecutor

_lock = threading.RLock()
_temp_dir: str | None = None


def temp_folder() -> str:
    """A private folder on shared memory when it has room, else on disk."""
    global _temp_dir
    with _lock:
        if _temp_dir is None:
            base = os.environ.get("JOBLIB_TEMP_FOLDER")
            if base is None and os.path.isdir("/dev/shm"):
                stats = os.statvfs("/dev/shm")
                if stats.f_bavail * stats.f_frsize > 2 << 30:
                    base = "/dev/shm"
            _temp_dir = tempfile.mkdtemp(prefix="sklearn_parpredict_", dir=base)
            atexit.register(shutil.rmtree, _temp_dir, ignore_errors=True)
        return _temp_dir


def temp_path(what: str) -> str:
    """A new file name in this process's temporary folder."""
    return os.path.join(temp_folder(), f"{what}-{uuid.uuid4().hex}")


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
        if pid != os.getpid():
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
    if pid == os.getpid():
        executor.submit(lambda: None).result()

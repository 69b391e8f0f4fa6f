"""This process's temporary files: removed outside the calls' time."""

import os
import shutil
import signal
import subprocess
import sys
import time

from _helpers import in_child

from sklearn_parpredict import _files


def _unlink_in_child(paths):
    _files.unlink_soon(paths)
    _files.removed()


def test_files_are_removed_soon_on_a_thread_of_their_own_also_after_a_fork():
    import multiprocessing

    folder = _files.temp_folder()
    paths = [os.path.join(folder, f"soon-{i}") for i in range(4)]
    for path in paths:
        with open(path, "wb") as file:
            file.write(b"x" * 1000)
    _files.unlink_soon([paths[0], None])
    _files.unlink_soon([])
    _files.removed()
    assert not os.path.exists(paths[0])
    assert all(map(os.path.exists, paths[1:]))
    # A forked child holds the parent's executor without its thread: it
    # starts one of its own rather than queue work that never runs.
    child = multiprocessing.get_context("fork").Process(
        target=_unlink_in_child, args=(paths[1:3],)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert not any(map(os.path.exists, paths[1:3]))
    _files.unlink_soon(paths[3:])
    _files.removed()
    assert not os.path.exists(paths[3])


def test_a_forked_child_leaves_its_parents_folder_to_the_parent():
    folder = _files.temp_folder()
    # The child's exit handlers, its parent's copies, run as it ends: the
    # folder is not the child's to remove (it shares it, and a
    # multiprocessing worker writes its outputs there).
    assert in_child(lambda: _files.temp_folder() == folder) == 0
    assert in_child(lambda: _files._remove_folder(folder, os.getppid()) or 1) == 0
    assert os.path.isdir(folder)
    # Its owner's handler does remove it (the folder is made anew after).
    _files._remove_folder(folder, os.getpid())
    assert not os.path.isdir(folder)


def test_a_folder_removed_from_under_the_process_is_made_anew():
    folder = _files.temp_folder()
    shutil.rmtree(folder)
    again = _files.temp_folder()
    assert again != folder and os.path.isdir(again)
    path = _files.temp_path("x")
    with open(path, "wb") as file:
        file.write(b"x")
    _files.unlink(path)


def test_the_folder_of_a_killed_process_is_removed_by_the_resource_tracker():
    # Killed (the out-of-memory killer, a container's stop), the process
    # runs no exit handler: its files would hold shared memory for good.
    script = (
        "import os, signal\n"
        "from sklearn_parpredict import _files\n"
        "print(_files.temp_folder(), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL
    folder = proc.stdout.strip()
    assert "sklearn_parpredict_" in folder
    deadline = time.monotonic() + 30
    while os.path.isdir(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.isdir(folder)

"""This process's temporary files: removed outside the calls' time."""

import os

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

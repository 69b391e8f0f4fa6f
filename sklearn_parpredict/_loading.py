"""Loading a saved model for the command line, without running untrusted code.

``.skops`` files are loaded with :mod:`skops.io`, which builds only the types it
trusts; any other type in the file must be named by the user. Pickle and joblib
files run arbitrary code when loaded, so they are refused unless the user says
explicitly that the file is trusted.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

SKOPS_SUFFIXES = (".skops",)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


class CommandError(Exception):
    """An error the command line reports as one message and a non-zero exit."""


def load_model(
    path: str | Path,
    *,
    trusted: Iterable[str] = (),
    trust_pickle: bool = False,
) -> Any:
    """Load a fitted model saved with :mod:`skops.io` or pickle/joblib.

    Parameters
    ----------
    path : str or Path
        A ``.skops`` file, or a ``.pkl``, ``.pickle`` or ``.joblib`` file.

    trusted : iterable of str, default=()
        Types a ``.skops`` file may contain beyond those skops trusts by
        default, as the full names :func:`skops.io.get_untrusted_types`
        reports (``"sklearn.tree._tree.Tree"``).

    trust_pickle : bool, default=False
        Whether a pickle or joblib file may be loaded. Unpickling runs any
        code the file contains, so this must be asked for explicitly.

    Returns
    -------
    model : object
        The loaded model.

    Raises
    ------
    CommandError
        When the file is missing, has an unknown format, contains untrusted
        types, or is a pickle and ``trust_pickle`` is False.
    """
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SKOPS_SUFFIXES:
        return _load_skops(path, set(trusted))
    if suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise CommandError(
                f"refusing to load {path}: loading a pickle or joblib file runs "
                "any code it contains. Pass --trust-pickle only if you trust "
                "where the file comes from, or save the model with skops.io"
            )
        import joblib

        try:
            return joblib.load(path)
        except Exception as exc:
            raise CommandError(f"cannot load model {path}: {exc}") from exc
    raise CommandError(
        f"unknown model format {path.suffix!r} for {path}: expected "
        + ", ".join(SKOPS_SUFFIXES + PICKLE_SUFFIXES)
    )


def _load_skops(path: Path, trusted: set[str]):
    try:
        import skops.io as sio
    except ImportError as exc:
        raise CommandError(
            "loading .skops files needs skops: pip install 'sklearn-parpredict[io]'"
        ) from exc
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise CommandError(f"cannot read model {path} as skops: {exc}") from exc
    refused = [name for name in untrusted if name not in trusted]
    if refused:
        options = " ".join(f"--trust {name}" for name in refused)
        raise CommandError(
            f"refusing to load {path}: it contains types that are not trusted "
            f"by default: {', '.join(refused)}. If you trust the file, pass "
            f"{options}"
        )
    try:
        # Only the types just checked are passed, not everything the user
        # named: skops rejects nothing else, and that keeps its own check on.
        return sio.load(path, trusted=list(untrusted))
    except Exception as exc:
        raise CommandError(f"cannot load model {path}: {exc}") from exc

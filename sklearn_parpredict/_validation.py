"""Parameter checks that cost a set look-up once the same values passed.

scikit-learn's ``validate_params`` binds the call's signature and builds its
constraints on every call: 28 µs, a third of a call that predicts a few rows
with a linear model. The wrappers and :func:`parallel_predict` check their
settings on every call (a fitted wrapper may skip ``fit``), so values that
passed once are remembered, with their types: ``1.0 == 1`` and ``True == 1``,
but only ``1`` is a valid ``n_jobs``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from sklearn import get_config
from sklearn.utils._param_validation import validate_parameter_constraints

# Keys of values that passed; bounded, since a key may hold a type of input.
_valid: set = set()
_MAX_REMEMBERED = 4096


def validate_once(
    key: tuple, constraints: dict, values: Callable[[], dict], caller_name: str
) -> None:
    """``validate_parameter_constraints`` unless the values under ``key``
    passed before, or validation is switched off (``skip_parameter_validation``).

    ``key`` must tell apart any two sets of values that the constraints
    could judge differently; unhashable keys are always validated.
    """
    if seen_valid(key) or get_config()["skip_parameter_validation"]:
        return
    validate_parameter_constraints(constraints, values(), caller_name=caller_name)
    if len(_valid) < _MAX_REMEMBERED:
        with contextlib.suppress(TypeError):  # unhashable: checked every time
            _valid.add(key)


def seen_valid(key: tuple) -> bool:
    """Whether the values under ``key`` passed before: the check of
    :func:`validate_once` alone, for the calls of a wrapper."""
    try:
        return key in _valid
    except TypeError:  # unhashable values (a backend instance, a list)
        return False

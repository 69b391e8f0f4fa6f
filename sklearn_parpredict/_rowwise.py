"""Which calls give the serial output when their rows are split, and the
parameters each row range takes.

Splitting a call by rows assumes that a row's output depends on that row
alone. Estimators that draw random predictions per call, methods that fit
something to the whole batch, and parameters that ask for an output
coupling all rows (a covariance between every pair), break that
assumption: such calls stay whole, in-process.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.dummy import DummyClassifier
from sklearn.utils import get_tags

from sklearn_parpredict import _chunking

# Method parameters whose output, when true, is one value per pair of rows:
# GaussianProcessRegressor.predict(X, return_cov=True).
JOINT_PARAMS = frozenset({"return_cov"})

# scikit-learn's methods whose output for a row depends on the other rows of
# the call, or that is not rows, undeclared by any tag: NMF's transform starts
# every row's solution from the mean of the whole batch and stops when the
# batch as a whole has converged (split in 10-row chunks, outputs 2e-3 apart);
# BernoulliRBM draws its random numbers for the call as a whole, so a row gets
# other draws in another batch (score_samples 7.9 apart). A forest's
# decision_path returns, with its rows, its trees' node offsets, the same for
# any batch: they are not rows to join, and in chunks of as many rows as
# offsets they read as rows. GaussianProcessRegressor's sample_y draws the
# rows' samples jointly, from their covariance. (IterativeImputer's depends
# on its settings and the input: see _imputes_by_batch.) Named by module
# rather than imported: an instance's module is imported already, and
# workers need not import these.
BATCH_METHODS: dict[tuple[str, str], frozenset[str]] = {
    ("sklearn.decomposition._nmf", "NMF"): frozenset({"transform"}),
    ("sklearn.decomposition._nmf", "MiniBatchNMF"): frozenset({"transform"}),
    ("sklearn.neural_network._rbm", "BernoulliRBM"): frozenset(
        {"score_samples", "gibbs"}
    ),
    ("sklearn.ensemble._forest", "BaseForest"): frozenset({"decision_path"}),
    ("sklearn.gaussian_process._gpr", "GaussianProcessRegressor"): frozenset(
        {"sample_y"}
    ),
}

# Methods that fit the estimator to the batch (``fit_transform``, a
# clusterer's ``fit_predict``) or sum over it (``score``): split, each chunk
# would fit its own rows, and the function form takes any method's name.
_WHOLE_BATCH_PREFIXES = ("fit", "partial_fit")
_WHOLE_BATCH_METHODS = frozenset({"score"})

_declared_random: dict[type, bool] = {}
# See _contents.
_MEMBERS_ALIKE = 16
_PEEK = 4
_ENTRIES = 1_000
_holder_classes: dict[type, bool] = {}
# The meta-estimators that give their input as it is to the estimators in
# these attributes: a search (its best estimator and its template) and a
# frozen estimator. (Others may not: RFE gives its estimator_ the columns it
# selected.)
_GIVEN_AS_IS = {
    ("sklearn.model_selection._search", "BaseSearchCV"): (
        "best_estimator_",
        "estimator",
    ),
    ("sklearn.frozen._frozen", "FrozenEstimator"): ("estimator",),
}


def splittable(estimator, method: str, params: dict, X=None, columns=None) -> bool:
    """Whether ``estimator``'s ``method``, called with ``params`` on ``X``
    (None: any input) restricted to ``columns``, can be split by rows
    without changing its output."""
    if any(params.get(name) for name in JOINT_PARAMS):
        return False
    if fits_or_sums(method):
        return False
    # A meta-estimator calls its inner estimators' method of the same name
    # (an ensemble, a pipeline's last step) or their transform (a pipeline's
    # other steps, a column transformer).
    inner = {method, "transform"}
    given_X = _given_the_input(estimator)
    for value in (estimator, *_held_estimators(estimator)):
        if not _deterministic(value):
            return False
        if _batch_dependent(value, {method} if value is estimator else inner):
            return False
        if (value is estimator and method != "transform") or not _imputer(value):
            continue
        # Only the input itself tells, for an imputer that is given it.
        if not any(value is other for other in given_X):
            return False
        if _imputes_by_batch(value, X, columns):
            return False
    return True


def fits_or_sums(method: str) -> bool:
    """Whether ``method`` fits the estimator to its whole input or sums over
    it (``fit_transform``, ``fit_predict``, ``partial_fit``, ``score``)."""
    return method.startswith(_WHOLE_BATCH_PREFIXES) or method in _WHOLE_BATCH_METHODS


def _held_estimators(estimator) -> list:
    """The estimators that ``estimator`` holds in its attributes, at any
    depth, and in the lists, tuples and object arrays among them: those its
    parameters name (a pipeline's steps, a search's template) and its
    fitted ones (a search's best estimator, a column transformer's fitted
    transformers, an ensemble's members). Dicts are not looked into: a
    search's ``cv_results_`` holds the candidates it did not choose.
    """
    held: list = []
    seen = {id(estimator)}
    stack = [estimator]
    while stack:
        obj = stack.pop()
        for value in _contents(obj, top=obj is estimator):
            if id(value) in seen:
                continue
            seen.add(id(value))
            if isinstance(value, BaseEstimator):
                held.append(value)
                stack.append(value)
            elif _sequence(value) or _holder(value):
                stack.append(value)
    return held


def _holder(value) -> bool:
    """One of scikit-learn's objects that hold estimators without being one
    (CalibratedClassifierCV's calibrated classifiers). Told once per class,
    from its first instance's attributes: a gradient boosting's thousands of
    tree predictors hold arrays only."""
    cls = type(value)
    known = _holder_classes.get(cls)
    if known is None:
        state = getattr(value, "__dict__", None)
        known = (
            cls.__module__.startswith("sklearn.")
            and state is not None
            and any(isinstance(v, BaseEstimator) for v in state.values())
        )
        _holder_classes[cls] = known
    return known


def _contents(obj, top: bool) -> list:
    """What ``_held_estimators`` looks into in ``obj``.

    A sequence is looked into when one of its first items may hold an
    estimator: a fitted vocabulary's or categories' values (a million
    strings) are not walked on every call, nor more than ``_ENTRIES`` items
    that are not all estimators. Of more than ``_MEMBERS_ALIKE`` estimators
    (an ensemble's members, clones of one template told apart by their
    random states) only the first of each type is: walking a 500-tree
    forest's took 2.5 ms per call.
    """
    if top or isinstance(obj, BaseEstimator) or not _sequence(obj):
        # (A model of another kind may hold scikit-learn's too.)
        return list(getattr(obj, "__dict__", {}).values())
    items = obj.flat if isinstance(obj, np.ndarray) else obj
    head = list(itertools.islice(items, _PEEK))
    if not any(
        isinstance(item, BaseEstimator) or _sequence(item) or _holder(item)
        for item in head
    ):
        return []
    values = list(obj.flat if isinstance(obj, np.ndarray) else obj)
    if len(values) > _MEMBERS_ALIKE and all(
        isinstance(value, BaseEstimator) for value in values
    ):
        values = list({type(value): value for value in reversed(values)}.values())
    elif len(values) > _MEMBERS_ALIKE and all(type(value) is list for value in values):
        # A list per iteration (a histogram boosting's tree predictors):
        # alike too. (A meta-estimator's entries are tuples.)
        values = values[:_PEEK]
    elif len(values) > _ENTRIES:
        # Not a meta-estimator's entries (steps, (name, estimator, columns)
        # triples): values of some other kind, nested.
        return []
    return values


def _sequence(value) -> bool:
    if isinstance(value, list | tuple):
        return True
    return isinstance(value, np.ndarray) and value.dtype == object


def _given_the_input(estimator) -> list:
    """The estimators that get ``estimator``'s input as it is: itself, a
    pipeline's first step, a search's best estimator and its template, a
    frozen estimator's, at any depth."""
    given: list = []
    stack = [estimator]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseEstimator) or any(
            current is other for other in given
        ):
            continue
        given.append(current)
        steps = getattr(current, "steps", None)
        if isinstance(steps, list) and steps and isinstance(steps[0], tuple):
            stack.append(steps[0][1])
            continue
        for named, attributes in _GIVEN_AS_IS.items():
            if _instance_of(current, named):
                stack.extend(current.__dict__.get(a) for a in attributes)
    return given


def _imputer(estimator) -> bool:
    return _instance_of(estimator, ("sklearn.impute._iterative", "IterativeImputer"))


def _instance_of(obj, named: tuple[str, str]) -> bool:
    """Whether ``obj`` is an instance of the class ``(module, name)``, looked
    up among the modules imported already (an instance's module is)."""
    module, name = named
    cls = getattr(sys.modules.get(module), name, None)
    return cls is not None and isinstance(obj, cls)


def _imputes_by_batch(estimator, X, columns=None) -> bool:
    """Whether an ``IterativeImputer``'s transform of ``X`` (restricted to
    ``columns``) depends on the batch: with ``sample_posterior``, it draws
    its random numbers for the call as a whole (outputs 4 apart in 10-row
    chunks); without, only a batch of nothing but missing values is imputed
    otherwise (the first guess, the means alone: a row of no values alone
    in its chunk, 2.6e-4 apart), which a chunk can be only where a row of
    ``X`` is. An imputer in a pipeline is given ``X`` only as its first
    step (a column transformer's gives it some columns, a step after
    another the step's output): elsewhere, its calls are kept whole."""
    if estimator.sample_posterior or X is None:
        return True
    try:
        from sklearn.utils._mask import _get_mask

        X = _chunking.select_columns(X, columns)
        values = np.asarray(X.to_numpy() if hasattr(X, "to_numpy") else X)
        if values.ndim != 2 or sp.issparse(X):
            return True
        missing = _get_mask(values, estimator.missing_values)
        return bool(missing.all(axis=1).any())
    except Exception:  # any input it cannot look into: kept whole
        return True


def rejects_whole(estimator, X) -> bool:
    """Whether ``estimator`` rejects ``X`` as a whole: one vector of numbers
    where it takes several features (a single row passed as 1-D). The
    serial call's error quotes the whole vector; split, each chunk's error
    would quote its own part."""
    try:
        n_features = getattr(estimator, "n_features_in_", None)
    except Exception:  # a property of an estimator not fitted
        return False
    return n_features is not None and n_features != 1 and _chunking.is_vector(X)


def _batch_dependent(estimator, methods: set[str]) -> bool:
    for named, batch in BATCH_METHODS.items():
        if _instance_of(estimator, named):
            return not methods.isdisjoint(batch)
    return False


def _deterministic(estimator) -> bool:
    """Whether the estimator's output for a row is independent of the batch.

    Estimators declare otherwise with the ``non_deterministic`` tag;
    scikit-learn's ``DummyClassifier`` draws random labels per call without
    declaring it.
    """
    if isinstance(estimator, DummyClassifier):
        return estimator.strategy not in ("stratified", "uniform")
    # Tags are costly to build on every call. scikit-learn's own depend on
    # the class (and the platform), not the parameters: remembered per
    # class. Another library's may follow the parameters.
    cls = type(estimator)
    declared = _declared_random.get(cls)
    if declared is None:
        try:
            declared = bool(get_tags(estimator).non_deterministic)
        except Exception:  # not a scikit-learn estimator: nothing declared
            declared = False
        if cls.__module__.startswith("sklearn."):
            _declared_random[cls] = declared
    return not declared


def params_for_rows(params: dict, n: int, start: int, stop: int) -> dict:
    """The parameters of rows ``start:stop`` of a call on ``n`` rows.

    As scikit-learn cuts the parameters of ``fit`` in cross-validation, a
    parameter that is an array of ``n`` rows is taken to have one value per
    row, and is cut with them; any other goes whole to every row range.
    """
    if not params or (start, stop) == (0, n):
        return params
    return {
        name: _chunking.row_slice(value, start, stop) if _per_row(value, n) else value
        for name, value in params.items()
    }


def row_like(value) -> bool:
    """Whether ``value`` may have one value per row of a call's input: an
    array, list, Series or sparse matrix (of one value per row when it has
    as many rows as the input)."""
    return (
        isinstance(value, np.ndarray | list | tuple)
        or hasattr(value, "iloc")
        or sp.issparse(value)
    ) and getattr(value, "ndim", 1) >= 1


def _per_row(value, n: int) -> bool:
    return row_like(value) and _chunking.n_rows(value) == n

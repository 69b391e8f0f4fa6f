"""ParallelPredictor: any estimator's batch methods over row chunks."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from copy import deepcopy
from functools import update_wrapper
from operator import attrgetter, is_, itemgetter
from types import MethodType
from typing import Any

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    MetaEstimatorMixin,
    RegressorMixin,
    _fit_context,
    clone,
)
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.utils import get_tags
from sklearn.utils.metadata_routing import (
    MetadataRouter,
    MethodMapping,
    _routing_enabled,
    process_routing,
)
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from sklearn_parpredict import _lazy
from sklearn_parpredict._costs import costs_of, keep_by_id
from sklearn_parpredict._engine import ENGINE_CONSTRAINTS, Backend, run_one
from sklearn_parpredict._in_process import calls_directly, direct_call
from sklearn_parpredict._validation import seen_valid, validate_once

# The methods the wrapper runs in parallel, each present when the wrapped
# estimator has it, and that the command line offers.
PARALLEL_METHODS = (
    "predict",
    "predict_proba",
    "predict_log_proba",
    "decision_function",
    "transform",
    "score_samples",
)
# Those scikit-learn's metadata routing knows, inverse_transform with them
# (a wrapped step keeps a pipeline's, and TransformedTargetRegressor calls
# its transformer's); the parameters of the others (score_samples) go to the
# estimator as given, routing or not.
ROUTED_METHODS = (
    *(m for m in PARALLEL_METHODS if m != "score_samples"),
    "inverse_transform",
)


# Estimators seen fitted, by id, each with a weak reference that tells a live
# one from a later object at the same address: an estimator does not become
# unfitted (a composite can: see is_fitted), and checking again on every
# call would cost more than predicting a few rows (a WeakSet's look-up alone
# is a Python call and a new weakref).
_seen_fitted: dict[int, tuple] = {}
# The settings of each wrapper class, read in one call.
_settings_of: dict[type, attrgetter] = {}
# Wrappers, by id, whose last call with ``chunk_size="auto"`` passed every
# check, with (a weak reference to) the estimator it ran and that
# estimator's remembered costs by method (see ``_parallel_method``).
# Setting or deleting any attribute of a wrapper removes its entry
# (``ParallelPredictor.__setattr__``).
_passed: dict[int, tuple] = {}
_settings_in = itemgetter(*ENGINE_CONSTRAINTS)


def is_fitted(estimator) -> bool:
    """Whether ``estimator`` can predict as it is.

    Objects without ``fit`` (plain predictors) count as fitted.
    """
    seen = _seen_fitted.get(id(estimator))
    if seen is not None and seen[0]() is estimator:
        return True
    # A composite's own answer first: check_is_fitted asks it too, but only
    # after reading the estimator's tags, which walks a pipeline's steps
    # (25 µs of a pipeline's 33 µs check, on every call: a pipeline is asked
    # again each time). An answer of False is checked in full: an estimator
    # whose tags say it needs no fit is fitted whatever it answers.
    own = getattr(type(estimator), "__sklearn_is_fitted__", None)
    if hasattr(estimator, "fit") and not (own is not None and own(estimator)):
        try:
            check_is_fitted(estimator)
        except NotFittedError:
            return False
        except AttributeError:
            # scikit-learn 1.7 on reads the tags first, and a model by its
            # methods alone (not a BaseEstimator) has none: its predict
            # failed where the bare model's works. Fitted by scikit-learn's
            # rule without tags (as 1.6 judged it): an attribute ending in _.
            if hasattr(estimator, "__sklearn_tags__"):
                raise
            state = getattr(estimator, "__dict__", {})
            if not any(k.endswith("_") and not k.startswith("__") for k in state):
                return False
    # A pipeline (or a frozen estimator, a feature union) is fitted when the
    # estimators it holds are, and set_params replaces those with unfitted
    # ones: asked again each time.
    if not hasattr(type(estimator), "__sklearn_is_fitted__"):
        keep_by_id(_seen_fitted, estimator, True)
    return True


def validate_engine_params(estimator, constraints=ENGINE_CONSTRAINTS) -> tuple | None:
    """Check a wrapper's parameters at predict time (a fitted wrapper may skip
    fit), without building its tags as ``_validate_params`` does.

    Returns the values that passed, in the order of ``constraints``, or None
    when validation was switched off.
    """
    # Asked on every call, so the key is a few C calls away: the class
    # (whose constraints are fixed) and the values of its settings.
    cls = type(estimator)
    settings = _settings_of.get(cls)
    if settings is None:
        settings = _settings_of[cls] = attrgetter(*constraints)
    values = settings(estimator)
    key = (cls, values, *map(type, values))
    if not seen_valid(key):
        validate_once(
            key,
            constraints,
            lambda: {name: getattr(estimator, name) for name in constraints},
            cls.__name__,
        )
    return values if seen_valid(key) else None


def _estimator_has(attr):
    def check(self):
        # Raise the inner estimator's own AttributeError when it lacks attr.
        # (One look-up of the instance's dict: this runs on every access of
        # a parallel method, and the wrapper's __getattr__ slows each one.)
        state = self.__dict__
        getattr(state["estimator_"] if "estimator_" in state else self.estimator, attr)
        return True

    return check


def _parallel_method(name: str, summary: str, returns: str):
    """One of the wrapper's parallel methods, present when the estimator has it.

    The methods differ only in their name: one definition serves them all.
    """

    def method(self, X: Any, **params: Any) -> Any:
        # The wrapper's checks and the planner's look-ups cost 5 µs, on a
        # linear model's call of 90 µs for a thousand rows. A call to a
        # wrapper unchanged since its last call passed them, on a batch that
        # run_one would only hand to the estimator, goes straight to it, in
        # as few steps as can tell: each costs most with the CPU's caches
        # full of the estimator's own work.
        passed = _passed.get(id(self))
        if passed is not None and not params and passed[0]() is self:
            ref, costs = passed[1]
            estimator = ref()
            cost = costs.get(name)
            if estimator is not None and calls_directly(cost, X):
                return direct_call(cost, estimator, name, X, {})
        return self._run(name, X, params)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"""{summary}, in parallel over row chunks.

        Parameters
        ----------
        X : {{array-like, sparse matrix}} of shape (n_samples, n_features)
            The input samples.

        **params : dict
            Parameters of the estimator's ``{name}``.

        Returns
        -------
        {returns}
            What ``estimator_.{name}(X)`` returns.
        """
    return _IfEstimatorHas(method)


class _IfEstimatorHas:
    """A method of the wrapper, present when the wrapped estimator has it.

    scikit-learn's ``available_if`` does the same, but formats its error
    message on every access: 1.5 µs of a call that predicts one row in 80 µs.
    """

    def __init__(self, method):
        self.method = method
        self.check = _estimator_has(method.__name__)
        # Its name and docstring, for help() and the API pages; typeshed
        # expects a callable wrapper, which a descriptor is not.
        update_wrapper(self, method)  # type: ignore[arg-type]

    def __get__(self, obj, owner=None):
        if obj is None:
            return self.method
        try:
            self.check(obj)
        except Exception as exc:
            raise AttributeError(
                f"This {type(obj).__name__!r} has no attribute {self.method.__name__!r}"
            ) from exc
        return MethodType(self.method, obj)


class ParallelPredictor(MetaEstimatorMixin, BaseEstimator):
    """Run any estimator's batch methods in parallel over chunks of rows.

    The methods are ``predict``, ``predict_proba``, ``predict_log_proba``,
    ``decision_function``, ``transform``, ``score_samples`` and
    ``inverse_transform``, each present when the wrapped estimator has it.
    The rows of ``X`` are split into chunks that a pool of workers predicts
    concurrently; the outputs are joined into exactly what the serial call
    returns. The model is shipped to each worker once per fitted state, and
    ``chunk_size="auto"`` stays in-process when parallelism cannot pay for
    itself (small batches, cheap models, one core).

    Parameters
    ----------
    estimator : estimator instance
        The estimator to wrap: a classifier, regressor, transformer, outlier
        detector, clusterer or :class:`~sklearn.pipeline.Pipeline`. It may be
        already fitted, in which case it is used as given without calling
        :meth:`fit`.

    n_jobs : int, default=-1
        Number of workers. ``-1`` uses all cores, ``-2`` all but one (see the
        scikit-learn glossary). ``None`` means 1 unless in a
        :func:`joblib.parallel_config` context.

    backend : str, default=None
        A joblib backend name (``"loky"``, ``"threading"``,
        ``"multiprocessing"``, ``"dask"``, ...). ``None`` uses the backend of
        an active :func:`joblib.parallel_config`; without one, threads when
        ``chunk_size="auto"`` measures them faster for the estimator, else
        joblib's default (``"loky"``).

    chunk_size : int or "auto", default="auto"
        Rows per task. ``"auto"`` times the first rows in-process (their
        output is kept) and either finishes in-process or picks the number of
        chunks from the measured cost.

    verbose : int, default=0
        Verbosity of the joblib fan-out.

    Attributes
    ----------
    estimator_ : estimator instance
        The fitted estimator used for prediction: a fitted clone of
        ``estimator`` after :meth:`fit` or :meth:`partial_fit`, or
        ``estimator`` itself when it was given fitted.

    classes_ : ndarray of shape (n_classes,)
        The class labels, for classifiers.

    n_features_in_ : int
        Number of features seen during fit.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when ``X`` had string column names.

    See Also
    --------
    parallel_predict : The same engine as a function.
    MultiModelPredictor : Several models on the same rows in parallel.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> from sklearn_parpredict import ParallelPredictor
    >>> X, y = make_classification(n_samples=1_000, random_state=0)
    >>> model = ParallelPredictor(RandomForestClassifier(random_state=0), n_jobs=2)
    >>> model.fit(X, y).predict(X[:5])
    array([0, 1, 1, 1, 0])
    >>> trained = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y)
    >>> bool((ParallelPredictor(trained).predict(X) == trained.predict(X)).all())
    True
    """

    _parameter_constraints: dict = {
        "estimator": "no_validation",
        **ENGINE_CONSTRAINTS,
    }

    def __init__(
        self,
        estimator: Any,
        *,
        n_jobs: int | None = -1,
        backend: Backend = None,
        chunk_size: int | str = "auto",
        verbose: int = 0,
    ) -> None:
        self.estimator = estimator
        self.n_jobs = n_jobs
        self.backend = backend
        self.chunk_size = chunk_size
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X: Any, y: Any = None, **fit_params: Any) -> ParallelPredictor:
        """Fit a clone of the estimator.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.

        y : array-like of shape (n_samples,) or (n_samples, n_outputs), \
                default=None
            Targets, if the estimator is supervised.

        **fit_params : dict
            Parameters passed to the estimator's ``fit`` (routed through
            metadata routing when it is enabled).

        Returns
        -------
        self : object
            The fitted wrapper.
        """
        self._fit("fit", X, y, fit_params)
        return self

    @available_if(_estimator_has("fit_transform"))
    @_fit_context(prefer_skip_nested_validation=False)
    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        """Fit a clone of the estimator and transform ``X`` with it.

        This is the estimator's own ``fit_transform``, which fits and
        transforms in one pass, called in-process.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.

        y : array-like of shape (n_samples,), default=None
            Targets, if the estimator is supervised.

        **fit_params : dict
            Parameters passed to the estimator's ``fit_transform``.

        Returns
        -------
        X_new : {ndarray, sparse matrix, DataFrame}
            The transformed training data.
        """
        return self._fit("fit_transform", X, y, fit_params)

    @available_if(_estimator_has("fit_predict"))
    @_fit_context(prefer_skip_nested_validation=False)
    def fit_predict(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        """Fit a clone of the estimator and predict ``X`` with it.

        This is the estimator's own ``fit_predict`` (clusterers, outlier
        detectors), called in-process.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.

        y : array-like of shape (n_samples,), default=None
            Targets, if the estimator is supervised.

        **fit_params : dict
            Parameters passed to the estimator's ``fit_predict``.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            The labels of the training data.
        """
        return self._fit("fit_predict", X, y, fit_params)

    @available_if(_estimator_has("partial_fit"))
    @_fit_context(prefer_skip_nested_validation=False)
    def partial_fit(
        self, X: Any, y: Any = None, **partial_fit_params: Any
    ) -> ParallelPredictor:
        """Fit the estimator incrementally on a batch of rows.

        The first call on an unfitted wrapper fits a clone of ``estimator``
        (as :meth:`fit` does) and later calls go on with that clone, as
        scikit-learn's meta-estimators (``MultiOutputClassifier``,
        ``SelectFromModel``) do. An ``estimator`` given fitted, which the
        wrapper predicts with, goes on learning itself.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.

        y : array-like of shape (n_samples,) or (n_samples, n_outputs), \
                default=None
            Targets, if the estimator is supervised.

        **partial_fit_params : dict
            Parameters passed to the estimator's ``partial_fit``, such as
            ``classes`` (routed through metadata routing when it is enabled).

        Returns
        -------
        self : object
            The wrapper.
        """
        if _routing_enabled():
            partial_fit_params = process_routing(
                self, "partial_fit", **partial_fit_params
            ).estimator.partial_fit
        # An estimator given fitted is the one the wrapper predicts with: it
        # learns on, in place, as its bare partial_fit would.
        if "estimator_" not in self.__dict__ and not is_fitted(self.estimator):
            self.estimator_ = clone(self.estimator)
        self._fitted().partial_fit(X, y, **partial_fit_params)
        return self

    def _fit(self, method: str, X, y, fit_params: dict):
        if _routing_enabled():
            fit_params = process_routing(self, "fit", **fit_params).estimator.fit
        self.estimator_ = clone(self.estimator)
        return getattr(self.estimator_, method)(X, y, **fit_params)

    def _fitted(self):
        estimator = self.__dict__.get("estimator_")
        if estimator is not None:
            return estimator
        if is_fitted(self.estimator):
            return self.estimator
        raise NotFittedError(
            f"This {type(self).__name__} instance is not fitted yet, and the "
            f"estimator it wraps is not fitted either. Call 'fit' with "
            f"appropriate arguments, or wrap a fitted estimator."
        )

    def __sklearn_is_fitted__(self) -> bool:
        return "estimator_" in self.__dict__ or is_fitted(self.estimator)

    def __getattr__(self, name):
        # Fitted attributes (classes_, coef_, offset_, ...) come from the
        # fitted estimator. Only reached when normal lookup fails; reads
        # __dict__ directly so that unpickling cannot recurse.
        if name.endswith("_") and not name.startswith("__"):
            inner = self.__dict__.get("estimator_")
            if inner is None:
                given = self.__dict__.get("estimator")
                if given is not None and is_fitted(given):
                    if name == "estimator_":
                        return given
                    inner = given
            if inner is not None and hasattr(inner, name):
                return getattr(inner, name)
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}"
        )

    def _run(self, method: str, X, params: dict):
        estimator = self._fitted()
        values = validate_engine_params(self)
        # Without parameters there is nothing to route (and routing is costly
        # next to predicting a few rows).
        if params and _routing_enabled() and method in ROUTED_METHODS:
            params = getattr(process_routing(self, method, **params).estimator, method)
        out = run_one(
            estimator,
            method,
            X,
            params,
            n_jobs=self.n_jobs,
            backend=self.backend,
            chunk_size=self.chunk_size,
            verbose=self.verbose,
        )
        if values is not None and self.chunk_size == "auto":
            state = self.__dict__
            with contextlib.suppress(TypeError, KeyError):
                # Unless another thread changed the wrapper meanwhile (its
                # entry is then already gone): the very values checked.
                if (
                    all(map(is_, _settings_in(state), values))
                    and state.get("estimator_", state.get("estimator")) is estimator
                ):
                    costs = costs_of(estimator)
                    if costs is not None:
                        # Weakly: the table must not keep alive an
                        # estimator that refers to its wrapper.
                        ref = weakref.ref(estimator)
                        keep_by_id(_passed, self, (ref, costs))
        return out

    def __setattr__(self, name, value):
        # A changed setting or estimator is checked on the next call.
        _passed.pop(id(self), None)
        super().__setattr__(name, value)

    def __delattr__(self, name):
        _passed.pop(id(self), None)
        super().__delattr__(name)

    predict = _parallel_method(
        "predict",
        "Predict with the estimator",
        "y : ndarray of shape (n_samples,) or (n_samples, n_outputs)",
    )
    predict_proba = _parallel_method(
        "predict_proba",
        "Class probabilities",
        "proba : ndarray of shape (n_samples, n_classes) or list of such arrays",
    )
    predict_log_proba = _parallel_method(
        "predict_log_proba",
        "Class log-probabilities",
        "log_proba : ndarray of shape (n_samples, n_classes) or list of arrays",
    )
    decision_function = _parallel_method(
        "decision_function",
        "Decision function",
        "scores : ndarray of shape (n_samples,) or (n_samples, n_classes)",
    )
    transform = _parallel_method(
        "transform",
        "Transform",
        "X_new : {ndarray, sparse matrix, DataFrame} of shape (n_samples, ...)",
    )
    score_samples = _parallel_method(
        "score_samples",
        "Per-sample scores",
        "scores : ndarray of shape (n_samples,)",
    )
    inverse_transform = _parallel_method(
        "inverse_transform",
        "Transform back to the original space",
        "X_original : {ndarray, sparse matrix, DataFrame} of shape (n_samples, ...)",
    )

    @available_if(_estimator_has("score"))
    def score(self, X: Any, y: Any = None, **params: Any) -> float:
        """The estimator's score, from parallel predictions where possible.

        Classifiers and regressors that use scikit-learn's default ``score``
        (accuracy, R²) are scored on the parallel predictions; any other
        ``score`` is the estimator's own, called as is.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Test samples.

        y : array-like of shape (n_samples,) or (n_samples, n_outputs), \
                default=None
            True values for ``X``.

        **params : dict
            Parameters of the estimator's ``score``, such as ``sample_weight``.

        Returns
        -------
        score : float
            What ``estimator_.score(X, y, **params)`` returns.
        """
        check_is_fitted(self)
        if _routing_enabled():
            params = process_routing(self, "score", **params).estimator.score
        return score(self._fitted(), X, y, params, lambda: self.predict(X))

    @available_if(_estimator_has("get_feature_names_out"))
    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output feature names of the fitted transformer.

        Parameters
        ----------
        input_features : array-like of str, default=None
            Input feature names, as the estimator's ``get_feature_names_out``.

        Returns
        -------
        feature_names_out : ndarray of str
            The transformed feature names.
        """
        check_is_fitted(self)
        return self._fitted().get_feature_names_out(input_features)

    @available_if(_estimator_has("set_output"))
    def set_output(self, *, transform: str | None = None) -> ParallelPredictor:
        """Set the output container of ``transform`` (see scikit-learn's API).

        The setting is applied to the wrapped estimator, so every worker
        produces chunks in that container.

        Parameters
        ----------
        transform : {"default", "pandas", "polars"}, default=None
            Output container; ``None`` leaves it unchanged.

        Returns
        -------
        self : estimator instance
            The wrapper.
        """
        for estimator in (self.estimator, self.__dict__.get("estimator_")):
            if estimator is not None:
                estimator.set_output(transform=transform)
        return self

    def get_metadata_routing(self):
        """Metadata routing: each method routes to the estimator's same method.

        Returns
        -------
        routing : MetadataRouter
            The routing information.
        """
        mapping = (
            MethodMapping()
            .add(caller="fit", callee="fit")
            .add(caller="partial_fit", callee="partial_fit")
            .add(caller="score", callee="score")
        )
        for method in ROUTED_METHODS:
            mapping.add(caller=method, callee=method)
        return MetadataRouter(owner=self).add(
            estimator=self.estimator, method_mapping=mapping
        )

    def __sklearn_tags__(self):
        # The wrapper behaves as the estimator it wraps: classifier,
        # regressor, transformer, sparse input, ... are all the inner ones.
        try:
            tags = deepcopy(get_tags(self.estimator))
        except AttributeError:
            # A model that is not a scikit-learn estimator has no tags
            # (scikit-learn 1.7 on raises, where 1.6 gave the defaults): the
            # wrapper's own, else its score and HTML repr raised.
            if hasattr(self.estimator, "__sklearn_tags__"):
                raise
            tags = super().__sklearn_tags__()
        tags.requires_fit = True
        return tags


def score(estimator, X, y, params: dict, predict: Callable[[], Any]) -> float:
    """``estimator.score(X, y, **params)``, its predictions from ``predict()``
    when the score is the mixins' metric of them (computed in parallel)."""
    # A frozen estimator predicts and scores as the one it holds: its score
    # is looked up on that one's class.
    scorer = estimator
    while isinstance(scorer, FrozenEstimator):
        scorer = scorer.estimator
    # The class's: a score another object lends (through __getattr__) is a
    # metric of that object's predict, not of this one's.
    own = getattr(type(scorer), "score", None)
    if own in (ClassifierMixin.score, RegressorMixin.score):
        # A Dask input's are lazy; the serial call's, from the computed
        # input, are not: the metric takes no lazy array of unknown length.
        y_pred = _lazy.computed(predict())
        return own(_Predicted(estimator, y_pred), X, y, **params)
    return estimator.score(X, y, **params)


class _Predicted:
    """An estimator stand-in whose ``predict`` returns precomputed labels."""

    def __init__(self, estimator, y_pred):
        self._estimator = estimator
        self._y_pred = y_pred

    def predict(self, X):
        return self._y_pred

    def __getattr__(self, name):
        return getattr(self._estimator, name)

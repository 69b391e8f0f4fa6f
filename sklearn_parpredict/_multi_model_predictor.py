"""MultiModelPredictor: several models on the same rows, models x row chunks."""

from __future__ import annotations

import copy
import weakref
from typing import Any

import numpy as np
from sklearn.base import MetaEstimatorMixin, _fit_context, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import get_tags
from sklearn.utils.metaestimators import _BaseComposition, available_if
from sklearn.utils.validation import (
    _check_feature_names,
    _check_n_features,
    _get_feature_names,
    check_array,
)

from sklearn_parpredict import _chunking, _lazy
from sklearn_parpredict._columns import (
    as_list,
    assemble,
    check_models,
    check_y,
    column_key,
    column_positions,
    is_frame,
    is_target,
    names_of,
    shorten,
    target_values,
)
from sklearn_parpredict._distributed import parallel_backend
from sklearn_parpredict._engine import (
    ENGINE_CONSTRAINTS,
    Backend,
    _backend,
    run_jobs,
)
from sklearn_parpredict._fanout import fan_out
from sklearn_parpredict._jobs import Job, resolve
from sklearn_parpredict._nan import NanKept
from sklearn_parpredict._parallel_predictor import (
    is_fitted,
    score,
    validate_engine_params,
)
from sklearn_parpredict._pickled import (
    KeptWhole,
    PickledRows,
    object_columns,
    received,
)
from sklearn_parpredict._sharing import ModelHandle
from sklearn_parpredict._validation import validate_once

try:  # scikit-learn >= 1.7
    from sklearn.utils._repr_html.estimator import _VisualBlock
except ImportError:  # pragma: no cover - scikit-learn 1.6
    from sklearn.utils._estimator_html_repr import _VisualBlock


# Per predictor, its in-process copy for Dask inputs and the fitted state it
# was made for.
_in_process_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fit_one(estimator, X, y):
    # Back from a worker process keeping np.nan itself in the fitted arrays
    # of objects, as models sent to the workers do (see :mod:`._nan`): an
    # OrdinalEncoder's categories held another NaN, where the serial fit's
    # hold np.nan.
    return KeptWhole(estimator.fit(resolve(X), resolve(y)))


def _carried(rows):
    """A model's rows for its fit on a worker: where they hold objects,
    pickled so that ``np.nan`` is ``np.nan`` itself there (see
    :class:`._pickled.PickledRows`), as the rows of a prediction are.

    joblib pickles ``np.nan`` in a column of objects as another NaN: a text
    vectorizer, which tells a missing document by identity, failed with
    ``AttributeError: 'float' object has no attribute 'lower'`` on loky
    where the serial fit raises ``ValueError: np.nan is an invalid
    document``. Other rows go as joblib sends them (large arrays
    memory-mapped).
    """
    if object_columns(rows) or NanKept.around(rows) is not rows:
        return PickledRows(rows)
    return rows


def _one_column(target, out, pandas: bool):
    """Model ``target``'s predictions ``out`` as one column of the output.

    A pandas Series (or one-column DataFrame) gives its values by position,
    not by its index, which may be another than ``X``'s; where the output
    is a DataFrame (``pandas``), an extension dtype of pandas is kept:
    through an array of NumPy, a model's ``Int64``, ``boolean`` or
    categorical predictions came back as objects or text.
    """
    if hasattr(out, "iloc"):
        if out.ndim == 2 and out.shape[1] == 1:
            out = out.iloc[:, 0]
        if out.ndim == 1 and pandas and not isinstance(out.dtype, np.dtype):
            return out.array
    column = np.asarray(out)
    if column.ndim == 2 and column.shape[1] == 1:
        column = column[:, 0]
    if column.ndim != 1:
        raise ValueError(
            f"Model {target!r} predicted an array of shape "
            f"{column.shape}; MultiModelPredictor needs one output per "
            f"model. Give each output its own model."
        )
    return column


def _describe(features) -> str:
    if features is None:
        return "all columns"
    return repr(features) if callable(features) else str(features)


class MultiModelPredictor(MetaEstimatorMixin, _BaseComposition):
    """Several models, each on its own columns, predicting the same rows.

    Each model is a ``(estimator, features, target)`` tuple: the estimator
    sees only the columns ``features`` of ``X`` and predicts the output named
    ``target``. :meth:`fit` fits the models in parallel; :meth:`predict` runs
    every model on the same rows in parallel over models *and* row chunks, so
    that one slow model is itself split across the workers while cheap models
    share the rest. The result is exactly what the serial loop
    ``[model.predict(X[features]) for model, features, _ in models]``
    returns, assembled into one table.

    Parameters
    ----------
    models : list of (estimator, features, target) tuples
        The models.

        - ``estimator``: an estimator with ``predict``. It may be already
          fitted, in which case it is used as given without calling
          :meth:`fit`.
        - ``features``: the columns of ``X`` the model sees: a list of column
          names or integer positions, a single name or position, a slice, a
          boolean mask, a callable such as
          :func:`~sklearn.compose.make_column_selector` (called on ``X``,
          returning one of those), or ``None`` for all columns. As in
          :class:`~sklearn.compose.ColumnTransformer`, a single name or
          position gives the model that column as 1-D (``X["title"]``, what a
          text vectorizer takes), a list of one a one-column table
          (``X[["pages"]]``, what most estimators need).
        - ``target``: the unique label (str or int) of the model's output.
          It names the output column, the column of ``y`` (or of ``X``) the
          model is fitted on, and the model in nested parameters
          (``set_params(genre__max_depth=3)``). It may not contain ``__``
          nor be the name of a constructor parameter.

    n_jobs : int, default=-1
        Number of workers, for fitting and for prediction. ``-1`` uses all
        cores, ``-2`` all but one (see the scikit-learn glossary). ``None``
        means 1 unless in a :func:`joblib.parallel_config` context.

    backend : str, default=None
        A joblib backend name (``"loky"``, ``"threading"``,
        ``"multiprocessing"``, ``"dask"``, ...). ``None`` uses the backend of
        an active :func:`joblib.parallel_config`; without one, threads when
        ``chunk_size="auto"`` measures them faster for the estimator, else
        joblib's default (``"loky"``).

    chunk_size : int or "auto", default="auto"
        Rows per prediction task. ``"auto"`` times the first rows of each
        model in-process (their output is kept) and either finishes
        in-process or picks each model's number of chunks from its measured
        cost.

    verbose : int, default=0
        Verbosity of the joblib fan-out.

    Attributes
    ----------
    estimators_ : list of estimators
        The fitted models, in model order: fitted clones after :meth:`fit`,
        or the given estimators when they were all given fitted.

    targets_ : list of str or int
        The targets, in model order.

    n_features_in_ : int
        Number of columns of the ``X`` seen during :meth:`fit` (target columns
        included when the targets were taken from ``X``).

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of the columns of the ``X`` seen during :meth:`fit`, when it
        had string column names.

    See Also
    --------
    ParallelPredictor : One model in parallel over row chunks.
    parallel_predict : The same engine as a function.

    Notes
    -----
    Columns are matched by name when the model selects them by name, or when
    :meth:`fit` saw string column names and ``X`` has them too: ``X`` then
    needs only the columns the models use, in any order (a frame that held
    the targets at fit time need not hold them later). Otherwise columns are
    positions, and ``X`` must have the ``n_features_in_`` columns of the
    ``X`` seen by :meth:`fit`. A callable selector is resolved on the ``X``
    given to :meth:`fit` and the resolved columns are used from then on.

    Every model must predict one output (a 1-D array, or a single column):
    a multi-output model raises a ``ValueError`` in :meth:`predict`; give
    each of its outputs its own model instead.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn.tree import DecisionTreeClassifier
    >>> from sklearn_parpredict import MultiModelPredictor
    >>> from sklearn_parpredict.datasets import (
    ...     GENRE_FEATURES, LANGUAGE_FEATURES, make_books)
    >>> books = make_books(2_000, random_state=0)
    >>> model = MultiModelPredictor(
    ...     [
    ...         (DecisionTreeClassifier(random_state=0), GENRE_FEATURES, "genre"),
    ...         (
    ...             make_pipeline(StandardScaler(), LogisticRegression()),
    ...             LANGUAGE_FEATURES,
    ...             "language",
    ...         ),
    ...     ],
    ...     n_jobs=2,
    ... )
    >>> model.fit(books)  # the targets are columns of the same frame
    MultiModelPredictor(...)
    >>> predictions = model.predict(books[GENRE_FEATURES + LANGUAGE_FEATURES])
    >>> list(predictions.columns), predictions.shape
    (['genre', 'language'], (2000, 2))
    >>> genre = model.estimators_[0].predict(books[GENRE_FEATURES])
    >>> bool((predictions["genre"] == genre).all())
    True
    >>> model.set_params(genre__max_depth=3).get_params()["genre__max_depth"]
    3
    """

    _required_parameters = ["models"]

    _parameter_constraints: dict = {
        "models": [list],
        **ENGINE_CONSTRAINTS,
    }

    def __init__(
        self,
        models: list,
        *,
        n_jobs: int | None = -1,
        backend: Backend = None,
        chunk_size: int | str = "auto",
        verbose: int = 0,
    ) -> None:
        self.models = models
        self.n_jobs = n_jobs
        self.backend = backend
        self.chunk_size = chunk_size
        self.verbose = verbose

    # -- nested parameters -------------------------------------------------

    @property
    def _models(self):
        # (name, estimator) pairs for _BaseComposition; a target's name in
        # nested parameters is its string form.
        try:
            return [(str(target), estimator) for estimator, _, target in self.models]
        except (TypeError, ValueError):
            # Malformed models: get_params/set_params still work, and fit
            # reports the problem.
            return []

    @_models.setter
    def _models(self, pairs):
        self.models = [
            (estimator, features, target)
            for (_, estimator), (_, features, target) in zip(pairs, self.models)
        ]

    def get_params(self, deep: bool = True) -> dict:
        """Get parameters of this estimator.

        With ``deep=True``, the models' own parameters are included, each
        prefixed by its target: ``genre__max_depth``.

        Parameters
        ----------
        deep : bool, default=True
            If True, return the parameters of the models as well.

        Returns
        -------
        params : dict
            Parameter names mapped to their values.
        """
        return self._get_params("_models", deep=deep)

    def set_params(self, **params: Any) -> MultiModelPredictor:
        """Set the parameters of this estimator or of its models.

        A model's parameters are set as ``<target>__<parameter>``, and a
        model is replaced as ``<target>=estimator``.

        Parameters
        ----------
        **params : dict
            Estimator parameters.

        Returns
        -------
        self : object
            This estimator.
        """
        # The models first, as Pipeline sets its steps first: _set_params
        # does so only for the attribute it is given, here _models, not
        # models. Else set_params(models=new, genre__max_depth=3) set the
        # depth of the replaced model's tree and left the new one's as it
        # was (GridSearchCV over models and genre__max_depth fitted the same
        # model for every depth), and a target only among the new models
        # was an invalid parameter.
        if "models" in params:
            self.models = params.pop("models")
        self._set_params("_models", **params)
        return self

    def _validate_settings(self) -> None:
        """The parameters' constraints at predict time, checked once per set
        of values. ``models`` is a list, which cannot be a key: its
        constraint asks for its type alone (:func:`._columns.check_models` checks
        the rest), and the type is the key."""
        models = self.models
        validate_once(
            (type(self), "models", type(models)),
            {"models": self._parameter_constraints["models"]},
            lambda: {"models": models},
            type(self).__name__,
        )
        validate_engine_params(self)

    # -- inputs ------------------------------------------------------------

    def _check_X(self, X, *, reset: bool):
        if is_frame(X):
            if len(X.shape) != 2:
                raise ValueError(f"X must be 2-D; got shape {X.shape}.")
        else:
            X = check_array(
                X,
                accept_sparse=True,
                dtype=None,
                ensure_all_finite=False,
                ensure_min_samples=1 if reset else 0,
                input_name="X",
            )
        if reset:
            _check_n_features(self, X, reset=True)
            _check_feature_names(self, X, reset=True)
        return _chunking.prepare(X)

    # -- fit -----------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X: Any, y: Any = None) -> MultiModelPredictor:
        """Fit a clone of every model, models in parallel.

        Model *i* is fitted on the columns ``features_i`` of ``X`` against
        ``y[target_i]`` when ``y`` is a DataFrame or a 2-D array, ``y`` itself
        when it is 1-D, or the column ``target_i`` of ``X`` when ``y`` is
        None.

        Parameters
        ----------
        X : {array-like, sparse matrix, DataFrame} of shape \
                (n_samples, n_features)
            Training data: the models' features, and their targets when ``y``
            is None. A Dask collection is computed first, as scikit-learn's
            estimators compute it in their ``fit``.

        y : array-like or DataFrame of shape (n_samples,) or \
                (n_samples, n_targets), default=None
            Targets. A DataFrame is matched by column label (or position for
            an integer target missing from the labels); in a 2-D array an
            integer target is a column position, other targets take the
            column of their model's rank; a 1-D ``y`` is every model's
            target.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        models = check_models(self.models, self._parameter_constraints)
        # Fitted in memory: the models take the computed data, as they would
        # have computed it themselves.
        X, y = (_lazy.computed(value) for value in (X, y))
        X = self._check_X(X, reset=True)
        if y is not None:
            y = check_y(y, X, [target for _, _, target in models])
        positions, inputs, targets = [], [], []
        for i, (_, features, target) in enumerate(models):
            columns = column_positions(X, features, target)
            y_i, from_X = target_values(X, y, i, target)
            if from_X is not None and from_X in as_list(columns):
                raise ValueError(
                    f"Model {target!r} would be fitted on its own target: its "
                    f"features include the target column. Exclude it from the "
                    f"features, or pass y."
                )
            positions.append(columns)
            inputs.append(_chunking.select_columns(X, column_key(X, columns)))
            targets.append(y_i)
        active, n_workers = _backend(self.n_jobs, self.backend)
        fitted = fan_out(
            _fit_one,
            [
                (clone(estimator), _carried(X_i), _carried(y_i))
                for (estimator, _, _), X_i, y_i in zip(models, inputs, targets)
            ],
            n_workers=min(n_workers, len(models)),
            backend=parallel_backend(self.backend, active),
            verbose=self.verbose,
        )
        self.estimators_ = [received(model) for model in fitted]
        self.targets_ = [target for _, _, target in models]
        self._positions = positions
        return self

    # -- fitted state --------------------------------------------------------

    def _fitted(self):
        """The fitted estimators and targets, and the models when given fitted.

        The third item is None when :meth:`fit` made the estimators.
        """
        if "estimators_" in self.__dict__:
            return self.estimators_, self.targets_, None
        models = check_models(self.models, self._parameter_constraints)
        unfitted = [
            target for estimator, _, target in models if not is_fitted(estimator)
        ]
        if unfitted:
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet, and "
                f"model(s) {shorten(unfitted)} are not fitted either. Call "
                f"'fit' with appropriate arguments, or give fitted models."
            )
        return [m[0] for m in models], [m[2] for m in models], models

    def __sklearn_is_fitted__(self) -> bool:
        if "estimators_" in self.__dict__:
            return True
        try:
            return all(is_fitted(estimator) for estimator, _, _ in self.models)
        except (TypeError, ValueError):
            return False

    def __getattr__(self, name):
        # Models given fitted: estimators_ and targets_ are theirs. Reads
        # __dict__ directly so that unpickling cannot recurse.
        if name in ("estimators_", "targets_"):
            models: Any = self.__dict__.get("models")
            try:
                if all(is_fitted(estimator) for estimator, _, _ in models):
                    index = 0 if name == "estimators_" else 2
                    return [model[index] for model in models]
            except (TypeError, ValueError):
                pass
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}"
        )

    def _columns(self, X, models) -> list:
        """Per model, the columns of ``X`` to give it (None: all of X).

        ``models`` are the models given fitted, or None after :meth:`fit`.
        Checked for every model before any work starts.
        """
        if models is not None:
            return [
                column_key(X, column_positions(X, features, target))
                for _, features, target in models
            ]
        names = getattr(self, "feature_names_in_", None)
        if names is not None and _get_feature_names(X) is not None:
            wanted = [
                names[pos] if is_target(pos) else list(names[pos])
                for pos in self._positions
            ]
            present = set(names_of(X))
            missing = {
                target: [col for col in as_list(cols) if col not in present]
                for target, cols in zip(self.targets_, wanted)
            }
            missing = {target: cols for target, cols in missing.items() if cols}
            if missing:
                detail = "; ".join(
                    f"model {target!r} needs {shorten(cols)}"
                    for target, cols in missing.items()
                )
                raise ValueError(f"Columns not found in X: {detail}.")
            return [column_key(X, cols) for cols in wanted]
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is "
                f"expecting {self.n_features_in_} features as input."
            )
        return [column_key(X, cols) for cols in self._positions]

    def _run(self, method: str, X):
        """Every model's ``method`` on ``X``: one engine call for all."""
        estimators, targets, models = self._fitted()
        self._validate_settings()
        lazy = _lazy.is_collection(X)
        if not lazy:  # checking a Dask array would compute it
            X = self._check_X(X, reset=False)
        # A Dask DataFrame's columns are those of its empty pandas meta.
        columns = self._columns(X._meta if lazy and is_frame(X) else X, models)
        jobs = []
        for estimator, cols in zip(estimators, columns):
            if cols is not None and is_frame(X) and not lazy:
                # Frames are pickled chunk by chunk: give each model's
                # tasks only its columns rather than every column of X
                # (measured: 1.45 s -> 0.85 s for 3 models on a 400k x 32
                # frame, 2 processes).
                jobs.append(Job(estimator, method, _chunking.select_columns(X, cols)))
            else:
                # Arrays keep the selection for the workers, so that all
                # models share one (memory-mapped) copy of X.
                jobs.append(Job(estimator, method, X, columns=cols))
        outputs = run_jobs(
            jobs,
            n_jobs=self.n_jobs,
            backend=self.backend,
            chunk_size=self.chunk_size,
            verbose=self.verbose,
        )
        return X, estimators, targets, columns, outputs

    # -- prediction ----------------------------------------------------------

    def _in_process(self):
        """This predictor running in-process, the same object per fitted state.

        Each block of a Dask input is one task: the models run one after the
        other in it. Keeping one copy per fitted state lets a cluster receive
        it once, not once per call.
        """
        token = ModelHandle(self).token
        cached = _in_process_copies.get(self)
        if cached is None or cached[0] != token:
            in_process = copy.copy(self)
            in_process.n_jobs = 1
            cached = _in_process_copies[self] = (token, in_process)
        return cached[1]

    def predict(self, X: Any) -> Any:
        """Predict with every model, in parallel over models and row chunks.

        Parameters
        ----------
        X : {array-like, sparse matrix, DataFrame} of shape \
                (n_samples, n_features)
            The input samples; a DataFrame needs only the columns the models
            use.

        Returns
        -------
        y : DataFrame or ndarray of shape (n_samples, n_models)
            A DataFrame with one column per target and ``X``'s index when
            ``X`` is a pandas DataFrame; else an array whose columns are the
            models' predictions in model order, of their common dtype when
            they share a numpy dtype kind (all signed integers, all unsigned
            integers, all floats, all unicode strings), else of object dtype
            so that every label is kept exactly (``uint8`` and ``int64``
            labels give objects, where a common dtype could be
            ``float64``). A Dask DataFrame or array gives the same lazily, as
            a Dask DataFrame or array computed block by block.
        """
        if _lazy.is_collection(X):
            self._fitted()
            self._validate_settings()
            return _lazy.call(self._in_process(), "predict", X)
        X, _, targets, _, outputs = self._run("predict", X)
        pandas = hasattr(X, "iloc")
        columns = [
            _one_column(target, out, pandas) for target, out in zip(targets, outputs)
        ]
        return assemble(X, targets, columns)

    @available_if(
        lambda self: all(
            hasattr(estimator, "predict_proba") for estimator in self._shown()
        )
    )
    def predict_proba(self, X: Any) -> list:
        """Class probabilities of every model, in parallel.

        Available when every model has ``predict_proba``.

        Parameters
        ----------
        X : {array-like, sparse matrix, DataFrame} of shape \
                (n_samples, n_features)
            The input samples.

        Returns
        -------
        proba : list of ndarray
            Each model's ``predict_proba`` output, in model order; lazy Dask
            arrays for a Dask input.
        """
        return self._run("predict_proba", X)[-1]

    @available_if(
        lambda self: all(hasattr(estimator, "score") for estimator in self._shown())
    )
    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Mean over the models of each model's score on its own target.

        Each model is scored against its target, selected as in :meth:`fit`
        (from ``y``, or from ``X`` when ``y`` is None). Models with
        scikit-learn's default ``score`` (accuracy for classifiers, R² for
        regressors) are scored on the parallel predictions; any other
        ``score`` is the model's own, called on its columns. The result is
        the unweighted mean of these scores, so that a search such as
        :class:`~sklearn.model_selection.GridSearchCV` maximises all models
        at once.

        Parameters
        ----------
        X : {array-like, sparse matrix, DataFrame} of shape \
                (n_samples, n_features)
            Test samples.

        y : array-like or DataFrame of shape (n_samples,) or \
                (n_samples, n_targets), default=None
            True values, as in :meth:`fit`.

        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights, given to every model's score.

        Returns
        -------
        score : float
            The mean of the models' scores.
        """
        X, estimators, targets, columns, outputs = self._run("predict", X)
        if y is not None:
            y = check_y(y, X, targets)
        params = {} if sample_weight is None else {"sample_weight": sample_weight}
        scores = []
        for i, (estimator, target, y_pred) in enumerate(
            zip(estimators, targets, outputs)
        ):
            y_i, _ = target_values(X, y, i, target)
            X_i = _chunking.select_columns(X, columns[i])

            def predicted(y_pred=y_pred):
                # Predicted already, for every model at once.
                return y_pred

            scores.append(score(estimator, X_i, y_i, params, predicted))
        return float(np.mean(scores))

    # -- display and tags ------------------------------------------------------

    def _shown(self):
        """The estimators that methods are available from."""
        if "estimators_" in self.__dict__:
            return self.estimators_
        return [estimator for estimator, _, _ in self.models]

    def _sk_visual_block_(self):
        try:
            estimators, features, targets = zip(*self.models)
        except (TypeError, ValueError):
            return _VisualBlock("single", self, names=type(self).__name__)
        return _VisualBlock(
            "parallel",
            list(estimators),
            names=[str(target) for target in targets],
            name_details=[_describe(f) for f in features],
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            inner = [get_tags(estimator) for estimator, _, _ in self.models]
        except (TypeError, ValueError, AttributeError):
            # AttributeError: a model that is not a scikit-learn estimator
            # has no tags (scikit-learn 1.7 on raises; 1.6 gave defaults).
            inner = []
        # Several targets at once: neither a classifier nor a regressor.
        tags.estimator_type = None
        tags.requires_fit = True
        tags.non_deterministic = any(t.non_deterministic for t in inner)
        tags.target_tags.required = False  # y may be None (targets in X)
        # The output is always a table (n_samples, n_models), even for one
        # model: a multi-output estimator. A 1-D y is still accepted (every
        # model's target), but the checks read single_output=True as "predict
        # returns 1-D".
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = bool(inner) and all(t.input_tags.sparse for t in inner)
        tags.input_tags.allow_nan = bool(inner) and all(
            t.input_tags.allow_nan for t in inner
        )
        return tags

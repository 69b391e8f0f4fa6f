"""ParallelPredictor as a scikit-learn citizen: fitting, delegation, tools."""

import contextlib
import gc
import pickle
import re
import sys
import threading
import warnings
import weakref

import joblib
import numpy as np
import pandas as pd
import pytest
from _helpers import ByItsMethods, assert_same_output
from sklearn import config_context
from sklearn.base import BaseEstimator, clone, is_classifier, is_regressor
from sklearn.datasets import make_classification, make_regression
from sklearn.decomposition import PCA
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import (
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.exceptions import NotFittedError, UnsetMetadataPassedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import (
    LinearRegression,
    LogisticRegression,
    SGDClassifier,
)
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils import estimator_html_repr

from sklearn_parpredict import ParallelPredictor

X, Y = make_classification(n_samples=300, n_features=6, random_state=0)
XR, YR = make_regression(n_samples=300, n_features=6, random_state=0)
FORCE = {"n_jobs": 2, "chunk_size": 40}


def test_fit_clones_and_predicts_like_the_estimator():
    inner = RandomForestClassifier(n_estimators=10, random_state=0)
    model = ParallelPredictor(inner, **FORCE).fit(X, Y)
    assert model.estimator_ is not inner
    assert not hasattr(inner, "estimators_")  # the given estimator is untouched
    reference = clone(inner).fit(X, Y)
    assert_same_output(model.predict(X), reference.predict(X))
    assert_same_output(model.predict_proba(X), reference.predict_proba(X))


def test_prefitted_estimator_used_without_fit():
    trained = LogisticRegression().fit(X, Y)
    model = ParallelPredictor(trained, **FORCE)
    assert model.estimator_ is trained
    assert_same_output(model.predict_proba(X), trained.predict_proba(X))
    assert_same_output(model.decision_function(X), trained.decision_function(X))


def test_frozen_estimator():
    trained = LogisticRegression().fit(X, Y)
    model = ParallelPredictor(FrozenEstimator(trained), **FORCE)
    assert_same_output(model.predict(X), trained.predict(X))
    # Fitting a frozen estimator keeps it as it was.
    model.fit(X[:10], Y[:10])
    assert_same_output(model.predict(X), trained.predict(X))


def test_a_frozen_estimators_score_is_its_estimators():
    trained = LogisticRegression().fit(X, Y)
    frozen = FrozenEstimator(trained)
    # FrozenEstimator has score through its instance only.
    assert not hasattr(FrozenEstimator, "score")
    assert ParallelPredictor(frozen, **FORCE).score(X, Y) == trained.score(X, Y)


class _Flipped(BaseEstimator):
    """Predicts the other label; lends the rest (score too) from the
    classifier it holds."""

    def __init__(self, classifier=None):
        self.classifier = classifier

    def predict(self, X):
        return 1 - self.classifier.predict(X)

    def __sklearn_is_fitted__(self):
        return True

    def __getattr__(self, name):
        if name.startswith("__") or name == "classifier":
            raise AttributeError(name)
        return getattr(self.classifier, name)


def test_a_score_lent_by_another_object_is_that_objects():
    # Its score is the classifier's accuracy of the classifier's own
    # predictions, not of the flipped ones.
    flipped = _Flipped(LogisticRegression().fit(X, Y))
    expected = flipped.score(X, Y)
    assert expected > 0.5
    assert ParallelPredictor(flipped, **FORCE).score(X, Y) == expected


def test_a_pipeline_given_an_unfitted_step_is_unfitted_again():
    from sklearn.utils.validation import check_is_fitted

    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y)
    ParallelPredictor(pipe, **FORCE).predict(X)
    pipe.set_params(logisticregression=LogisticRegression())
    with pytest.raises(NotFittedError):
        check_is_fitted(pipe)
    for model in (ParallelPredictor(pipe, **FORCE), ParallelPredictor(pipe)):
        with pytest.raises(NotFittedError):
            check_is_fitted(model)
        with pytest.raises(NotFittedError):
            model.predict(X)


def test_a_fitted_composite_is_asked_without_reading_its_tags(monkeypatch):
    # A pipeline's tags walk its steps, and a pipeline is asked again on
    # every call: its own answer suffices when it says fitted, so that a
    # call reads the tags no more often than the serial call does.
    from sklearn.pipeline import Pipeline

    from sklearn_parpredict import _parallel_predictor as pp

    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y)
    model = ParallelPredictor(pipe)
    model.predict(X[:3])
    tags = Pipeline.__sklearn_tags__
    read = []
    monkeypatch.setattr(
        Pipeline, "__sklearn_tags__", lambda self: read.append(1) or tags(self)
    )
    pipe.predict(X[:3])
    serial = len(read)
    model.predict(X[:3])
    assert len(read) == 2 * serial
    assert pp.is_fitted(pipe)
    assert len(read) == 2 * serial
    pipe.set_params(logisticregression=LogisticRegression())
    assert not pp.is_fitted(pipe)


class _NeedsNoFit(_Flipped):
    """Answers unfitted, but its tags say it needs no fit."""

    def fit(self, X, y=None):
        return self

    def __sklearn_is_fitted__(self):
        return False

    def __sklearn_tags__(self):
        tags = LogisticRegression().__sklearn_tags__()
        tags.requires_fit = False
        return tags


def test_an_estimator_that_needs_no_fit_is_fitted_whatever_it_answers():
    from sklearn_parpredict import _parallel_predictor as pp

    model = _NeedsNoFit(LogisticRegression().fit(X, Y))
    assert pp.is_fitted(model)
    np.testing.assert_array_equal(
        ParallelPredictor(model, **FORCE).predict(X), model.predict(X)
    )


def test_unfitted_raises_not_fitted():
    model = ParallelPredictor(LogisticRegression())
    with pytest.raises(NotFittedError, match="not fitted"):
        model.predict(X)
    assert not hasattr(model, "classes_")
    assert not hasattr(model, "estimator_")


def test_a_model_that_is_not_a_scikit_learn_estimator():
    # scikit-learn 1.7 on raises AttributeError for its tags: the wrapper's
    # predict, score and HTML repr failed where the bare model works.
    model = ByItsMethods().fit(X, Y)
    wrapper = ParallelPredictor(model, **FORCE)
    assert_same_output(wrapper.predict(X), model.predict(X))
    assert wrapper.score(X, Y) == model.score(X, Y)
    assert not is_classifier(wrapper)
    assert "ByItsMethods" in estimator_html_repr(wrapper)
    with pytest.raises(NotFittedError, match="not fitted"):
        ParallelPredictor(ByItsMethods(), **FORCE).predict(X)


def test_fitted_estimators_are_remembered_only_while_they_live():
    from sklearn_parpredict import _parallel_predictor as pp

    trained = LogisticRegression().fit(X, Y)
    assert pp.is_fitted(trained)
    key = id(trained)
    assert pp._seen_fitted[key][0]() is trained
    del trained
    gc.collect()
    # A later estimator at the same address must be checked anew.
    assert key not in pp._seen_fitted
    unfitted = LogisticRegression()
    assert not pp.is_fitted(unfitted)
    assert id(unfitted) not in pp._seen_fitted


def test_a_small_call_like_the_last_goes_straight_to_the_estimator(monkeypatch, caplog):
    from sklearn.utils._param_validation import InvalidParameterError

    from sklearn_parpredict import _parallel_predictor as pp

    trained = LogisticRegression().fit(X, Y)
    model = ParallelPredictor(trained, n_jobs=1)
    engine_calls = []
    real = pp.run_one

    def spy(estimator, method, *args, **kwargs):
        engine_calls.append(method)
        return real(estimator, method, *args, **kwargs)

    monkeypatch.setattr(pp, "run_one", spy)
    small = X[:20]
    for method in ("predict", "predict", "predict_proba", "predict"):
        expected = getattr(trained, method)(small)
        assert_same_output(getattr(model, method)(small), expected)
    # Checked once; the same estimator and settings need no second check.
    assert engine_calls == ["predict"]
    # Anything else goes through the checks and the engine again: other
    # settings (1.0 equals 1, but is no valid n_jobs), input the engine must
    # look at, a debug log to write, chunks of a given size, another
    # estimator.
    model.set_params(n_jobs=1.0)
    with pytest.raises(InvalidParameterError, match="n_jobs"):
        model.predict(small)
    model.set_params(n_jobs=2)
    model.predict(small)
    model.predict(pd.DataFrame(small))
    with caplog.at_level("DEBUG", logger="sklearn_parpredict"):
        model.predict(small)
    assert "too little work" in caplog.records[-1].getMessage()
    assert engine_calls == ["predict"] * 4
    model.set_params(chunk_size=5)
    assert_same_output(model.predict(small), trained.predict(small))
    assert_same_output(model.predict(small), trained.predict(small))
    assert engine_calls == ["predict"] * 6
    model.set_params(chunk_size="auto", estimator=LogisticRegression())
    with pytest.raises(NotFittedError):
        model.predict(small)
    # A refit, or an estimator set or removed, is always the one that runs.
    model.fit(X, 1 - Y)
    for _ in range(2):
        assert_same_output(model.predict(small), 1 - trained.predict(small))
    assert engine_calls == ["predict"] * 7
    model.estimator_ = trained
    assert_same_output(model.predict(small), trained.predict(small))
    del model.estimator_
    with pytest.raises(NotFittedError):
        model.predict(small)
    model.set_params(estimator=trained)
    model.predict(small)
    key = id(model)
    assert pp._passed[key][0]() is model
    del model
    gc.collect()
    assert key not in pp._passed


def test_a_wrapper_and_an_estimator_that_refers_to_it_are_collected():
    trained = LogisticRegression().fit(X, Y)
    model = ParallelPredictor(trained, n_jobs=1)
    trained.wrapper = model  # a cycle, which only the collector breaks
    model.predict(X[:20])
    model.predict(X[:20])
    gone = weakref.ref(model)
    del model, trained
    gc.collect()
    assert gone() is None


def test_wrong_feature_count_same_error_as_serial():
    trained = LogisticRegression().fit(X, Y)
    X_bad = np.hstack([X, X])
    with pytest.raises(ValueError) as serial:
        trained.predict(X_bad)
    for chunk_size in ("auto", 7):
        with pytest.raises(ValueError, match=re.escape(str(serial.value))):
            ParallelPredictor(trained, n_jobs=2, chunk_size=chunk_size).predict(X_bad)


@pytest.mark.parametrize(
    "estimator, attrs",
    [
        (LogisticRegression(), ["classes_", "coef_", "intercept_", "n_features_in_"]),
        (
            RandomForestRegressor(n_estimators=3, random_state=0),
            ["feature_importances_", "estimators_"],
        ),
        (IsolationForest(n_estimators=3, random_state=0), ["offset_", "estimators_"]),
    ],
)
def test_fitted_attributes_are_delegated(estimator, attrs):
    model = ParallelPredictor(estimator).fit(X, Y)
    for attr in attrs:
        value = getattr(model, attr)
        inner = getattr(model.estimator_, attr)
        # Properties (feature_importances_) are computed anew on each access.
        assert value is inner or np.array_equal(value, inner)
    with pytest.raises(AttributeError, match="no attribute 'not_an_attr_'"):
        model.not_an_attr_  # noqa: B018


def test_feature_names_delegated_and_checked():
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    model = ParallelPredictor(LogisticRegression(), **FORCE).fit(frame, Y)
    np.testing.assert_array_equal(model.feature_names_in_, frame.columns)
    renamed = frame.rename(columns={"f0": "other"})
    with pytest.raises(ValueError, match="feature names"):
        model.predict(renamed)


def test_tags_follow_the_estimator():
    assert is_classifier(ParallelPredictor(LogisticRegression()))
    assert is_regressor(ParallelPredictor(LinearRegression()))
    assert not is_classifier(ParallelPredictor(StandardScaler()))
    tags = ParallelPredictor(StandardScaler()).__sklearn_tags__()
    assert tags.transformer_tags is not None


def test_methods_only_where_the_estimator_has_them():
    assert hasattr(ParallelPredictor(LogisticRegression()), "predict_proba")
    assert not hasattr(ParallelPredictor(LinearRegression()), "predict_proba")
    assert not hasattr(ParallelPredictor(LinearRegression()), "transform")
    assert hasattr(ParallelPredictor(StandardScaler()), "transform")
    assert not hasattr(ParallelPredictor(StandardScaler()), "predict")
    with pytest.raises(AttributeError, match="no attribute 'predict'"):
        ParallelPredictor(StandardScaler()).predict  # noqa: B018
    # On the class: the documented method.
    assert ParallelPredictor.predict.__name__ == "predict"
    assert "in parallel over row chunks" in ParallelPredictor.predict.__doc__


def test_partial_fit_where_the_estimator_has_it():
    # A wrapped SGDClassifier had no partial_fit (AttributeError) where the
    # bare one learns batch by batch.
    assert not hasattr(ParallelPredictor(LogisticRegression()), "partial_fit")
    serial = SGDClassifier(random_state=0)
    wrapper = ParallelPredictor(SGDClassifier(random_state=0), **FORCE)
    for rows in (slice(0, 150), slice(150, 300)):
        serial.partial_fit(X[rows], Y[rows], classes=[0, 1])
        assert wrapper.partial_fit(X[rows], Y[rows], classes=[0, 1]) is wrapper
        # Each batch goes on with the same clone; the given one stays unfitted.
        assert_same_output(wrapper.predict(X), serial.predict(X))
    np.testing.assert_array_equal(wrapper.coef_, serial.coef_)
    assert not hasattr(wrapper.estimator, "coef_")
    # An estimator given fitted is the one predicted with: it learns on.
    given = SGDClassifier(random_state=0).partial_fit(X[:150], Y[:150], [0, 1])
    wrapper = ParallelPredictor(given, **FORCE)
    wrapper.partial_fit(X[150:], Y[150:])
    assert wrapper.estimator_ is given
    np.testing.assert_array_equal(given.coef_, serial.coef_)
    assert_same_output(wrapper.predict(X), serial.predict(X))
    with config_context(enable_metadata_routing=True):
        routed = SGDClassifier(random_state=0).set_partial_fit_request(classes=True)
        wrapper = ParallelPredictor(routed, **FORCE)
        wrapper.partial_fit(X[:150], Y[:150], classes=[0, 1])
        np.testing.assert_array_equal(wrapper.classes_, [0, 1])


def test_score_uses_parallel_predictions():
    clf = ParallelPredictor(LogisticRegression(), **FORCE).fit(X, Y)
    assert clf.score(X, Y) == clf.estimator_.score(X, Y)
    weights = np.linspace(0, 1, len(Y))
    assert clf.score(X, Y, sample_weight=weights) == clf.estimator_.score(
        X, Y, sample_weight=weights
    )
    reg = ParallelPredictor(LinearRegression(), **FORCE).fit(XR, YR)
    assert reg.score(XR, YR) == pytest.approx(reg.estimator_.score(XR, YR), rel=1e-12)
    # An estimator's own score is called as it is.
    pca = ParallelPredictor(PCA(n_components=2)).fit(X)
    assert pca.score(X) == pca.estimator_.score(X)


def test_transformer_feature_names_and_set_output():
    frame = pd.DataFrame(
        X, columns=[f"f{i}" for i in range(X.shape[1])], index=np.arange(300) * 2
    )
    model = (
        ParallelPredictor(StandardScaler(), **FORCE)
        .set_output(transform="pandas")
        .fit(frame)
    )
    np.testing.assert_array_equal(model.get_feature_names_out(), frame.columns)
    out = model.transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert_same_output(out, model.estimator_.transform(frame))


def test_global_config_reaches_workers():
    model = ParallelPredictor(StandardScaler(), **FORCE).fit(X)
    with config_context(transform_output="pandas"):
        out = model.transform(X)
        expected = model.estimator_.transform(X)
    assert isinstance(out, pd.DataFrame)
    assert_same_output(out, expected)


def _tree_with_one_class_leaves():
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, Y)
    # Rows in a leaf of one class: predict_log_proba takes log(0) for them.
    assert (tree.predict_proba(X) == 0).any()
    return tree


def _fanned_out(caplog, backend) -> bool:
    kind = "thread" if backend == "threading" else "process"
    return f"tasks on 2 {kind} workers" in caplog.records[-1].getMessage()


@contextlib.contextmanager
def _numpy_raises(how):
    if how == "errstate":
        with np.errstate(divide="raise"):
            yield
    else:
        old = np.seterr(all="raise")
        try:
            yield
        finally:
            np.seterr(**old)


@pytest.mark.parametrize("how", ["errstate", "seterr"])
@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_numpy_error_state_reaches_workers(backend, how, caplog):
    tree = _tree_with_one_class_leaves()
    model = ParallelPredictor(tree, backend=backend, **FORCE)
    caplog.set_level("DEBUG", logger="sklearn_parpredict")
    # NumPy's default state: log(0) warns and gives -inf, in workers too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = tree.predict_log_proba(X)
        assert np.isneginf(expected).any()
        assert_same_output(model.predict_log_proba(X), expected)
        assert _fanned_out(caplog, backend)
    with _numpy_raises(how):
        with pytest.raises(FloatingPointError, match="divide by zero"):
            tree.predict_log_proba(X)
        # Not a silent -inf from workers left with NumPy's defaults.
        with pytest.raises(FloatingPointError, match="divide by zero"):
            model.predict_log_proba(X)
    # The workers' own state was put back after the tasks.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert_same_output(model.predict_log_proba(X), expected)
        assert _fanned_out(caplog, backend)
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "ignore" reached them
        assert_same_output(model.predict_log_proba(X), expected)


class _Unpicklable:
    """An ``np.seterrcall`` log that cannot go to a worker process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.lines = []

    def write(self, line):
        self.lines.append(line)


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_numpy_error_callbacks_in_workers(backend):
    tree = _tree_with_one_class_leaves()
    model = ParallelPredictor(tree, backend=backend, **FORCE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = tree.predict_log_proba(X)

    def fail(kind, flag):
        raise ArithmeticError(f"{kind}!")

    # A callback that raises fails the call as it fails the serial call.
    with np.errstate(divide="call", call=fail):
        with pytest.raises(ArithmeticError, match="divide by zero!"):
            tree.predict_log_proba(X)
        with pytest.raises(ArithmeticError, match="divide by zero!"):
            model.predict_log_proba(X)
    # One that cannot be pickled is called on threads; it does not fail a
    # call on processes, whose workers warn instead, in the caller.
    log = _Unpicklable()
    with np.errstate(divide="log", call=log):
        if backend == "threading":
            assert_same_output(model.predict_log_proba(X), expected)
            assert log.lines and "divide by zero" in log.lines[0]
        else:
            with pytest.warns(RuntimeWarning, match="divide by zero"):
                assert_same_output(model.predict_log_proba(X), expected)


class _SeriesPredictor(BaseEstimator):
    """Returns a pandas Series indexed like its input."""

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        return pd.Series(X.iloc[:, 0].to_numpy() * 2, index=X.index, name="twice")


def test_series_output_keeps_index():
    frame = pd.DataFrame(X, index=[f"row{i}" for i in range(len(X))])
    model = ParallelPredictor(_SeriesPredictor(), **FORCE).fit(frame)
    assert_same_output(model.predict(frame), model.estimator_.predict(frame))


@pytest.mark.parametrize("backend", [None, "loky"])
def test_series_input_of_text_on_processes_by_default_chunking(backend):
    # chunk_size="auto" measures what pickling a row costs, by the input's
    # kind: a Series' dtypes is one dtype, not a DataFrame's list of them.
    from sklearn.feature_extraction.text import TfidfVectorizer

    rng = np.random.RandomState(0)
    titles = pd.Series(rng.choice(["dragon magic", "murder noon", "magic wand"], 3000))
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression())
    pipe.fit(titles, titles == "murder noon")
    model = ParallelPredictor(pipe, n_jobs=2, backend=backend)
    assert_same_output(model.predict(titles), pipe.predict(titles))


def test_batch_dependent_estimator_is_not_split():
    # Random predictions depend on the batch: splitting would change them.
    dummy = DummyClassifier(strategy="stratified", random_state=0).fit(X, Y)
    model = ParallelPredictor(dummy, **FORCE)
    assert_same_output(model.predict(X), dummy.predict(X))


def test_pipeline_grid_search_and_cross_validate():
    pipe = make_pipeline(
        StandardScaler(), ParallelPredictor(LogisticRegression(), **FORCE)
    )
    search = GridSearchCV(pipe, {"parallelpredictor__estimator__C": [0.1, 1.0]}, cv=3)
    search.fit(X, Y)
    assert search.best_params_["parallelpredictor__estimator__C"] in (0.1, 1.0)
    results = cross_validate(
        ParallelPredictor(LogisticRegression(), **FORCE), X, Y, cv=3
    )
    serial = cross_validate(LogisticRegression(), X, Y, cv=3)
    np.testing.assert_array_equal(results["test_score"], serial["test_score"])


class _Offset(BaseEstimator):
    def fit(self, X, y=None, sample_weight=None):
        self.n_features_in_ = X.shape[1]
        self.fit_weighted_ = sample_weight is not None
        return self

    def predict(self, X, offset=0.0):
        return X[:, 0] + offset

    def score_samples(self, X, scale=1.0):
        return X[:, 1] * scale


def test_metadata_routing():
    offset = np.arange(len(X), dtype=float)
    with config_context(enable_metadata_routing=True):
        assert ParallelPredictor(LogisticRegression()).get_metadata_routing()
        try:
            serial = cross_validate(LogisticRegression(), X, Y, cv=3)
        except TypeError:
            # scikit-learn 1.6's cross_validate fails under routing itself.
            with pytest.raises(TypeError):
                cross_validate(ParallelPredictor(LogisticRegression()), X, Y, cv=3)
        else:
            results = cross_validate(
                ParallelPredictor(LogisticRegression(), **FORCE), X, Y, cv=3
            )
            np.testing.assert_array_equal(results["test_score"], serial["test_score"])
        model = _Offset().set_fit_request(sample_weight=True)
        model.set_predict_request(offset=True)
        wrapper = ParallelPredictor(model, **FORCE).fit(X, sample_weight=np.ones(300))
        assert wrapper.estimator_.fit_weighted_
        assert_same_output(wrapper.predict(X, offset=offset), X[:, 0] + offset)
        # scikit-learn routes no parameters of score_samples: they go as given.
        assert_same_output(wrapper.score_samples(X, scale=2.0), X[:, 1] * 2)
        # A parameter the estimator did not request fails as it does in a
        # pipeline.
        unrequested = ParallelPredictor(_Offset(), **FORCE).fit(X)
        with pytest.raises(UnsetMetadataPassedError, match="offset"):
            unrequested.predict(X, offset=offset)
        with pytest.raises(UnsetMetadataPassedError, match="offset"):
            make_pipeline(_Offset()).fit(X).predict(X, offset=offset)


def test_score_routes_its_parameters():
    weights = np.random.RandomState(0).rand(len(Y))
    trained = LogisticRegression().fit(X, Y)
    weighted, plain = trained.score(X, Y, sample_weight=weights), trained.score(X, Y)
    assert weighted != plain
    with config_context(enable_metadata_routing=True):
        # An alias reaches the estimator under its own name.
        trained.set_score_request(sample_weight="w")
        assert ParallelPredictor(trained, **FORCE).score(X, Y, w=weights) == weighted
        # Not requested: refused, as by any scikit-learn meta-estimator.
        trained.set_score_request(sample_weight=False)
        with pytest.raises(TypeError, match="not routed"):
            ParallelPredictor(trained, **FORCE).score(X, Y, sample_weight=weights)
        unset = LogisticRegression().fit(X, Y)
        with pytest.raises(UnsetMetadataPassedError, match="sample_weight"):
            ParallelPredictor(unset, **FORCE).score(X, Y, sample_weight=weights)
        # Cross-validation scores with the weights, as the estimator alone.
        try:
            serial = cross_validate(
                LogisticRegression().set_score_request(sample_weight="w"),
                X,
                Y,
                params={"w": weights},
                cv=3,
            )
        except TypeError:  # scikit-learn 1.6 fails under routing itself
            return
        wrapped = ParallelPredictor(
            LogisticRegression().set_score_request(sample_weight="w"), **FORCE
        )
        try:
            results = cross_validate(wrapped, X, Y, params={"w": weights}, cv=3)
        except TypeError:
            # scikit-learn 1.6 checks the parameters of fit against what the
            # fit of a meta-estimator's consumers requests: it refuses them
            # for its own Pipeline too.
            pipe = make_pipeline(
                LogisticRegression().set_score_request(sample_weight="w")
            )
            with pytest.raises(TypeError, match="not routed"):
                cross_validate(pipe, X, Y, params={"w": weights}, cv=3)
            return
        np.testing.assert_array_equal(results["test_score"], serial["test_score"])


@pytest.mark.parametrize(
    "transformer",
    [StandardScaler(), PCA(n_components=3), FunctionTransformer(np.exp, np.log)],
    ids=["scaler", "pca", "function"],
)
def test_inverse_transform_in_parallel(transformer):
    from sklearn.compose import TransformedTargetRegressor

    fitted = clone(transformer).fit(np.abs(XR) + 1)
    Xt = fitted.transform(np.abs(XR) + 1)
    model = ParallelPredictor(fitted, **FORCE)
    assert_same_output(model.inverse_transform(Xt), fitted.inverse_transform(Xt))
    # A wrapped step keeps its pipeline's inverse_transform, and a target
    # transformer wrapped works as the transformer.
    pipe = make_pipeline(ParallelPredictor(clone(transformer), **FORCE)).fit(
        np.abs(XR) + 1
    )
    serial = make_pipeline(clone(transformer)).fit(np.abs(XR) + 1)
    assert_same_output(pipe.inverse_transform(Xt), serial.inverse_transform(Xt))
    y = np.abs(YR) + 1
    regressors = [
        TransformedTargetRegressor(LinearRegression(), transformer=t).fit(XR, y)
        for t in (ParallelPredictor(StandardScaler(), **FORCE), StandardScaler())
    ]
    assert_same_output(regressors[0].predict(XR), regressors[1].predict(XR))
    # Present only where the estimator has it.
    assert not hasattr(ParallelPredictor(LogisticRegression()), "inverse_transform")


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_missing_values_in_objects_come_back_as_np_nan_itself(backend):
    from sklearn.preprocessing import OrdinalEncoder

    column = np.array(["a", "b", np.nan, "c"] * 30, dtype=object).reshape(-1, 1)
    fitted = OrdinalEncoder().fit(column)
    codes = fitted.transform(column)
    serial = fitted.inverse_transform(codes)
    out = ParallelPredictor(fitted, backend=backend, **FORCE).inverse_transform(codes)
    assert type(out) is type(serial) and out.dtype == serial.dtype
    # Lists compare items by identity first: np.nan equals only itself.
    assert out.tolist() == serial.tolist()
    assert [x is np.nan for x in out.ravel()] == [x is np.nan for x in serial.ravel()]
    # One NaN among the labels, as serially, not one per missing value.
    assert len(set(out.ravel())) == len(set(serial.ravel())) == 4


@pytest.mark.parametrize("backend", ["threading", "loky", "multiprocessing"])
@pytest.mark.parametrize("rows", [200, 50_000], ids=["pickled", "memory-mapped"])
def test_fortran_ordered_rows_reach_workers_in_fortran_order(backend, rows):
    X_f = np.asfortranarray(np.random.default_rng(0).normal(size=(rows, 6)))
    # StandardScaler copies its input as it is laid out.
    fitted = StandardScaler().fit(X_f)
    serial = fitted.transform(X_f)
    assert serial.flags.f_contiguous
    out = ParallelPredictor(fitted, n_jobs=2, backend=backend, chunk_size=rows // 4)
    out = out.transform(X_f)
    assert out.flags.f_contiguous
    assert_same_output(out, serial)
    np.testing.assert_array_equal(out, serial)


@pytest.mark.timeout(120)
def test_nested_in_parallel_grid_search_does_not_deadlock():
    model = ParallelPredictor(
        RandomForestClassifier(n_estimators=5, random_state=0), n_jobs=-1, chunk_size=20
    )
    search = GridSearchCV(model, {"estimator__max_depth": [2, 4]}, cv=2, n_jobs=2)
    search.fit(X, Y)
    serial = GridSearchCV(
        RandomForestClassifier(n_estimators=5, random_state=0),
        {"max_depth": [2, 4]},
        cv=2,
    ).fit(X, Y)
    np.testing.assert_array_equal(
        search.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"]
    )


def test_clone_pickle_and_joblib_dump(tmp_path):
    model = ParallelPredictor(
        RandomForestClassifier(n_estimators=5, random_state=0), **FORCE
    )
    cloned = clone(model)
    assert cloned.get_params()["estimator__n_estimators"] == 5
    assert not hasattr(cloned, "estimator_")
    model.fit(X, Y)
    expected = model.predict_proba(X)
    restored = pickle.loads(pickle.dumps(model))
    assert_same_output(restored.predict_proba(X), expected)
    joblib.dump(model, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    assert_same_output(loaded.predict_proba(X), expected)


def test_html_repr_shows_the_estimator():
    html = estimator_html_repr(
        ParallelPredictor(make_pipeline(StandardScaler(), LogisticRegression()))
    )
    assert "ParallelPredictor" in html
    assert "LogisticRegression" in html


@pytest.mark.parametrize(
    "params, match",
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": "big"}, "chunk_size"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"n_jobs": 1.5}, "n_jobs"),
        ({"backend": 3}, "backend"),
    ],
)
def test_invalid_engine_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        ParallelPredictor(LogisticRegression(), **params).fit(X, Y)
    with pytest.raises(ValueError, match=match):
        ParallelPredictor(LogisticRegression().fit(X, Y), **params).predict(X)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="nope"):
        ParallelPredictor(
            LogisticRegression().fit(X, Y), backend="nope", chunk_size=10
        ).predict(X)


class _BatchSize(BaseEstimator):
    """Predicts, for every row, the number of rows of the call it was in."""

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def predict(self, X):
        return np.full(len(X), len(X))


def test_no_nested_fan_out_inside_joblib_workers():
    from joblib import Parallel, delayed

    model = ParallelPredictor(_BatchSize().fit(X), n_jobs=-1, chunk_size=10)
    # At top level the rows are split...
    assert model.predict(X).max() == 10
    # ...inside a joblib worker they are not: the outer level owns the cores.
    for backend in ("loky", "threading"):
        outputs = Parallel(n_jobs=2, backend=backend)(
            delayed(model.predict)(X) for _ in range(2)
        )
        for out in outputs:
            np.testing.assert_array_equal(out, np.full(len(X), len(X)))


def test_verbose_reports_progress(capsys):
    model = ParallelPredictor(
        LogisticRegression().fit(X, Y),
        n_jobs=2,
        backend="threading",
        chunk_size=30,
        verbose=10,
    )
    model.predict(X)
    captured = capsys.readouterr()
    assert "Done" in captured.err + captured.out
    quiet = ParallelPredictor(
        model.estimator, n_jobs=2, backend="threading", chunk_size=30
    )
    quiet.predict(X)
    captured = capsys.readouterr()
    assert "Done" not in captured.err + captured.out


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_large_outputs_come_back_from_processes_through_files_they_remove(
    backend, monkeypatch
):
    import os

    from sklearn_parpredict import _pickled

    # Workers spool outputs of 640 KiB or more into their own temporary
    # folders; this process, where the outputs are unpickled, maps each
    # file and removes it.
    loaded = []
    load = _pickled._load_returned

    def spy(path, layout):
        loaded.append(path)
        return load(path, layout)

    # Pickled by its module's name for it, which forked workers (the
    # multiprocessing backend) inherit patched too.
    spy.__module__, spy.__qualname__ = _pickled.__name__, "_load_returned"
    monkeypatch.setattr(_pickled, "_load_returned", spy)
    X_big = np.random.default_rng(0).normal(size=(40_000, 6))
    frame = pd.DataFrame(X_big, columns=[f"x{i}" for i in range(6)])
    scaler = StandardScaler().set_output(transform="pandas").fit(frame)
    wrapped = ParallelPredictor(scaler, n_jobs=2, backend=backend, chunk_size=20_000)
    assert_same_output(wrapped.transform(frame), scaler.transform(frame))
    assert frame.iloc[:20_000].to_numpy().nbytes > 640 << 10
    assert len(loaded) == 2
    wrapped = ParallelPredictor(
        PCA(n_components=6).fit(X_big), n_jobs=2, backend=backend, chunk_size=20_000
    )
    out = wrapped.transform(X_big)
    assert_same_output(out, wrapped.estimator.transform(X_big))
    assert len(loaded) == 4
    assert not any(map(os.path.exists, loaded))
    out[:] = 0  # the caller's own output


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_frame_rows_reach_processes_without_joblib_temporary_files(
    backend, monkeypatch
):
    # joblib's pickler writes any array over 1 MB it meets in a task (a
    # DataFrame's blocks) to a temporary file, and the end of the call waited
    # 0.1 s for loky's resource tracker to remove such files.
    from joblib import _memmapping_reducer

    dumped = []
    dump = _memmapping_reducer.dump

    def spy(array, *args, **kwargs):
        dumped.append(array.nbytes)
        return dump(array, *args, **kwargs)

    monkeypatch.setattr(_memmapping_reducer, "dump", spy)
    X, y = make_classification(n_samples=60_000, n_features=6, random_state=0)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(6)])
    model = LogisticRegression().fit(frame, y)
    wrapped = ParallelPredictor(model, n_jobs=2, backend=backend, chunk_size=30_000)
    assert_same_output(wrapped.predict(frame), model.predict(frame))
    assert frame.iloc[:30_000].to_numpy().nbytes > 1e6
    assert dumped == []
    # They went through files of the call's spool, which the call removed
    # (on another thread, outside the call's time).
    import glob
    import os

    from sklearn_parpredict._files import removed, temp_folder

    removed()
    assert glob.glob(os.path.join(temp_folder(), "rows-*")) == []


# Set by the test below in this process: workers forked from it see it set,
# workers that import this module afresh do not.
_SET_IN_CALLER = False


def _set_in_caller(X):
    return np.full((len(X), 1), _SET_IN_CALLER)


# The multiprocessing backend starts its workers the default way of the
# platform: fork on Linux up to Python 3.13, forkserver from 3.14, spawn on
# macOS and Windows. Workers that do not inherit this process must still get
# the model, the shared rows and the pickled frames, and give outputs back.
@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_multiprocessing_workers_not_forked_from_the_caller(method, monkeypatch):
    import multiprocessing

    from sklearn_parpredict import MultiModelPredictor, _rows

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    # What joblib takes from JOBLIB_START_METHOD, read by each Parallel.
    monkeypatch.setattr(
        joblib.parallel, "DEFAULT_MP_CONTEXT", multiprocessing.get_context(method)
    )
    monkeypatch.setattr(sys.modules[__name__], "_SET_IN_CALLER", True)
    X, y = make_classification(n_samples=30_000, n_features=8, random_state=0)
    probe = FunctionTransformer(_set_in_caller).fit(X)
    seen = ParallelPredictor(
        probe, n_jobs=2, backend="multiprocessing", chunk_size=15_000
    ).transform(X)
    assert not seen.any()  # the workers were not forked
    assert X.nbytes >= _rows.SHARE_MIN_BYTES  # rows go through shared files
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    wrapped = ParallelPredictor(
        forest, n_jobs=2, backend="multiprocessing", chunk_size=7_500
    )
    assert_same_output(wrapped.predict_proba(X), forest.predict_proba(X))
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(8)])
    models = [
        (LogisticRegression().fit(frame[["x0", "x1"]], y), ["x0", "x1"], "a"),
        (LinearRegression().fit(frame[["x2"]], frame["x3"]), ["x2"], "b"),
    ]
    multi = MultiModelPredictor(
        models, n_jobs=2, backend="multiprocessing", chunk_size=10_000
    )
    expected = pd.DataFrame(
        {
            "a": models[0][0].predict(frame[["x0", "x1"]]),
            "b": models[1][0].predict(frame[["x2"]]),
        },
        index=frame.index,
    )
    pd.testing.assert_frame_equal(multi.predict(frame), expected)


# Which file a memory map maps is read from /proc (Linux); elsewhere the
# rows are copied, as any array's.
@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/map_files")
@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_workers_map_a_memory_mapped_input_rather_than_a_copy(
    backend, tmp_path, monkeypatch
):
    from sklearn_parpredict import _rows

    X, y = make_classification(n_samples=40_000, n_features=8, random_state=0)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    assert mapped.nbytes >= _rows.SHARE_MIN_BYTES
    created = []
    create = _rows.SharedArray.__init__

    def spy(self, array):
        create(self, array)
        created.append(self._owned)

    monkeypatch.setattr(_rows.SharedArray, "__init__", spy)
    model = LogisticRegression().fit(X, y)
    wrapped = ParallelPredictor(model, n_jobs=2, backend=backend, chunk_size=15_000)
    assert_same_output(wrapped.predict_proba(mapped), model.predict_proba(X))
    # The rows of an array in memory are written to a file for the workers.
    assert_same_output(wrapped.predict_proba(X[5:]), model.predict_proba(X[5:]))
    assert created == [False, True]


@pytest.mark.timeout(120)
def test_calls_from_several_threads_write_into_kept_files_without_mixing_rows(
    monkeypatch,
):
    # The files of one call's rows are kept and written into by the next
    # calls, several at once here: each call must get its own rows back.
    from concurrent.futures import ThreadPoolExecutor

    from sklearn_parpredict import _files, _rows

    taken = []
    reused = _rows.reused

    def spy(nbytes):
        path = reused(nbytes)
        taken.append(path)
        return path

    monkeypatch.setattr(_rows, "reused", spy)
    rng = np.random.default_rng(0)
    scaler = StandardScaler().fit(rng.normal(size=(100, 16)))
    # 1.5 MiB each, shared through files; distinct rows and sizes per call.
    batches = [rng.normal(size=(12_000 + 1_000 * (i % 3), 16)) for i in range(12)]
    assert all(batch.nbytes >= _rows.SHARE_MIN_BYTES for batch in batches)
    wrapped = ParallelPredictor(scaler, n_jobs=2, backend="loky", chunk_size=4_000)
    with ThreadPoolExecutor(3) as threads:
        outputs = list(threads.map(wrapped.transform, batches))
    for batch, out in zip(batches, outputs):
        assert_same_output(out, scaler.transform(batch))
    # Later calls did write into files that earlier ones kept.
    assert any(path is not None for path in taken)
    _files.drop_kept()


def _clip_negative(frame):
    # Edits its input in place, as many a custom transformer does.
    frame.loc[frame["a"] < 0, "a"] = 0.0
    return frame


def _add_column(frame):
    # Sets a column on its input, as many a custom transformer does.
    frame["twice"] = frame["a"] * 2
    return frame


def _shown_categories(method, rows):
    """``method(rows())`` and the categories of the warnings it showed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = method(rows())
    return out, [w.category.__name__ for w in caught]


def test_rows_on_threads_warn_of_setting_a_column_as_their_frame_does():
    # pandas < 3 flags a slice of a frame as a copy of it: a transformer
    # that sets a column on its input raised SettingWithCopyWarning on the
    # chunks run on threads or in this process, where the serial call,
    # given the frame itself, raises none. It raises it on a frame that is
    # such a slice (df[df.a > 0]), and so do the chunks of one.
    frame = pd.DataFrame(np.random.RandomState(0).randn(40, 3), columns=list("abc"))
    model = FunctionTransformer(_add_column).fit(frame)
    wrapper = ParallelPredictor(model, n_jobs=2, backend="threading", chunk_size=10)
    for rows in (lambda: frame.copy(), lambda: frame[frame["a"] > -10]):
        serial, shown = _shown_categories(model.transform, rows)
        out, wrapper_shown = _shown_categories(wrapper.transform, rows)
        assert_same_output(out, serial)
        assert wrapper_shown == shown


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_worker_processes_may_write_to_their_rows(backend):
    import scipy.sparse as sp
    from sklearn.cluster import KMeans

    frame = pd.DataFrame(np.random.RandomState(0).randn(40, 3), columns=list("abc"))
    clip = FunctionTransformer(_clip_negative).fit(frame)
    wrapper = ParallelPredictor(clip, n_jobs=2, backend=backend, chunk_size=10)
    pd.testing.assert_frame_equal(
        wrapper.transform(frame.copy()), clip.transform(frame.copy())
    )
    # KMeans's Cython takes writable sparse input only.
    X = sp.random(40, 5, density=0.5, format="csr", random_state=0)
    kmeans = KMeans(3, n_init=1, random_state=0).fit(X)
    wrapper = ParallelPredictor(kmeans, n_jobs=2, backend=backend, chunk_size=10)
    np.testing.assert_array_equal(wrapper.predict(X), kmeans.predict(X))

"""Scaling out on Ray (optional extra ``[ray]``): joblib's ``ray`` backend.

Skipped when Ray is not installed; CI does not install it.
"""

import joblib
import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (optional extra [ray])")

from _helpers import assert_same_output  # noqa: E402
from ray.util.joblib import register_ray  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402

from sklearn_parpredict import (  # noqa: E402
    MultiModelPredictor,
    ParallelPredictor,
    _sharing,
)

rng = np.random.default_rng(0)
X = rng.normal(size=(500, 4))
Y = (X[:, 0] > 0).astype(int)
FRAME = pd.DataFrame(X, columns=list("abcd"), index=np.arange(500) * 2)


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    register_ray()
    yield
    ray.shutdown()


@pytest.mark.parametrize("frame", [False, True], ids=["numpy", "pandas"])
def test_parallel_predictor_on_ray_equals_serial(frame):
    data = FRAME if frame else X
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(data, Y)
    wrapper = ParallelPredictor(forest, backend="ray", chunk_size=90)
    assert_same_output(wrapper.predict_proba(data), forest.predict_proba(data))
    with joblib.parallel_config(backend="ray"):
        assert_same_output(
            ParallelPredictor(forest, chunk_size=120).predict(data),
            forest.predict(data),
        )


def test_multi_model_predictor_on_ray_equals_serial():
    model = MultiModelPredictor(
        [(LogisticRegression(), ["a", "b"], "y"), (Ridge(), ["c", "d"], "z")],
        backend="ray",
        chunk_size=100,
    ).fit(FRAME, pd.DataFrame({"y": Y, "z": X[:, 3]}, index=FRAME.index))
    assert_same_output(model.predict(FRAME), model.set_params(n_jobs=1).predict(FRAME))


def test_model_put_in_the_object_store_once_per_fitted_model(monkeypatch):
    puts = []
    put = ray.put
    monkeypatch.setattr(ray, "put", lambda obj, **kw: puts.append(obj) or put(obj))
    # Local files cannot reach the workers of a multi-node Ray cluster.
    monkeypatch.setattr(_sharing.ModelHandle, "__reduce__", None)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, Y)
    for _ in range(2):
        out = ParallelPredictor(forest, backend="ray", chunk_size=100).predict(X)
        assert_same_output(out, forest.predict(X))
    assert [type(obj) for obj in puts].count(RandomForestClassifier) == 1

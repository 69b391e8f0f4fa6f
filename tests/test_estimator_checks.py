"""scikit-learn's estimator checks on documented ParallelPredictor instances."""

from sklearn.cluster import KMeans
from sklearn.ensemble import IsolationForest, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_parpredict import ParallelPredictor


def _instances(**engine):
    # Random estimators are seeded: the checks compare two fits.
    return [
        ParallelPredictor(LogisticRegression(), **engine),
        ParallelPredictor(
            RandomForestRegressor(n_estimators=5, random_state=0), **engine
        ),
        ParallelPredictor(StandardScaler(), **engine),
        ParallelPredictor(KMeans(n_init=1, random_state=0), **engine),
        ParallelPredictor(IsolationForest(n_estimators=5, random_state=0), **engine),
        ParallelPredictor(
            make_pipeline(StandardScaler(), LogisticRegression()), **engine
        ),
    ]


# The defaults, and the same estimators forced through threads in tiny chunks
# so that every check also exercises the split-and-join path.
@parametrize_with_checks(
    _instances() + _instances(n_jobs=2, backend="threading", chunk_size=3)
)
def test_sklearn_compatible(estimator, check):
    check(estimator)

"""Parallel batch prediction for scikit-learn estimators.

Wrap any fitted or unfitted estimator in :class:`ParallelPredictor` to run
``predict``, ``predict_proba``, ``transform``, ... over row chunks on a pool of
workers, or run several models on the same data with
:class:`MultiModelPredictor`. Output is identical to the serial call.
"""

from sklearn_parpredict._function import parallel_predict
from sklearn_parpredict._multi_model_predictor import MultiModelPredictor
from sklearn_parpredict._parallel_predictor import ParallelPredictor

__version__ = "0.1.0.dev0"

__all__ = [
    "MultiModelPredictor",
    "ParallelPredictor",
    "parallel_predict",
    "__version__",
]

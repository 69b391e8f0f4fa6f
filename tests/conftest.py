import os
import threading

import pytest
from hypothesis import HealthCheck, settings

# Tests that start workers cannot meet hypothesis' default deadline, and the
# whole suite has to fit a 2-core CI machine: bound the examples.
settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "dev",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Many more examples, for hunting rare failures by hand (not in CI):
# ``HYPOTHESIS_PROFILE=soak``. Tests that set their own ``max_examples``
# (those that start a cluster or many pools) keep it.
settings.register_profile(
    "soak",
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)


@pytest.fixture(autouse=True)
def _no_warm_up_left_running():
    # A warm-up of workers started by an earlier test runs on in the
    # background, and the engine learns nothing from calls that overlap one:
    # a test of what calls teach would depend on the test before it.
    for thread in threading.enumerate():
        if thread.name == "sklearn-parpredict-warm-up":
            thread.join(timeout=60)
    yield

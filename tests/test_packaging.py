"""The wheel users install: what it ships, and that type checkers read its
hints (PEP 561).

The editable install the tests run on hides the package from type checkers
(setuptools finds it through an import hook, which they do not run), so the
wheel is built and unpacked, as ``pip install`` would lay it out.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What pyproject.toml builds the wheel from.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "sklearn_parpredict")

# A user's script: its mistakes are the package's hints at work.
USER_CODE = """\
from sklearn.linear_model import LogisticRegression

from sklearn_parpredict import MultiModelPredictor, ParallelPredictor
from sklearn_parpredict import parallel_predict

model = LogisticRegression()
ParallelPredictor(model, n_jobs=2, chunk_size="auto")
ParallelPredictor(model, n_jobs="two")
MultiModelPredictor([(model, None, "y")], chunk_size=1.5)
parallel_predict(model, [[0.0]], method=len)
"""

MYPY_CONFIG = """\
[mypy]
[mypy-sklearn.*]
ignore_missing_imports = True
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a source checkout")
    # From a copy of what the wheel is made of: setuptools reuses the build/
    # folder it leaves in the tree it builds, files since removed included.
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name)
    shutil.rmtree(source / "sklearn_parpredict" / "__pycache__", ignore_errors=True)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, source],
        check=True,
        timeout=240,
    )
    (built,) = out.glob("*.whl")
    return built


def test_wheel_ships_the_type_marker_and_the_license(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "sklearn_parpredict/py.typed" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_type_checkers_read_the_installed_hints(wheel, tmp_path):
    mypy = shutil.which("mypy", path=os.path.dirname(sys.executable))
    if mypy is None:
        pytest.skip("mypy is not installed")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    (tmp_path / "user.py").write_text(USER_CODE)
    (tmp_path / "mypy.ini").write_text(MYPY_CONFIG)
    # PYTHONPATH puts the unpacked wheel on the search path mypy takes from
    # the interpreter, as site-packages would be; the editable install's
    # import hook is invisible to it.
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [mypy, "--no-incremental", "--config-file", "mypy.ini", "user.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = result.stdout + result.stderr
    assert "py.typed" not in report, report
    errors = [line for line in report.splitlines() if ": error:" in line]
    lines = sorted(int(line.split(":")[1]) for line in errors)
    # Exactly the three mistakes, on lines 8 to 10; the valid call passes.
    assert lines == [8, 9, 10], textwrap.indent(report, "  ")
    assert all("[arg-type]" in line for line in errors), report

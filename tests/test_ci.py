"""The CI contract of the test suite: where ../shared/datasets exists, a dataset test may not skip.

.ci/run sets TFRECSYS_REQUIRE_DATASETS=1 when the datasets lie beside the clone; conftest.py then turns a
skip for an absent dataset into a failure, while other skips and runs without the variable stay as they are.
"""

import pytest

from tests.conftest import REQUIRE_DATASETS_ENV

pytest_plugins = ["pytester"]

SKIPPING_TESTS = """
import pytest

def test_dataset_absent():
    pytest.skip("../shared/datasets/movielens-100k is absent")

@pytest.mark.skipif(True, reason="MovieLens-100K is not at /x/../shared/datasets/movielens-100k")
def test_dataset_absent_by_mark():
    pass

def test_other_skip():
    pytest.skip("needs a GPU")
"""


@pytest.mark.parametrize("required, outcomes", [
    ("1", dict(passed=0, skipped=1, failed=1, errors=1)),  # the mark skips in setup: an error
    (None, dict(passed=0, skipped=3, failed=0, errors=0)),
])
def test_dataset_skips_fail_only_when_datasets_are_required(pytester, monkeypatch, required, outcomes):
    if required is None:
        monkeypatch.delenv(REQUIRE_DATASETS_ENV, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_DATASETS_ENV, required)
    pytester.makeconftest("from tests.conftest import pytest_runtest_makereport  # noqa: F401")
    pytester.makepyfile(test_skips=SKIPPING_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(**outcomes)
    if required:
        result.stdout.fnmatch_lines([f"*{REQUIRE_DATASETS_ENV}=1*this dataset test skipped: *movielens-100k*"])

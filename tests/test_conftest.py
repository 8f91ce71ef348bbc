"""The shared-data policy of ``tests/conftest.py``: the ``shared_data`` marker is enforced, and a missing ../shared
skips locally but fails under CI. The hooks are run in throw-away pytest sessions (pytester) on a copy of conftest."""

from __future__ import annotations

from pathlib import Path

import pytest

import conftest
from conftest import REPO_ROOT, require_shared, running_in_ci, shared_root

INNER_TESTS = """
import pytest


def test_unmarked(cifar10_dir):
    pass


@pytest.fixture
def indirect(imagenette_dir):
    return imagenette_dir


def test_unmarked_through_a_fixture(indirect):
    pass


@pytest.mark.shared_data
def test_marked(cifar_resnet_weights_dir):
    assert cifar_resnet_weights_dir.is_dir()


def test_without_shared_data():
    pass
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("", False), ("false", False), ("0", False)],
)
def test_ci_is_detected_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert running_in_ci() is expected


def test_missing_shared_data_fails_under_ci_and_skips_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "shared" / "data" / "cifar10"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI=true but ../shared is missing at {missing}"):
        require_shared(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=f"needs real data at {missing}"):
        require_shared(missing)
    missing.mkdir(parents=True)
    monkeypatch.setenv("CI", "true")
    assert require_shared(missing) == missing


def test_shared_root_is_the_environment_variable_else_beside_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INVARIANCE_SHARED_DIR", str(tmp_path))
    assert shared_root() == tmp_path
    for unset in (
        lambda: monkeypatch.setenv("INVARIANCE_SHARED_DIR", ""),
        lambda: monkeypatch.delenv("INVARIANCE_SHARED_DIR"),
    ):
        unset()
        assert shared_root() == REPO_ROOT.parent / "shared"


@pytest.mark.parametrize("case", ["missing locally", "missing under CI", "present"])
def test_marker_is_enforced_and_missing_data_skips_or_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str
) -> None:
    pytester.makeconftest(Path(conftest.__file__).read_text())
    pytester.makeini("[pytest]\nmarkers =\n    shared_data: needs ../shared\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    shared = tmp_path / "shared"
    weights = shared / "weights" / "cifar10-resnet"
    if case == "present":
        weights.mkdir(parents=True)
    monkeypatch.setenv("INVARIANCE_SHARED_DIR", str(shared))
    if case == "missing under CI":
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)

    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rA")

    # the unmarked tests error at setup, whether or not the data is there, before their fixtures could skip them
    for name, fixture in (("test_unmarked", "cifar10_dir"), ("test_unmarked_through_a_fixture", "imagenette_dir")):
        result.stdout.fnmatch_lines(
            [
                f"*ERROR at setup of {name} *",
                f"test_inner.py::{name} uses the shared-data fixture(s) {fixture} but is not "
                "marked: add @pytest.mark.shared_data*",
            ]
        )
    marked = {
        "missing locally": ["SKIPPED [[]1[]] test_inner.py:*: needs real data at {weights} (*"],
        "missing under CI": ["*ERROR at setup of test_marked *", "CI=true but ../shared is missing at {weights}: *"],
        "present": ["PASSED test_inner.py::test_marked"],
    }[case]
    result.stdout.fnmatch_lines([line.format(weights=weights) for line in marked])
    counts = {"missing locally": {"skipped": 1}, "missing under CI": {"errors": 3}, "present": {"passed": 2}}[case]
    result.assert_outcomes(**{"passed": 1, "errors": 2, **counts})

"""Shared pytest setup.

Numba's CUDA simulator must be chosen before numba is first imported, so it is
switched on here (unless the environment already says otherwise: run the GPU
tier with ``NUMBA_ENABLE_CUDASIM=0 pytest -m gpu`` on a machine with a GPU).
Tests marked ``gpu`` are skipped without a CUDA device or under the simulator.
Under ``CI`` every other skip is reported as a failure: CI has every test
dependency installed, so a test that needs no GPU and skips there is a check
that silently did not run.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords for item in items):
        return
    from graphrt.cuda_kernels.streams import cuda_available, cuda_unavailable_reason

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        reason = "GPU test: NUMBA_ENABLE_CUDASIM is on (run with NUMBA_ENABLE_CUDASIM=0)"
    elif not cuda_available():
        reason = f"GPU test: no CUDA device ({cuda_unavailable_reason()})"
    else:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Property tests are derandomized in CI (same examples every run; no flaky CI),
# and explore freely on developer machines.
from hypothesis import settings as _hsettings  # noqa: E402

_hsettings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _hsettings.load_profile("ci")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _fail_skip_under_ci(report, gpu: bool) -> None:
    if os.environ.get("CI") and report.skipped and not gpu and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI ({reason}); CI must run every test that needs no GPU"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip_under_ci(outcome.get_result(), gpu="gpu" in item.keywords)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip_under_ci(outcome.get_result(), gpu=False)

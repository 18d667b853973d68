"""Shared pytest setup.

Numba's CUDA simulator must be chosen before numba is first imported, so it is
switched on here (unless the environment already says otherwise: run the GPU
tier with ``NUMBA_ENABLE_CUDASIM=0 pytest -m gpu`` on a machine with a GPU).
Tests marked ``gpu`` are skipped without a CUDA device or under the simulator.
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

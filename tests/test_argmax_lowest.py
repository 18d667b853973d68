"""``sampling.argmax_lowest`` (greedy decoding's tie rule) against a plain-Python definition.

One row goes through ``torch.argmax``, several through ``torch.max(dim)``; both must give the
lowest index among equal maxima, with NaN counting as ``-inf`` and an all ``-inf`` row giving 0,
for either float dtype, into a given ``out`` buffer or not.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphrt import sampling

VALUES = st.sampled_from([-2.0, -1.0, 0.0, 1.0, 2.0, math.inf, -math.inf, math.nan])


def _lowest_max(row: list[float]) -> int:
    clean = [-math.inf if math.isnan(v) else v for v in row]
    return clean.index(max(clean))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5), width=st.integers(1, 40), data=st.data(), dtype=st.sampled_from(["f32", "f64"]),
       with_out=st.booleans())
def test_argmax_lowest_takes_the_lowest_of_equal_maxima(rows: int, width: int, data, dtype: str,
                                                        with_out: bool) -> None:
    values = data.draw(st.lists(st.lists(VALUES, min_size=width, max_size=width), min_size=rows, max_size=rows))
    x = torch.tensor(values, dtype=torch.float32 if dtype == "f32" else torch.float64)
    want = [_lowest_max(r) for r in values]
    for t, expect in ((x, want), (x[0], want[0])):
        out = torch.empty(t.shape[:-1], dtype=torch.int64) if with_out else None
        got = sampling.argmax_lowest(t, out=out)
        assert got.tolist() == expect
        assert out is None or got is out

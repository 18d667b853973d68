"""Value types of the IR: tensors with symbolic shapes, scalars, the KV-cache handle.

A scalar is a rank-0 tensor. Dimensions are ints (static) or strings (symbolic:
``"P"`` prompt length, ``"L"`` tokens of a forward, ``"V"`` vocabulary, ``"?"``
unknown). Two dimensions conflict only when both are static and differ; symbols
name dimensions for readers and for the memory planner.

Dtypes are ``i64`` (token ids, positions, counts), ``bool`` and ``float`` (the
model's floating type: logits, probabilities, confidences; the executor keeps
whatever precision the backbone produced, and float64 where the reference says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

DTYPES = ("i64", "bool", "float")
Dim = Union[int, str]


@dataclass(frozen=True)
class TensorType:
    """``Tensor[dtype, shape]``; ``shape == ()`` is a scalar."""

    dtype: str
    shape: tuple[Dim, ...] = ()

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"tensor dtype: expected one of {DTYPES}, found {self.dtype!r}")
        for d in self.shape:
            if not isinstance(d, (int, str)) or isinstance(d, bool) or (isinstance(d, int) and d < 0):
                raise ValueError(f"tensor shape {self.shape}: expected non-negative ints or symbols, found {d!r}")

    @property
    def rank(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def __str__(self) -> str:
        if not self.shape:
            return self.dtype
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class CacheType:
    """The KV-cache handle of a request; threading it orders cache effects."""

    def __str__(self) -> str:
        return "cache"


Type = Union[TensorType, CacheType]
CACHE = CacheType()


def scalar(dtype: str) -> TensorType:
    """The rank-0 tensor type of ``dtype``."""
    return TensorType(dtype, ())


def tensor(dtype: str, *shape: Dim) -> TensorType:
    """``TensorType(dtype, shape)`` spelled positionally: ``tensor("i64", "L")``."""
    return TensorType(dtype, tuple(shape))


def dims_compatible(a: Dim, b: Dim) -> bool:
    """Whether two dimensions may be equal (only two different static ints conflict)."""
    return not (isinstance(a, int) and isinstance(b, int) and a != b)


def shapes_compatible(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> bool:
    """Same rank and pairwise :func:`dims_compatible`."""
    return len(a) == len(b) and all(dims_compatible(x, y) for x, y in zip(a, b))


def merge_dims(a: Dim, b: Dim) -> Dim:
    """The more informative of two compatible dims (static beats symbolic beats ``?``)."""
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return a if a != "?" else b


def type_to_json(t: Type) -> object:
    """JSON form of a type: ``"cache"`` or ``[dtype, [dims...]]``."""
    if isinstance(t, CacheType):
        return "cache"
    return [t.dtype, list(t.shape)]


def type_from_json(obj: object) -> Type:
    """Inverse of :func:`type_to_json`."""
    if obj == "cache":
        return CACHE
    if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], list)):
        raise ValueError(f"type: expected 'cache' or [dtype, [dims]], found {obj!r}")
    return TensorType(obj[0], tuple(obj[1]))

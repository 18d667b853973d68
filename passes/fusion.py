"""Fusion: the primitive chains of :mod:`graphrt.library` become the fused ops.

Each fused op's chain is written once, as the library helper that policies
call; :data:`FUSIONS` names the helper and the fused op, and the pass traces
the helper into a pattern (:mod:`graphrt.passes.patterns`) each time it runs,
so a changed helper changes what is fused with it. On a match the root becomes
the fused op (its result value, hence every reader, is kept) and the chain's
other nodes are left to dead-code elimination (they stay if something else
reads them). Each fused op's reference in :mod:`graphrt.ops` /
:mod:`graphrt.sampling` is bit-for-bit the chain it replaces:

==================  ===========================================  ====================================
fused op            chain (library helper)                       open in the pattern
==================  ===========================================  ====================================
``sample``          :func:`~graphrt.library.sample_tokens`       ``purpose``
``confidence``      :func:`~graphrt.library.confidence`
``denoise_select``  :func:`~graphrt.library.denoise_select`      ``mask_token_id``, ``threshold`` (or
                                                                 ``count``), the static block length
``verify_accept``   :func:`~graphrt.library.accept_length`
==================  ===========================================  ====================================

A match must also type-check as the fused op, with the root's result type. At
T = 0 the fused ``sample`` is greedy, so the Gumbel noise of the chain is no
longer computed once dead-code elimination has removed it.

Before / after (``sample``, abridged)::

    %7 = clean(%6); %10 = maximum(%temperature, %9); %11 = div(%7, %10)
    %14 = topk(%11, %top_k); %15 = where(%14, %11, %13)
    %17 = top_p(%15, %top_p); %19 = where(%17, %15, %13)
    %20 = noise(%seed, %stream, %0, %19); %21 = add(%19, %20); %22 = argmax(%21)
    %24 = argmax(%6); %27 = gt(%temperature, %26)
    %29 = where(%27, %22, %24)
      ->
    %29: i64 = sample(%6, %0, %seed, %stream, %temperature, %top_k, %top_p) {purpose=0}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from graphrt import library, sampling
from graphrt.builder import GraphBuilder, Var
from graphrt.ir import Graph, NameGen, Node
from graphrt.passes.graph_utils import all_graphs
from graphrt.passes.manager import rewrite_pass
from graphrt.passes.patterns import Match, Pattern, Symbols, trace_pattern
from graphrt.registry import get_op
from graphrt.types import TensorType, scalar, tensor


@dataclass(frozen=True)
class Fusion:
    """One fused op and the library chain it replaces.

    Attributes
    ----------
    op:
        The fused op; the pattern's placeholders and symbols are named for its
        inputs and attributes.
    chain:
        ``chain(b, symbols) -> root``: calls the library helper over placeholders.
    attrs:
        Attributes of the fused op that the pattern fixes (e.g. ``threshold=None``).
    batched:
        Placeholders that also match values with extra leading dims.
    """

    op: str
    chain: Callable[[GraphBuilder, Symbols], Var]
    attrs: dict[str, Any] = field(default_factory=dict)
    batched: tuple[str, ...] = ()

    def trace(self) -> Pattern:
        """The chain as the library builds it now, as a :class:`Pattern`."""
        return trace_pattern(self.op, self.chain, self.batched)

    def rewrite(self, node: Node, found: Match, names: NameGen) -> bool:
        """Turn ``node`` (the matched root) into the fused op; ``False`` if that would not type-check."""
        opdef = get_op(self.op)
        bound = {**self.attrs, **found.symbols}
        attrs = {key: bound[key] for key in opdef.attrs if key in bound}
        inputs = [found.values[name] for name in opdef.inputs if name in found.values]
        try:
            out = opdef.infer([v.type for v in inputs], opdef.resolve_attrs(attrs, f"fusion '{self.op}'"))
        except ValueError:
            return False
        want = node.outputs[0].type
        if len(out) != 1 or not isinstance(out[0], TensorType) or not isinstance(want, TensorType) \
                or out[0].dtype != want.dtype or out[0].rank != want.rank:
            return False
        node.op, node.inputs, node.attrs, node.name = self.op, inputs, attrs, names.fresh(self.op)
        return True


def _sample(b: GraphBuilder, s: Symbols) -> Var:
    io = library.decode_inputs(b)
    logits, positions = b.input("logits", tensor("float", "V")), b.input("positions", scalar("i64"))
    return library.sample_tokens(b, logits, positions, io, purpose=s.int("purpose"))


def _confidence(b: GraphBuilder, s: Symbols) -> Var:
    return library.confidence(b, b.input("logits", tensor("float", "V")), b.input("tokens", scalar("i64")))


def _denoise_threshold(b: GraphBuilder, s: Symbols) -> Var:
    n = s.int("length")
    block, candidates = b.input("block", tensor("i64", n)), b.input("candidates", tensor("i64", n))
    return library.denoise_select(b, block, candidates, b.input("confidence", tensor("float", n)),
                                  s.int("mask_token_id"), s.float("threshold"))


def _denoise_count(b: GraphBuilder, s: Symbols) -> Var:
    block, candidates = b.input("block", tensor("i64", "L")), b.input("candidates", tensor("i64", "L"))
    return library.denoise_select(b, block, candidates, b.input("confidence", tensor("float", "L")),
                                  s.int("mask_token_id"), None, b.input("count", scalar("i64")))


def _verify_accept(b: GraphBuilder, s: Symbols) -> Var:
    return library.accept_length(b, b.input("block", tensor("i64", "L")), b.input("ar_tokens", tensor("i64", "L")))


FUSIONS: tuple[Fusion, ...] = (
    Fusion("sample", _sample, batched=("logits", "positions")),
    Fusion("confidence", _confidence, batched=("logits", "tokens")),
    Fusion("denoise_select", _denoise_threshold),
    Fusion("denoise_select", _denoise_count, {"threshold": None}, batched=("block", "candidates", "confidence")),
    Fusion("verify_accept", _verify_accept),
)
"""The fusions, tried in this order at each root."""


_traced: dict[str, Any] = {"names": (), "patterns": {}}


def _patterns_by_root() -> dict[str, list[tuple[Fusion, Pattern]]]:
    """Root op -> the fusions' patterns, traced again whenever a name in the library (or sampling) is rebound."""
    names = tuple((name, v) for module in (library, sampling) for name, v in vars(module).items())
    old = _traced["names"]
    if len(names) != len(old) or any(a is not c or b is not d for (a, b), (c, d) in zip(names, old)):
        by_root: dict[str, list[tuple[Fusion, Pattern]]] = {}
        for f in FUSIONS:
            pattern = f.trace()
            by_root.setdefault(pattern.root.op, []).append((f, pattern))
        _traced.update(names=names, patterns=by_root)
    return _traced["patterns"]


@rewrite_pass("``info`` counts fusions per fused op")
def fuse(graph: Graph) -> dict[str, int]:
    """Replace every chain of :data:`FUSIONS` by its fused op (see the module docstring)."""
    by_root = _patterns_by_root()
    names: NameGen | None = None
    counts: dict[str, int] = {}
    for g in all_graphs(graph):
        for node in g.nodes:
            for f, pattern in by_root.get(node.op, ()):
                found = pattern.match(node)
                if found is None:
                    continue
                names = names or NameGen.for_graph(graph)
                if f.rewrite(node, found, names):
                    counts[f.op] = counts.get(f.op, 0) + 1
                    break
    return dict(sorted(counts.items()))

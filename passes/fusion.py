"""Fusion: the primitive chains of :mod:`graphrt.library` become the fused ops.

Each pattern starts at the chain's last node (the root), follows producers
back and checks every op, attribute, constant and value identity of the chain
that :mod:`graphrt.library` builds; on a match the root becomes the fused op
(its result value, hence every reader, is kept) and the chain's other nodes
are left to dead-code elimination (they stay if something else reads them).
Each fused op's reference in :mod:`graphrt.ops` / :mod:`graphrt.sampling` is
bit-for-bit the chain it replaces:

=================  ====================================================================
fused op           chain (root last)
=================  ====================================================================
``sample``         ``clean``, ``maximum(T, 1e-30)``, ``div``, ``topk`` + ``where(-inf)``,
                   ``top_p`` + ``where(-inf)``, ``noise``, ``add``, ``argmax``;
                   ``argmax(logits)``; ``where(gt(T, 0.0), sampled, greedy)``
``confidence``     ``gather(softmax(clean(logits)), tokens)``
``denoise_select`` ``masked = eq(block, MASK)``, ``scores = where(masked, conf, -inf)``, then
                   threshold form: ``eq(arange(0), argmax(scores)) | ge(scores, t)``, or
                   count form: ``topk(scores, count)``; ``where(masked & ..., cand, block)``
``verify_accept``  ``sum(cumprod(cast(eq(ar[:-1], block[1:]), i64)))``
=================  ====================================================================

At T = 0 the fused ``sample`` is greedy, so the Gumbel noise of the chain is no
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

import math
from typing import Any, Callable

from graphrt import noise
from graphrt.ir import Graph, NameGen, Node, Value
from graphrt.passes.graph_utils import all_graphs, copy_graph, definitions, fresh_names
from graphrt.passes.manager import PassResult
from graphrt.types import TensorType

Match = tuple[str, list[Value], dict[str, Any]]
_MISSING = object()


def fuse(graph: Graph) -> PassResult:
    """Replace every recognised chain by its fused op (see the module docstring).

    Parameters
    ----------
    graph:
        A verified graph; not modified.

    Returns
    -------
    PassResult
        The fused graph; ``info`` counts fusions per fused op.
    """
    out = copy_graph(graph)
    m = _Matcher(definitions(out))
    names: NameGen | None = None
    counts: dict[str, int] = {}
    for g in all_graphs(out):
        for node in g.nodes:
            for pattern in PATTERNS.get(node.op, ()):
                match = pattern(node, m)
                if match is None:
                    continue
                names = names or fresh_names(out)
                op, inputs, attrs = match
                node.op, node.inputs, node.attrs, node.name = op, inputs, attrs, names.fresh(op)
                counts[op] = counts.get(op, 0) + 1
                break
    return PassResult(out if counts else graph, bool(counts), dict(sorted(counts.items())))


class _Matcher:
    """Producer lookups and constant reads for patterns."""

    def __init__(self, defs: dict[int, Node]) -> None:
        self.defs = defs

    def node(self, v: Value, op: str) -> Node | None:
        n = self.defs.get(id(v))
        return n if n is not None and n.op == op else None

    def const(self, v: Value, dtype: str) -> Any:
        n = self.defs.get(id(v))
        if n is None or n.op != "constant" or n.attrs.get("dtype", "i64") != dtype:
            return _MISSING
        return n.attrs.get("value")

    def is_neg_inf(self, v: Value) -> bool:
        c = self.const(v, "float")
        return isinstance(c, float) and math.isinf(c) and c < 0

    def pair(self, node: Node, first_op: str) -> tuple[Node, Value] | None:
        """For a binary ``node``, the operand produced by ``first_op`` and the other operand (either order)."""
        a, b = node.inputs
        for x, y in ((a, b), (b, a)):
            n = self.node(x, first_op)
            if n is not None:
                return n, y
        return None


def _scalar(v: Value, dtype: str) -> bool:
    return isinstance(v.type, TensorType) and v.type.dtype == dtype and v.type.shape == ()


def _static_len(v: Value) -> int | None:
    t = v.type
    if isinstance(t, TensorType) and t.rank == 1 and isinstance(t.shape[0], int):
        return t.shape[0]
    return None


# ----------------------------------------------------------------------------- sample

def match_sample(root: Node, m: _Matcher) -> Match | None:
    """``where(gt(T, 0.0), argmax(filtered + noise), argmax(logits))`` -> ``sample``.

    Parameters
    ----------
    root:
        The candidate last node of the chain.
    m:
        Producer lookups over the whole graph.

    Returns
    -------
    tuple or None
        ``(fused op, inputs, attributes)`` on a match.
    """
    cond, sampled, greedy = root.inputs
    gt = m.node(cond, "gt")
    g_arg, s_arg = m.node(greedy, "argmax"), m.node(sampled, "argmax")
    if gt is None or g_arg is None or s_arg is None or m.const(gt.inputs[1], "float") != 0.0:
        return None
    temperature, logits = gt.inputs[0], g_arg.inputs[0]
    add = m.node(s_arg.inputs[0], "add")
    if add is None or not _scalar(temperature, "float"):
        return None
    found = _noise_operand(add, m)
    if found is None:
        return None
    nz, kept = found
    seed, stream, positions, _ = nz.inputs
    filt = _filters(kept, m)
    if filt is None:
        return None
    scaled, top_k, top_p = filt
    dv = m.node(scaled, "div")
    if dv is None:
        return None
    cl, mx = m.node(dv.inputs[0], "clean"), m.node(dv.inputs[1], "maximum")
    if cl is None or mx is None or cl.inputs[0] is not logits or not _is_max_eps(mx, temperature, m):
        return None
    purpose = nz.attrs.get("purpose", noise.SAMPLE)
    return "sample", [logits, positions, seed, stream, temperature, top_k, top_p], {"purpose": purpose}


def _noise_operand(add: Node, m: _Matcher) -> tuple[Node, Value] | None:
    a, b = add.inputs
    for kept, g in ((a, b), (b, a)):
        nz = m.node(g, "noise")
        if nz is not None and nz.inputs[3] is kept:
            return nz, kept
    return None


def _filters(kept: Value, m: _Matcher) -> tuple[Value, Value, Value] | None:
    """``where(top_p(k1, p), k1, -inf)`` with ``k1 = where(topk(x, k), x, -inf)`` -> (x, k, p)."""
    w2 = m.node(kept, "where")
    if w2 is None or not m.is_neg_inf(w2.inputs[2]):
        return None
    tp, kept1 = m.node(w2.inputs[0], "top_p"), w2.inputs[1]
    w1 = m.node(kept1, "where")
    if tp is None or w1 is None or tp.inputs[0] is not kept1 or not m.is_neg_inf(w1.inputs[2]):
        return None
    tk, scaled = m.node(w1.inputs[0], "topk"), w1.inputs[1]
    if tk is None or tk.inputs[0] is not scaled:
        return None
    return scaled, tk.inputs[1], tp.inputs[1]


def _is_max_eps(mx: Node, temperature: Value, m: _Matcher) -> bool:
    a, b = mx.inputs
    for t, eps in ((a, b), (b, a)):
        if t is temperature and m.const(eps, "float") == 1e-30:
            return True
    return False


# ----------------------------------------------------------------------------- confidence

def match_confidence(root: Node, m: _Matcher) -> Match | None:
    """``gather(softmax(clean(logits)), tokens)`` -> ``confidence``.

    Parameters
    ----------
    root:
        The candidate last node of the chain.
    m:
        Producer lookups over the whole graph.

    Returns
    -------
    tuple or None
        ``(fused op, inputs, attributes)`` on a match.
    """
    probs, tokens = root.inputs
    sm = m.node(probs, "softmax")
    cl = m.node(sm.inputs[0], "clean") if sm is not None else None
    if cl is None:
        return None
    logits = cl.inputs[0]
    if not isinstance(logits.type, TensorType) or not isinstance(tokens.type, TensorType) \
            or tokens.type.rank != logits.type.rank - 1:
        return None
    return "confidence", [logits, tokens], {}


# ----------------------------------------------------------------------------- denoise_select

def match_denoise_select(root: Node, m: _Matcher) -> Match | None:
    """``where(masked & rule(scores), candidates, block)`` -> ``denoise_select`` (threshold or count form).

    Parameters
    ----------
    root:
        The candidate last node of the chain.
    m:
        Producer lookups over the whole graph.

    Returns
    -------
    tuple or None
        ``(fused op, inputs, attributes)`` on a match.
    """
    chosen, candidates, block = root.inputs
    conj = m.node(chosen, "and")
    if conj is None or not _like(candidates, block, "i64"):
        return None
    for masked, rule in ((conj.inputs[0], conj.inputs[1]), (conj.inputs[1], conj.inputs[0])):
        mask_id = _mask_id(masked, block, m)
        if mask_id is None:
            continue
        found = _threshold_rule(rule, masked, block, m)
        if found is not None and _like(found[0], block, "float"):
            conf, threshold = found
            return "denoise_select", [block, candidates, conf], {"mask_token_id": mask_id, "threshold": threshold}
        found_count = _count_rule(rule, masked, m)
        if found_count is not None and _like(found_count[0], block, "float"):
            conf, count = found_count
            return "denoise_select", [block, candidates, conf, count], {"mask_token_id": mask_id, "threshold": None}
    return None


def _like(v: Value, block: Value, dtype: str) -> bool:
    """Whether ``v`` has ``dtype`` and the rank of ``block`` (no broadcast scalar in the fused op)."""
    t, b = v.type, block.type
    return isinstance(t, TensorType) and isinstance(b, TensorType) and t.dtype == dtype and t.rank == b.rank


def _mask_id(masked: Value, block: Value, m: _Matcher) -> int | None:
    eq = m.node(masked, "eq")
    if eq is None or not isinstance(block.type, TensorType) or block.type.rank < 1:
        return None
    for x, c in ((eq.inputs[0], eq.inputs[1]), (eq.inputs[1], eq.inputs[0])):
        value = m.const(c, "i64")
        if x is block and isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _scores(scores: Value, masked: Value, m: _Matcher) -> Value | None:
    """``where(masked, conf, -inf)`` -> conf."""
    w = m.node(scores, "where")
    if w is None or w.inputs[0] is not masked or not m.is_neg_inf(w.inputs[2]):
        return None
    return w.inputs[1]


def _threshold_rule(rule: Value, masked: Value, block: Value, m: _Matcher) -> tuple[Value, float] | None:
    disj = m.node(rule, "or")
    n = _static_len(block)
    if disj is None or n is None:
        return None
    for forced, over in ((disj.inputs[0], disj.inputs[1]), (disj.inputs[1], disj.inputs[0])):
        ge = m.node(over, "ge")
        eq = m.node(forced, "eq")
        if ge is None or eq is None:
            continue
        threshold = m.const(ge.inputs[1], "float")
        conf = _scores(ge.inputs[0], masked, m)
        if conf is None or isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not _is_forced(eq, ge.inputs[0], n, m):
            continue
        return conf, float(threshold)
    return None


def _is_forced(eq: Node, scores: Value, n: int, m: _Matcher) -> bool:
    """``eq(arange(0) {length=n}, argmax(scores))`` in either order."""
    found = m.pair(eq, "arange")
    if found is None:
        return False
    ar, best = found
    am = m.node(best, "argmax")
    return (am is not None and am.inputs[0] is scores and ar.attrs.get("length") == n
            and m.const(ar.inputs[0], "i64") == 0)


def _count_rule(rule: Value, masked: Value, m: _Matcher) -> tuple[Value, Value] | None:
    tk = m.node(rule, "topk")
    if tk is None:
        return None
    conf = _scores(tk.inputs[0], masked, m)
    return None if conf is None else (conf, tk.inputs[1])


# ----------------------------------------------------------------------------- verify_accept

def match_verify_accept(root: Node, m: _Matcher) -> Match | None:
    """``sum(cumprod(cast(eq(ar[:-1], block[1:]), i64)))`` -> ``verify_accept``.

    Parameters
    ----------
    root:
        The candidate last node of the chain.
    m:
        Producer lookups over the whole graph.

    Returns
    -------
    tuple or None
        ``(fused op, inputs, attributes)`` on a match.
    """
    cp = m.node(root.inputs[0], "cumprod")
    cs = m.node(cp.inputs[0], "cast") if cp is not None else None
    eq = m.node(cs.inputs[0], "eq") if cs is not None and cs.attrs.get("dtype") == "i64" else None
    if eq is None:
        return None
    s0, s1 = m.node(eq.inputs[0], "slice"), m.node(eq.inputs[1], "slice")
    if s0 is None or s1 is None:
        return None
    for head, tail in ((s0, s1), (s1, s0)):
        ar, block = head.inputs[0], tail.inputs[0]
        if _drops(head, last=True) and _drops(tail, last=False) and _same_rank1(ar, block):
            return "verify_accept", [block, ar], {}
    return None


def _drops(s: Node, last: bool) -> bool:
    """Whether slice ``s`` is ``x[:-1]`` (``last``) or ``x[1:]``, for a rank-1 ``x``."""
    if s.attrs.get("squeeze", False):
        return False
    n = s.inputs[0].type.shape[0] if isinstance(s.inputs[0].type, TensorType) else None
    start, stop = s.attrs.get("start", 0), s.attrs.get("stop")
    if last:
        return start == 0 and (stop == -1 or (isinstance(n, int) and n >= 1 and stop == n - 1))
    return start == 1 and (stop is None or (isinstance(n, int) and isinstance(stop, int) and stop >= n))


def _same_rank1(ar: Value, block: Value) -> bool:
    a, b = ar.type, block.type
    return (isinstance(a, TensorType) and isinstance(b, TensorType) and a.rank == 1 and b.rank == 1
            and a.dtype == b.dtype == "i64")


PATTERNS: dict[str, tuple[Callable[[Node, _Matcher], Match | None], ...]] = {
    "where": (match_sample, match_denoise_select),
    "gather": (match_confidence,),
    "sum": (match_verify_accept,),
}
"""Root op -> patterns tried there, in order."""

"""Forward merging: linear self-speculation -> quadratic self-speculation.

A *policy transformation* (opt-in), not a semantics-preserving pass: it
changes the drafts and the forward count. Its contract is that the output
still equals AR output (T = 0, and T > 0 with the same seed), because every
emitted token is still produced by the policy's own acceptance rule from the
causal logits of the verify chain, which are the same logits the linear
policy's verify forward computes.

It applies to any graph of the *linear shape*:

* a prologue with one causal, cache-writing ``forward`` over the ``prompt``;
* then a ``loop`` (the cycle) whose body holds one draft ``loop`` with a
  read-only ``forward`` and a draft threshold of 0 (one forward fills every
  mask), followed by one causal, cache-writing verify ``forward`` over the
  drafted block;
* a carried *seed* that starts the next block and is picked from the AR
  tokens as ``gather(ar_tokens, k)`` (``k`` the accepted-draft count).

Whatever the policy computes from the verify logits (its acceptance rule,
emits, commits, stop condition) is carried over node for node; only the
drafting changes. Before and after (b = block length)::

    prologue: forward(prompt) causal          | forward(prompt + MASK*b) draft_layout
    cycle:    draft loop: forward(block) ro   | forward(b*(b+1) tokens) spec_layout
              forward(block) causal, writes   |   chain rows -> verify logits (same values)
              accept(ar, block) -> k, emit    |   accept(ar, draft) -> k, emit (cloned)
              seed' = ar[k]                   |   draft' = masks of row k, slot 0 := ar[k]

When a graph does not qualify, :class:`NotApplicable` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphrt import noise
from graphrt.backbone import BackboneConfig
from graphrt.builder import GraphBuilder, Var
from graphrt.ir import Graph, Node, Value
from graphrt.library import ban_mask, decode_inputs, sample_tokens
from graphrt.policy import Policy
from graphrt.verify import verify


class NotApplicable(ValueError):
    """The graph is not of the linear self-speculation shape; the message says why."""


@dataclass
class LinearShape:
    """Where the parts of a linear self-speculation graph are."""

    prefill: Node
    cycle: Node
    body: Graph
    draft: Node
    verify: Node
    seed_index: int
    next_seed: Node
    block_length: int


def merge_forwards(policy: Policy) -> Policy:
    """The quadratic policy derived from a linear self-speculation ``policy``.

    The returned policy's ``build`` raises :class:`NotApplicable` (with the
    reason) for a model on which ``policy`` does not have the linear shape.
    """
    def build(config: BackboneConfig) -> Graph:
        return merge_forward_graph(policy.build(config), config)

    def overshoot(config: BackboneConfig) -> int:
        blen = policy.params.get("block_length") or config.block_size
        return 2 * blen + 1

    name = "self-spec-quadratic" if policy.name == "self-spec" else f"{policy.name}+merged"
    return Policy(name, build, dict(policy.params, merged_from=policy.name), overshoot)


def match_linear(graph: Graph) -> LinearShape:
    """Find the linear self-speculation structure of ``graph`` or raise :class:`NotApplicable`."""
    prompt = next((v for v in graph.inputs if v.name == "prompt"), None)
    if prompt is None:
        raise NotApplicable("no 'prompt' graph input: not a decode policy graph")
    forwards = [n for n in graph.nodes if n.op == "forward"]
    if len(forwards) != 1:
        raise NotApplicable(f"expected one prefill forward before the cycle loop, found {len(forwards)}")
    prefill = forwards[0]
    if prefill.inputs[1] is not prompt or prefill.attrs.get("attention", "causal") != "causal" \
            or prefill.attrs.get("write", "all") != "all":
        raise NotApplicable(f"forward '{prefill.name}' is not a causal, cache-writing prefill over the prompt")
    loops = [n for n in graph.nodes if n.op == "loop"]
    if len(loops) != 1:
        raise NotApplicable(f"expected one cycle loop after the prologue, found {len(loops)}")
    cycle = loops[0]
    body = cycle.regions[0]
    drafts = [n for n in body.nodes if n.op == "loop"]
    verifies = [n for n in body.nodes if n.op == "forward"]
    if len(drafts) != 1:
        raise NotApplicable(f"the cycle needs exactly one draft loop, found {len(drafts)}")
    if len(verifies) != 1:
        raise NotApplicable(f"the cycle needs exactly one verify forward, found {len(verifies)}")
    draft, verify_fwd = drafts[0], verifies[0]
    _check_draft(draft)
    _check_draft_start(draft)
    if verify_fwd.attrs.get("attention", "causal") != "causal" or verify_fwd.attrs.get("write", "all") != "all":
        raise NotApplicable(f"verify forward '{verify_fwd.name}' must be causal and write the cache, found "
                            f"attention={verify_fwd.attrs.get('attention', 'causal')}, "
                            f"write={verify_fwd.attrs.get('write', 'all')}")
    if verify_fwd.inputs[1] is not draft.outputs[0]:
        raise NotApplicable(f"verify forward '{verify_fwd.name}' must run on the drafted block "
                            f"(the draft loop's first result)")
    blen = verify_fwd.inputs[1].type.shape[0]  # type: ignore[union-attr]
    if not isinstance(blen, int):
        raise NotApplicable(f"the block length must be static, found {verify_fwd.inputs[1].type}")
    seed_index, next_seed = _find_seed(body, verify_fwd)
    return LinearShape(prefill, cycle, body, draft, verify_fwd, seed_index, next_seed, blen)


def _check_draft(draft: Node) -> None:
    inner = [n for n in draft.regions[0].walk() if n.op == "forward"]
    if len(inner) != 1:
        raise NotApplicable(f"draft loop '{draft.name}' must hold one forward, found {len(inner)}")
    fwd = inner[0]
    if fwd.attrs.get("write", "all") != "none":
        raise NotApplicable(f"draft forward '{fwd.name}' writes the cache; a draft must be read-only")
    thresholds = [n.attrs["threshold"] for n in draft.regions[0].walk() if n.op == "denoise_select"]
    for n in draft.regions[0].walk():
        if n.op == "ge" and n.inputs[1].producer is not None and n.inputs[1].producer.op == "constant":
            thresholds.append(n.inputs[1].producer.attrs["value"])
    if not thresholds:
        raise NotApplicable(f"draft loop '{draft.name}': no denoise threshold found (need threshold 0)")
    if any(t != 0.0 for t in thresholds):
        raise NotApplicable(f"draft loop '{draft.name}' has threshold {thresholds[0]}; forward merging requires "
                            "draft threshold 0 (one forward fills every mask)")


def _check_draft_start(draft: Node) -> None:
    """The draft loop must start from ``[seed, MASK x (b-1)]``: the merged scheme drafts every slot itself."""
    block = draft.inputs[1]
    node = block.producer
    if node is None:
        return
    if node.op == "unsqueeze" or (node.op == "concat" and len(node.inputs) == 2 and node.inputs[1].producer is not None
                                  and node.inputs[1].producer.op == "fill"):
        return
    raise NotApplicable(f"draft loop '{draft.name}' starts from a block made by '{node.op}' node '{node.name}', "
                        "not [seed, MASK x (b-1)]: slots decided before the draft forward (for example looked up "
                        "in the context) would be dropped, since the merged scheme drafts every slot from the "
                        "previous cycle's mask rows")


def _find_seed(body: Graph, verify_fwd: Node) -> tuple[int, Node]:
    """The carried value that seeds the next block: ``gather(ar_tokens, k)`` of the verify's AR tokens."""
    for i, out in enumerate(body.outputs[1:]):
        node = out.producer
        if node is not None and node.op == "gather" and node.inputs[1].type.shape == () \
                and _depends_on(node, verify_fwd.outputs[0]):
            return i, node
    raise NotApplicable("no carried seed of the form gather(ar_tokens, k) computed from the verify logits")


def _depends_on(node: Node, value: Value) -> bool:
    seen: set[int] = set()
    stack = list(node.inputs)
    while stack:
        v = stack.pop()
        if v is value:
            return True
        if id(v) in seen or v.producer is None:
            continue
        seen.add(id(v))
        stack.extend(v.producer.inputs)
    return False


class _Cloner:
    """Copies nodes into a builder, mapping old values to new ones."""

    def __init__(self, b: GraphBuilder, vmap: dict[int, Value]) -> None:
        self.b = b
        self.vmap = vmap

    def value(self, v: Value) -> Value:
        if id(v) not in self.vmap:
            if v.producer is None:
                raise NotApplicable(f"value %{v.name} has no counterpart in the merged graph")
            self.node(v.producer)
        return self.vmap[id(v)]

    def node(self, node: Node) -> None:
        if node.regions:
            raise NotApplicable(f"node '{node.name}' ({node.op}) with regions cannot be carried over")
        ins = [Var(self.b, self.value(v)) for v in node.inputs]
        out = self.b.op(node.op, *ins, **node.attrs)
        outs = [] if out is None else [out] if isinstance(out, Var) else list(out)
        for old, new in zip(node.outputs, outs):
            self.vmap[id(old)] = new.value


def merge_forward_graph(graph: Graph, config: BackboneConfig) -> Graph:
    """Rewrite a linear self-speculation graph into the quadratic scheme (see module docstring)."""
    shape = match_linear(graph)
    blen, mask_id = shape.block_length, config.mask_token_id
    b = GraphBuilder(f"{graph.name}_quadratic")
    io = decode_inputs(b)
    new_inputs = {v.name: v for v in b.graph.inputs}
    vmap: dict[int, Value] = {}
    for v in graph.inputs:
        if v.name not in new_inputs:
            raise NotApplicable(f"graph input %{v.name} is not a standard decode input")
        vmap[id(v)] = new_inputs[v.name]
    top = _Cloner(b, vmap)

    # Prologue: one forward over prompt + b masks replaces the prefill; its causal rows are the prefill logits.
    tokens = b.concat(io.prompt, b.fill(length=blen, value=mask_id, dtype="i64"))
    layout_mask, is_prompt, is_mask = b.draft_layout(io.prompt, length=blen)
    logits, cache = b.forward(io.cache, tokens, b.arange_like(tokens, 0), layout_mask, is_prompt, is_mask,
                              attention="mask", write="mask", adapter="mask")       # [P+b, V]
    n = b.size(io.prompt)
    prompt_rows = (n - 1).unsqueeze() if shape.prefill.attrs.get("logits") == "last" else b.arange_like(io.prompt, 0)
    vmap[id(shape.prefill.outputs[0])] = b.take(logits, prompt_rows).value  # the prefill's logits: [1, V] or [P, V]
    vmap[id(shape.prefill.outputs[1])] = cache.value
    mask_slots = n + b.arange(b.const(0), length=blen)                     # rows = positions P..P+b-1
    first_preds = _draft_predictions(b, io, logits, mask_slots, mask_slots, mask_id)
    init = []
    for i, v in enumerate(shape.cycle.inputs[1:]):
        if i == shape.seed_index:
            seed = Var(b, top.value(v))
            init.append(b.scatter(first_preds, b.const(0), seed))
        else:
            init.append(Var(b, top.value(v)))

    def cycle(*carried: Var) -> list[Var]:
        body = shape.body
        bmap: dict[int, Value] = dict(vmap)
        bmap.update((id(old), new.value) for old, new in zip(body.inputs, carried))
        draft_var = carried[shape.seed_index]                                  # [b] the current draft
        inner = _Cloner(b, bmap)
        chain_pos = Var(b, inner.value(shape.verify.inputs[2]))                # [b]
        lay_mask, chain, row, col = b.spec_layout(length=blen)
        toks = b.where(chain, b.gather(draft_var, row), b.const(mask_id))       # [b(b+1)]
        pos = b.gather(chain_pos, row) + col
        q_logits, q_cache = b.forward(Var(b, inner.value(shape.verify.inputs[0])), toks, pos, lay_mask, chain,
                                      ~chain, attention="mask", write="mask", adapter="mask")  # [b(b+1), V]
        chain_rows = b.arange(b.const(0), length=blen) * (blen + 1)
        bmap[id(shape.verify.outputs[0])] = b.take(q_logits, chain_rows).value  # [b, V] = the verify logits
        bmap[id(shape.verify.outputs[1])] = q_cache.value
        bmap[id(shape.draft.outputs[0])] = draft_var.value
        for node in body.nodes:  # effects keep their order, whether or not an output reads them
            if node.op in ("emit", "commit") and id(node.outputs[0]) not in bmap:
                inner.node(node)
        outs = [Var(b, inner.value(v)) for v in body.outputs]
        k = Var(b, inner.value(shape.next_seed.inputs[1]))
        rows = k * (blen + 1) + 1 + b.arange(b.const(0), length=blen)           # row k's masks
        preds = _draft_predictions(b, io, q_logits, rows, chain_pos + k + 1, mask_id)
        outs[1 + shape.seed_index] = b.scatter(preds, b.const(0), outs[1 + shape.seed_index])
        return outs

    results = b.loop(Var(b, top.value(shape.cycle.inputs[0])), init, cycle, name="cycle")
    for i, (old, new) in enumerate(zip(shape.cycle.outputs, results)):
        if i != shape.seed_index:
            vmap[id(old)] = new.value
    after = graph.nodes[graph.nodes.index(shape.cycle) + 1:]
    for node in after:  # effects after the loop, if any
        if node.op in ("emit", "commit") and id(node.outputs[0]) not in vmap:
            top.node(node)
    return verify(b.build([Var(b, top.value(v)) for v in graph.outputs]))


def _draft_predictions(b: GraphBuilder, io: Any, logits: Var, rows: Var, positions: Var, mask_id: int) -> Var:
    """Draft tokens ``[b]`` from rows ``rows`` of ``logits``, sampled as diffusion candidates.

    ``positions [b]`` are the absolute positions the drafted tokens occupy.
    """
    mask_logits = ban_mask(b, b.take(logits, rows), mask_id)  # [b, V]
    return sample_tokens(b, mask_logits, positions, io, purpose=noise.DENOISE)

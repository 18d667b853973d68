"""Adaptive speculation: the ops a policy uses to choose, per cycle, how to draft.

Two ops, registered like every other op (a type rule and a torch reference):

``draft_choice(stats, lookup_count, start, cost, load) {widths, sources, rule, prior, prior_weight}
-> (source, width)``
    Chooses the next cycle's draft source (:data:`SOURCES`: 0 ``none``, a plain
    AR step; 1 ``lookup``, the context's n-grams; 2 ``diffusion``, a drafter
    forward) and its verified width (the seed plus ``width - 1`` drafts) from
    ``widths``. The decision is a *rule*: a function registered by name
    (:func:`register_rule`) that receives a :class:`ChoiceState` and returns
    ``(source, width)``. The built-in rule is :func:`expected_rate`; a user's
    rule replaces it by name (the ``rule`` attribute), so the graph stays
    serialisable. The op reads its inputs on the host (``host_sync``).

``acceptance_update(stats, source, width, accepted) {decay, idle_decay} -> stats``
    The running acceptance by draft slot, per source, carried from cycle to
    cycle as a loop value ``float[6 D]``, the flattened ``[3, 2, D]`` (a policy
    starts it with ``fill``): ``stats[s, 0, j]`` counts the
    cycles of source ``s`` that reached draft slot ``j`` (every earlier draft
    accepted), ``stats[s, 1, j]`` those that accepted it. Every cycle the
    cycle's source decays by ``decay``, so old evidence fades, and the other
    sources by the slower ``idle_decay``: a source left unused drifts back to
    its prior (which is how it gets tried again), but slowly, so a drafter
    that keeps failing is not retried every few cycles.

The inputs ``cost`` and ``load`` are graph inputs a session fills live
(:class:`graphrt.session.Session`): ``cost`` the backbone's call-time
coefficients (:mod:`graphrt.cost_model`), ``load`` what the *other* requests
put in the current round (:data:`LOAD_FIELDS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from graphrt.cost_model import FEATURES, shape_seconds
from graphrt.registry import REQUIRED, OpDef, register_op
from graphrt.types import TensorType, Type

__all__ = ["SOURCES", "LOAD_FIELDS", "ChoiceState", "Rule", "register_rule", "get_rule", "rule_names",
           "expected_rate", "draft_choice_ref", "draft_choice_host", "acceptance_update_ref", "acceptance_update_host",
           "acceptance_rates", "DEFAULT_PRIOR"]

SOURCES = ("none", "lookup", "diffusion")
"""Draft sources, by index: a plain AR step, the context's n-grams, the diffusion drafter."""
LOAD_FIELDS = ("rows", "width", "spans", "committed")
"""``load``: the other requests' rows in the round's call, their widest forward, the sum of their key spans,
and the tokens they committed in the last round."""
DEFAULT_PRIOR = [0.0, 0.6, 0.7]
"""Acceptance of a draft slot assumed before any evidence, per source."""

Rule = Callable[["ChoiceState"], "tuple[int, int]"]
"""``rule(state) -> (source, width)``."""
_RULES: dict[str, Rule] = {}


@dataclass
class ChoiceState:
    """What a rule sees when it chooses a request's next cycle.

    Attributes
    ----------
    rates:
        ``[3, D]`` estimated probability that draft slot ``j`` is accepted given every earlier
        one was, per source (the running counts with the prior mixed in).
    evidence:
        ``[3, D]`` the (decayed) number of cycles that reached each slot.
    lookup_available:
        Whether the context has an n-gram match (a lookup draft exists this cycle).
    widths:
        The verified widths the policy supports (1 is a plain AR step).
    sources:
        The sources the policy allows (indices into :data:`SOURCES`).
    start:
        The absolute position of the cycle's seed (the request's key span is about that).
    cost:
        The cost model's linear coefficients (:data:`graphrt.cost_model.FEATURES`).
    load:
        The other requests' share of the round (:data:`LOAD_FIELDS`).
    """

    rates: torch.Tensor
    evidence: torch.Tensor
    lookup_available: bool
    widths: tuple[int, ...]
    sources: tuple[int, ...]
    start: int
    cost: tuple[float, ...]
    load: tuple[float, ...]
    # The rates as host floats: a rule asks for a dozen candidates per cycle of every request, and each
    # tensor op would cost more than the arithmetic.
    _rates: list[list[float]] = field(init=False, repr=False, compare=False)
    # Round times by (width, join, adapter): the candidates of a cycle share a few widths.
    _seconds: dict[tuple[int, bool, bool], float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rates = self.rates.double().tolist()
        self._seconds = {}

    def expected_tokens(self, source: int, width: int) -> float:
        """Expected tokens a cycle commits: ``1 + sum_j prod_{i <= j} rates[source, i]`` over its drafts."""
        if source == 0 or width <= 1:
            return 1.0
        total = reach = 1.0
        for p in self._rates[source][:width - 1]:
            reach *= p
            total += reach
        return total

    def round_seconds(self, width: int, join: bool = False, adapter: bool = False) -> float:
        """The cost model's time of this round's call with this request's forward ``width`` tokens wide.

        A call is as wide as its widest row. By default the request is charged as if it set the call's
        width (``T(R + 1, width)``); ``join=True`` prices joining the others' widest forward
        (``T(R + 1, max(W, width))``), where width up to ``W`` looks free. ``adapter=True`` prices the
        forward of a diffusion draft, which runs the draft adapter over the whole call."""
        seconds = self._seconds.get((width, join, adapter))
        if seconds is None:
            rows, wide, spans = self.load[0], self.load[1], self.load[2]
            seconds = shape_seconds(self.cost, int(rows) + 1, int(max(wide, width) if join else width),
                                    int(spans) + self.start + width, adapter)
            seconds = self._seconds[width, join, adapter] = max(seconds, 1e-9)
        return seconds

    def cycle_seconds(self, source: int, width: int) -> float:
        """The cost model's time per round of a cycle of ``source`` at ``width``: one round for a plain step or a
        lookup draft, and for a diffusion draft the mean of its two rounds (the draft forward, with the
        adapter, then the verify forward)."""
        if source == 2 and width > 1:
            return 0.5 * (self.round_seconds(width, adapter=True) + self.round_seconds(width))
        return self.round_seconds(width)

    def candidates(self) -> list[tuple[int, int]]:
        """Every ``(source, width)`` the policy allows this cycle (a lookup only where there is a match)."""
        out = [(0, 1)]
        for s in self.sources:
            if s == 0 or (s == 1 and not self.lookup_available):
                continue
            out += [(s, w) for w in self.widths if w > 1]
        return out


def register_rule(name: str, rule: Rule, *, replace: bool = False) -> str:
    """Register a choice rule under ``name`` (what ``draft_choice``'s ``rule`` attribute names); returns ``name``.

    Raises
    ------
    ValueError
        ``name`` is taken by another function (unless ``replace``).
    """
    if not callable(rule):
        raise ValueError(f"register_rule({name!r}): expected a callable rule(state) -> (source, width), "
                         f"found {type(rule).__name__}")
    if name in _RULES and _RULES[name] is not rule and not replace:
        raise ValueError(f"register_rule: a rule named {name!r} is already registered")
    _RULES[name] = rule
    return name


def get_rule(name: str) -> Rule:
    """The rule registered as ``name``.

    Raises
    ------
    KeyError
        None is; the message lists the registered ones.
    """
    try:
        return _RULES[name]
    except KeyError:
        raise KeyError(f"draft_choice: no rule named {name!r} is registered; registered: {sorted(_RULES)} "
                       f"(register yours with graphrt.adaptive.register_rule)") from None


def rule_names() -> tuple[str, ...]:
    """The registered rules' names."""
    return tuple(_RULES)


def expected_rate(state: ChoiceState) -> tuple[int, int]:
    """The built-in rule: the choice that maximises the round's expected committed tokens per second.

    For each candidate (source ``s``, width ``w``) of this request, given the others' share of the
    round (``load``: ``R`` rows, having committed ``G`` tokens in the last round)::

        rate(s, w) = (G + E(s, w) / n_s) / T_s(R + 1, w, spans)

    where ``E(s, w) = 1 + sum_{j < w} prod_{i <= j} p_s[i]`` is the expected tokens the cycle commits
    (from the per-slot acceptance ``p_s``), ``n_s`` the rounds the cycle takes (1 for a plain step or a
    lookup draft, 2 for a diffusion draft: the draft forward, then the verify forward) and ``T_s`` the
    cost model's time per round of the shared call were it ``w`` tokens wide (for a diffusion draft the
    mean of a round with the draft adapter and one without: :meth:`ChoiceState.cycle_seconds`). Alone
    in the round (``R = G = 0``) this is the request's own tokens per second; among many it weighs the
    tokens a draft adds against the time its width costs everyone in the call. Each request is charged
    the call's width as if it set it, never ``max(W, w)``: were width up to the others' widest ``W``
    free, a crowded round would lock into wide cycles (each request's best answer to wide others is
    wide, so none steps back) even where all stepping narrow is faster. Ties go to the cheaper choice
    (fewer tokens, then a plain step).
    """
    committed = float(state.load[3])
    best, best_key = (0, 1), None
    for s, w in state.candidates():
        rounds = 2.0 if s == 2 else 1.0
        rate = (committed + state.expected_tokens(s, w) / rounds) / state.cycle_seconds(s, w)
        key = (rate, -w, -s)
        if best_key is None or key > best_key:
            best, best_key = (s, w), key
    return best


register_rule("expected-rate", expected_rate)


# ---------------------------------------------------------------------- the ops' references

def acceptance_rates(stats: torch.Tensor, prior: list[float] | tuple[float, ...] = DEFAULT_PRIOR,
                     prior_weight: float = 2.0) -> torch.Tensor:
    """``[3, D]`` per-slot acceptance estimates from ``stats [6 D]`` (flattened ``[3, 2, D]``):
    ``(accepted + w p0) / (reached + w)``."""
    stats = stats.reshape(3, 2, -1)
    p0 = torch.tensor(list(prior), dtype=stats.dtype, device=stats.device)[:, None]  # [3, 1]
    return (stats[:, 1] + prior_weight * p0) / (stats[:, 0] + prior_weight)


def draft_choice_ref(stats: torch.Tensor, lookup_count: torch.Tensor, start: torch.Tensor, cost: torch.Tensor,
                     load: torch.Tensor, *, widths: list[int], sources: list[int], rule: str = "expected-rate",
                     prior: list[float] = DEFAULT_PRIOR, prior_weight: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The meaning of ``draft_choice``: build the :class:`ChoiceState`, ask the rule, check its answer.

    Parameters
    ----------
    stats : torch.Tensor
        ``[6 D]`` running acceptance counts, flattened ``[3, 2, D]`` (see :func:`acceptance_update_ref`).
    lookup_count : torch.Tensor
        Scalar int64: drafts the context lookup found (0: no match).
    start : torch.Tensor
        Scalar int64: the seed's absolute position.
    cost : torch.Tensor
        ``[8]`` float64 cost-model coefficients (:data:`graphrt.cost_model.FEATURES`).
    load : torch.Tensor
        ``[4]`` float64, the other requests' share of the round (:data:`LOAD_FIELDS`).
    widths, sources : list of int
        What the policy supports.
    rule : str
        A registered rule's name.
    prior, prior_weight:
        The acceptance assumed before any evidence, and how many cycles of evidence it is worth.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``(source, width)`` scalar int64 tensors.

    Raises
    ------
    ValueError
        The rule answered a source or width the policy does not support.
    """
    state = ChoiceState(acceptance_rates(stats, prior, prior_weight).cpu(), stats.reshape(3, 2, -1)[:, 0].cpu(),
                        bool(int(lookup_count) > 0), tuple(widths), tuple(sources), int(start),
                        tuple(float(x) for x in cost.tolist()), tuple(float(x) for x in load.tolist()))
    return _ask(state, rule, widths, sources, stats.device)


def draft_choice_host(stats: torch.Tensor, lookup_count: torch.Tensor, start: torch.Tensor, cost: torch.Tensor,
                      load: torch.Tensor, *, widths: list[int], sources: list[int], rule: str = "expected-rate",
                      prior: list[float] = DEFAULT_PRIOR, prior_weight: float = 2.0,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`draft_choice_ref` for host tensors (the op's ``"cpu"`` kernel): the acceptance estimates in NumPy,
    the same numbers bit for bit (the same operations in the same dtype), so the rule sees the same state and
    answers the same, at a third of the cost (a choice runs every cycle of every request)."""
    counts = stats.numpy().reshape(3, 2, -1)
    p0 = np.asarray(prior, dtype=counts.dtype)[:, None]  # [3, 1]
    rates = (counts[:, 1] + prior_weight * p0) / (counts[:, 0] + prior_weight)
    state = ChoiceState(torch.from_numpy(rates), torch.from_numpy(counts[:, 0]), int(lookup_count) > 0,
                        tuple(widths), tuple(sources), int(start), tuple(cost.tolist()), tuple(load.tolist()))
    return _ask(state, rule, widths, sources, stats.device)


def _ask(state: ChoiceState, rule: str, widths: list[int], sources: list[int],
         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ask the rule named ``rule`` about ``state`` and check its answer; ``(source, width)`` scalar int64 tensors."""
    source, width = get_rule(rule)(state)
    source, width = int(source), int(width)
    if width not in widths or (width > 1 and source not in sources) or (width > 1 and source == 0):
        raise ValueError(f"draft_choice rule {rule!r}: expected a source in {[SOURCES[s] for s in sources]} with a "
                         f"width in {list(widths)} (source 'none' with width 1), found source {source} with width "
                         f"{width}")
    if width == 1:
        source = 0
    if device.type == "cpu":  # a third of torch.tensor's cost: two of these run every cycle of every request
        return torch.from_numpy(np.array(source, dtype=np.int64)), torch.from_numpy(np.array(width, dtype=np.int64))
    return (torch.tensor(source, dtype=torch.int64, device=device),
            torch.tensor(width, dtype=torch.int64, device=device))


def acceptance_update_ref(stats: torch.Tensor, source: torch.Tensor, width: torch.Tensor, accepted: torch.Tensor,
                          *, decay: float = 0.9, idle_decay: float = 0.98) -> torch.Tensor:
    """The meaning of ``acceptance_update``: decay the counts, then count this cycle's slots.

    A cycle of ``source`` with ``width - 1`` drafts of which ``accepted`` were accepted reached
    draft slots ``0 .. min(accepted, width - 2)`` and accepted slots ``0 .. accepted - 1``.
    A plain step (``width`` 1) counts nothing. The cycle's source decays by ``decay`` (recent
    cycles weigh most); the others by ``idle_decay``, so a source that was given up keeps its
    evidence for a while and drifts back to its prior only slowly (with 0.98, half of it is
    gone after 34 cycles), which is when it is tried again.

    Returns
    -------
    torch.Tensor
        ``[6 D]`` the new counts, flattened ``[3, 2, D]`` (a new tensor; ``stats`` is not modified).
    """
    flat, stats = stats, stats.reshape(3, 2, -1)
    D = stats.shape[-1]
    j = torch.arange(D, device=stats.device)
    drafted = j < width - 1
    reached = drafted & (j <= accepted)
    took = drafted & (j < accepted)
    onehot = (torch.arange(stats.shape[0], device=stats.device) == source).to(stats.dtype)[:, None, None]  # [3,1,1]
    new = torch.stack([reached, took]).to(stats.dtype)[None]  # [1, 2, D]
    factor = onehot * decay + (1 - onehot) * idle_decay
    return (stats * factor + onehot * new).reshape(flat.shape)


def acceptance_update_host(stats: torch.Tensor, source: torch.Tensor, width: torch.Tensor, accepted: torch.Tensor,
                           *, decay: float = 0.9, idle_decay: float = 0.98) -> torch.Tensor:
    """:func:`acceptance_update_ref` for host tensors, in NumPy (the op's ``"cpu"`` kernel): the same counts, bit
    for bit (the same products in the same dtype), in a few microseconds instead of fifteen tensor ops."""
    counts = stats.numpy().reshape(3, 2, -1)
    s, drafted, k = int(source), max(int(width) - 1, 0), int(accepted)
    dt = counts.dtype.type
    out = counts * dt(idle_decay)
    out[s] = counts[s] * dt(decay)
    out[s, 0, :min(k + 1, drafted)] += dt(1.0)  # slots reached: 0 .. min(k, width - 2)
    out[s, 1, :min(k, drafted)] += dt(1.0)  # slots accepted: 0 .. k - 1
    return torch.from_numpy(out.reshape(stats.shape))


# ---------------------------------------------------------------------- registration

def _float(t: Type, shape: tuple | None, what: str) -> TensorType:
    """``t`` as a float tensor of ``shape``'s rank, whose dimensions equal ``shape``'s where both are ints."""
    if not isinstance(t, TensorType) or t.dtype != "float" or (shape is not None and (
            len(t.shape) != len(shape) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                              for a, b in zip(t.shape, shape)))):
        raise ValueError(f"{what}: expected float{list(shape) if shape else ''}, found {t}")
    return t


def _scalar_i64(t: Type, what: str) -> None:
    if not isinstance(t, TensorType) or t.dtype != "i64" or t.shape:
        raise ValueError(f"{what}: expected a scalar i64, found {t}")


def _check_stats(t: Type) -> TensorType:
    st = _float(t, ("6D",), "stats")
    if not isinstance(st.shape[0], int) or st.shape[0] % 6 or not st.shape[0]:
        raise ValueError(f"stats: expected float[6 D] (a flattened [3, 2, D], D >= 1), found {t}")
    return st


def _choice_infer(ts: list[Type], attrs: dict) -> list[Type]:
    stats, count, start, cost, load = ts
    _check_stats(stats)
    _scalar_i64(count, "lookup_count")
    _scalar_i64(start, "start")
    _float(cost, (len(FEATURES),), "cost")
    _float(load, (len(LOAD_FIELDS),), "load")
    widths, sources = attrs["widths"], attrs["sources"]
    if not (isinstance(widths, list) and widths and all(isinstance(w, int) and w >= 1 for w in widths)):
        raise ValueError(f"attribute widths: expected a non-empty list of ints >= 1, found {widths!r}")
    if not (isinstance(sources, list) and all(s in range(len(SOURCES)) for s in sources)):
        raise ValueError(f"attribute sources: expected a list of indices into {SOURCES}, found {sources!r}")
    D = stats.shape[0] // 6  # type: ignore[union-attr]
    if max(widths) - 1 > D:
        raise ValueError(f"attribute widths: expected widths <= {D + 1} (stats has {D} draft slots), found {widths}")
    if not isinstance(attrs["rule"], str):
        raise ValueError(f"attribute rule: expected a registered rule's name, found {attrs['rule']!r}")
    return [TensorType("i64", ()), TensorType("i64", ())]


def _update_infer(ts: list[Type], attrs: dict) -> list[Type]:
    stats, source, width, accepted = ts
    st = _check_stats(stats)
    for t, what in ((source, "source"), (width, "width"), (accepted, "accepted")):
        _scalar_i64(t, what)
    for name in ("decay", "idle_decay"):
        if not 0.0 <= float(attrs[name]) <= 1.0:
            raise ValueError(f"attribute {name}: expected a number in [0, 1], found {attrs[name]!r}")
    return [st]


register_op(OpDef(
    "draft_choice", ("stats", "lookup_count", "start", "cost", "load"),
    {"widths": REQUIRED, "sources": [0, 1, 2], "rule": "expected-rate", "prior": DEFAULT_PRIOR, "prior_weight": 2.0},
    _choice_infer, draft_choice_ref, frozenset({"host_sync"}),
    doc="Choose the next cycle's draft source (0 none, 1 lookup, 2 diffusion) and verified width from the running "
        "acceptance, the lookup's match, the cost model and the round's load, by the registered rule named 'rule'.",
    kernels={"cpu": lambda device, simulator: draft_choice_host},
))
register_op(OpDef(
    "acceptance_update", ("stats", "source", "width", "accepted"), {"decay": 0.9, "idle_decay": 0.98},
    _update_infer, acceptance_update_ref,
    doc="Running acceptance by draft slot per source, flattened [3, 2, D] (reached, accepted): decay (the cycle's "
        "source by decay, the others by idle_decay), then count the cycle.",
    kernels={"cpu": lambda device, simulator: acceptance_update_host},
))

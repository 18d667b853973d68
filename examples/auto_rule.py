"""Mode ``auto`` with a rule of your own, for ``graphrt generate --policy examples/auto_rule.py``.

A rule is a function ``rule(state) -> (source, width)`` that ``auto`` asks before every cycle
(``state`` is a :class:`graphrt.adaptive.ChoiceState`: the request's acceptance by draft slot per
source, whether the context has an n-gram match, the widths offered, the cost model and the other
requests' share of the round). Whatever it answers, the output is AR's: only the speed changes.

This one never runs the drafter: it drafts from the context where there is a match, as far as
the first slot it expects to fail (acceptance below one half), and takes a plain step otherwise.
``graphrt`` reads the module-level ``policy``.
"""

from graphrt.adaptive import ChoiceState
from graphrt.frontends.policies.auto import auto

NONE, LOOKUP, DIFFUSION = 0, 1, 2


def lookup_or_step(state: ChoiceState) -> tuple[int, int]:
    """Lookup drafts while each slot is more likely accepted than not; otherwise a plain step."""
    if not state.lookup_available:
        return NONE, 1
    good = 0
    for p in state.rates[LOOKUP].tolist():
        if p < 0.5:
            break
        good += 1
    width = max([w for w in state.widths if w - 1 <= good] or [1])
    return (LOOKUP, width) if width > 1 else (NONE, 1)


policy = auto(rule=lookup_or_step, sources=("none", "lookup"))

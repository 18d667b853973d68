"""The one op registry.

Every op has a signature (input names, attributes with defaults), a type/shape
rule, its effects and a torch reference implementation that *defines* its
meaning. The verifier rejects ops that are not registered; users add ops with
:func:`register_op` (a reference is mandatory).

Effects:

* ``reads_cache`` / ``writes_cache``: touches the request's KV cache;
* ``noise``: draws counter-based noise (pure, but worth knowing);
* ``host_sync``: the host must see a value (suspends the program);
* ``emits``: hands tokens to the caller.

Ops with ``writes_cache``, ``host_sync`` or ``emits`` are never removed or
reordered past each other by passes.

An entry is the one path from an op to what runs it: its :attr:`OpDef.reference`
(the meaning), its :attr:`OpDef.out_variant` (the same computation into a given
buffer) and its :attr:`OpDef.kernels` (per device kind, a factory of the kernel-backed
implementation). The built-in ops register on ``import graphrt`` (:mod:`graphrt.ops`,
with :mod:`graphrt.out_variants`); the CUDA kernels register themselves on their
ops' entries when :mod:`graphrt.cuda_kernels` is imported, which the executor does
the first time it lowers for a CUDA device or Numba's simulator. A host kernel
(``"cpu"``) is registered with its op, where the reference's many small tensor ops
cost more on the host than the computation (the context n-gram lookup). Resolving is one
lookup, :meth:`OpDef.implementation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from graphrt.types import Type

EFFECTS = frozenset({"reads_cache", "writes_cache", "noise", "host_sync", "emits"})
KERNEL_MODES = ("auto", "simulator", "off")
"""How :meth:`OpDef.implementation` picks: device kernels on CUDA, kernels on CPU tensors in Numba's
CUDA simulator (tests), or always the reference."""
KernelFactory = Callable[[Any, bool], "Callable[..., Any] | None"]
"""``factory(device, simulator) -> impl or None``: an op's kernel-backed implementation for ``device``
(with the reference's calling convention), or None to run the reference."""
TIERS = ("primitive", "fused", "control")
_REQUIRED = object()


@dataclass(frozen=True)
class OpDef:
    """Definition of one op.

    Attributes
    ----------
    name:
        The op's name in graphs.
    inputs:
        Names of the inputs, in order; a trailing ``"*name"`` accepts any number.
    attrs:
        Attribute names mapped to defaults (:data:`REQUIRED` when mandatory).
    infer:
        ``infer(input_types, attrs) -> output_types``; raises ``ValueError``
        with what was expected and found.
    reference:
        ``reference(*input_tensors, **attrs) -> tensor or tuple``: the meaning of
        the op. ``None`` only for control ops, which the executor interprets.
    effects, tier, doc:
        See the module docstring.
    num_regions:
        How many regions a node of this op owns.
    optional_inputs:
        Trailing inputs a node may leave out.
    out_variant:
        ``variant(*inputs, out=buffer, **attrs) -> buffer``, bit for bit the reference.
    kernels:
        Device kind (``"cuda"``, ``"cpu"``) -> :data:`KernelFactory`.
    """

    name: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any]
    infer: Callable[[list[Type], dict[str, Any]], list[Type]]
    reference: Callable[..., Any] | None
    effects: frozenset[str] = frozenset()
    tier: str = "primitive"
    doc: str = ""
    num_regions: int = 0
    optional_inputs: tuple[str, ...] = field(default=())
    out_variant: Callable[..., Any] | None = None
    kernels: Mapping[str, KernelFactory] = field(default_factory=dict)

    def implementation(self, device: Any, kernels: str = "auto") -> Callable[..., Any] | None:
        """The implementation to run for tensors on ``device`` (None for control ops): one lookup.

        Parameters
        ----------
        device:
            A ``torch.device``.
        kernels:
            ``"auto"`` runs the entry's kernel for the device's kind (``"cuda"``, ``"cpu"``),
            ``"simulator"`` runs its ``"cuda"`` kernel on CPU tensors in Numba's CUDA simulator,
            ``"off"`` always runs the :attr:`reference`; an op without a kernel runs its reference.

        Raises
        ------
        ValueError
            ``kernels`` is not one of :data:`KERNEL_MODES`.
        """
        if kernels not in KERNEL_MODES:
            raise ValueError(f"op '{self.name}': kernels expected 'auto', 'simulator' or 'off', found {kernels!r}")
        factory = self.kernels.get("cuda") if kernels == "simulator" else \
            self.kernels.get(device.type) if kernels == "auto" else None
        if factory is not None:
            impl = factory(device, kernels == "simulator")
            if impl is not None:
                return impl
        return self.reference

    @property
    def variadic(self) -> bool:
        """Whether the last input takes any number of values."""
        return bool(self.inputs) and self.inputs[-1].startswith("*")

    def check_arity(self, n: int) -> str | None:
        """``None`` if ``n`` inputs fit the signature, else the expectation as text."""
        fixed = [i for i in self.inputs if not i.startswith("*")]
        required = len(fixed) - len(self.optional_inputs)
        if self.variadic:
            return None if n >= required else f"at least {required} inputs {tuple(self.inputs)}"
        if required <= n <= len(fixed):
            return None
        if required == len(fixed):
            return f"{len(fixed)} inputs {tuple(self.inputs)}"
        return f"{required} to {len(fixed)} inputs {tuple(self.inputs)}"

    def resolve_attrs(self, attrs: dict[str, Any], where: str) -> dict[str, Any]:
        """Attributes with defaults filled in; unknown or missing ones raise ``ValueError``."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise ValueError(f"{where}: op '{self.name}' has no attribute(s) {sorted(unknown)}; expected {sorted(self.attrs)}")
        out = {}
        for key, default in self.attrs.items():
            if key in attrs:
                out[key] = attrs[key]
            elif default is _REQUIRED:
                raise ValueError(f"{where}: op '{self.name}' needs attribute '{key}'")
            else:
                out[key] = default
        return out


REQUIRED = _REQUIRED
_OPS: dict[str, OpDef] = {}


def register_op(opdef: OpDef, *, replace: bool = False) -> OpDef:
    """Add an op to the registry.

    Raises ``ValueError`` if the name is taken (unless ``replace``), if a
    non-control op has no reference, or if effects/tier are unknown.
    """
    if opdef.name in _OPS and not replace:
        raise ValueError(f"register_op: op '{opdef.name}' is already registered")
    if opdef.reference is None and opdef.tier != "control":
        raise ValueError(f"register_op: op '{opdef.name}' needs a torch reference implementation (it defines the op)")
    bad = set(opdef.effects) - EFFECTS
    if bad:
        raise ValueError(f"register_op: op '{opdef.name}' has unknown effects {sorted(bad)}; expected a subset of {sorted(EFFECTS)}")
    if opdef.tier not in TIERS:
        raise ValueError(f"register_op: op '{opdef.name}' tier: expected one of {TIERS}, found {opdef.tier!r}")
    _OPS[opdef.name] = opdef
    return opdef


def register_impls(name: str, *, out_variant: Callable[..., Any] | None = None,
                   kernels: Mapping[str, KernelFactory] | None = None) -> OpDef:
    """Attach an out-variant and/or device kernels to the registered op ``name``.

    Parameters
    ----------
    name:
        A registered op.
    out_variant:
        ``variant(*inputs, out=buffer, **attrs) -> buffer``, bit for bit the reference.
    kernels:
        Device kind (``"cuda"``) -> :data:`KernelFactory`, merged into the entry's kernels.

    Returns
    -------
    OpDef
        The updated entry.

    Raises
    ------
    KeyError
        ``name`` is not registered.
    """
    opdef = _OPS.get(name)
    if opdef is None:
        raise KeyError(f"register_impls: op '{name}' is not registered")
    changes: dict[str, Any] = {}
    if out_variant is not None:
        changes["out_variant"] = out_variant
    if kernels:
        changes["kernels"] = {**opdef.kernels, **kernels}
    _OPS[name] = opdef = replace(opdef, **changes)
    return opdef


def get_op(name: str) -> OpDef:
    """The definition of ``name``; ``KeyError`` naming close matches when absent."""
    try:
        return _OPS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _OPS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise KeyError(f"op '{name}' is not registered{hint}") from None


def has_op(name: str) -> bool:
    """Whether ``name`` is registered."""
    return name in _OPS


def all_ops() -> dict[str, OpDef]:
    """A copy of the registry."""
    return dict(_OPS)

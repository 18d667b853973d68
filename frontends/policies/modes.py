"""The built-in modes by name: the table the API, the CLI and the server offer, and its registration.

:func:`register_modes` puts every mode of :data:`MODES` into the core's mode registry
(:mod:`graphrt.modes`) as :func:`policy_for_mode` builds it; the policies themselves live in
:mod:`.builtin` (the fixed modes) and :mod:`.auto` (adaptive speculation, built from
:mod:`.builtin`'s pieces), so this module sits above both.
"""

from __future__ import annotations

import functools
from typing import Any

from graphrt.modes import register_mode
from graphrt.policy import Policy

from graphrt.frontends.policies.auto import auto
from graphrt.frontends.policies.builtin import ar, diffusion, prompt_lookup, self_spec, self_spec_lookup

__all__ = ["DRAFTERLESS_MODES", "MASK_DRAFTED_MODES", "MODES", "check_mask_token", "policy_for_mode",
           "register_modes"]

MODES = ("ar", "diffusion", "self-spec", "self-spec-quadratic", "prompt-lookup", "self-spec-lookup", "auto")
MASK_DRAFTED_MODES = ("diffusion", "self-spec", "self-spec-quadratic")  # need a model trained with a mask token
DRAFTERLESS_MODES = ("ar", "prompt-lookup", "self-spec-lookup")  # lossless, and need no drafter


def check_mask_token(mode: str, where: str) -> None:
    """Refuse ``mode`` when it drafts with mask tokens, for a checkpoint (``where``) that has no mask token.

    Raises
    ------
    ValueError
        ``mode`` is one of :data:`MASK_DRAFTED_MODES`; the message suggests :data:`DRAFTERLESS_MODES`.
    """
    if mode in MASK_DRAFTED_MODES:
        raise ValueError(f"mode {mode!r}: drafts by filling mask tokens, but {where} has no mask token (it was not "
                         f"trained to fill masked slots, so its drafts would be noise); use a mode that needs no "
                         f"drafter: {', '.join(DRAFTERLESS_MODES)} (all lossless: they give AR's output)")


def policy_for_mode(mode: str, block_length: int | None = None, threshold: float | None = None) -> Policy:
    """The built-in policy for a mode name of the API/CLI (defaults per ``docs/design.md``)."""
    if mode == "ar":
        return ar()
    if mode == "diffusion":
        return diffusion(block_length, 0.9 if threshold is None else threshold)
    if mode == "self-spec":
        return self_spec(block_length, 0.0 if threshold is None else threshold)
    if mode == "self-spec-quadratic":
        from graphrt.frontends.policies.forward_merging import merge_forwards

        return merge_forwards(self_spec(block_length, 0.0 if threshold is None else threshold))
    if mode == "prompt-lookup":
        return prompt_lookup(block_length)
    if mode == "self-spec-lookup":
        return self_spec_lookup(block_length)
    if mode == "auto":  # adaptive speculation (policies/auto.py)
        return auto(block_length=block_length)
    raise ValueError(f"mode: expected one of {MODES}, found {mode!r}")


def register_modes() -> None:
    """Register every built-in mode (:data:`MODES`) in :mod:`graphrt.modes`, as :func:`policy_for_mode` builds it."""
    for mode in MODES:
        check = functools.partial(_check_model, mode) if mode in MASK_DRAFTED_MODES else None
        register_mode(mode, functools.partial(policy_for_mode, mode), check=check)


def _check_model(mode: str, model: Any) -> None:
    if getattr(model, "has_mask_token", True) is False:
        check_mask_token(mode, getattr(model, "path", "") or "the model")

"""Policies: a decode rule as a function from model facts to a graph.

A :class:`Policy` is what users declare; :func:`graphrt.compile` turns it into
an executable for one model. The graph's inputs must be the standard decode
inputs of :func:`graphrt.library.decode_inputs` (in that order); the policy
emits tokens with ``emit`` and stops when ``emit`` reports the request finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from graphrt.backbone import BackboneConfig
from graphrt.ir import Graph


@dataclass(frozen=True)
class Policy:
    """A named decode policy.

    Attributes
    ----------
    name:
        Mode name (``ar``, ``diffusion``, ``self-spec``, ...).
    build:
        ``build(config) -> Graph`` for a model's :class:`BackboneConfig`.
    params:
        The policy's own parameters, for printing and records.
    overshoot:
        ``overshoot(config) -> int``: how many positions past the token budget
        the policy may forward (a last block decoded in full); the KV cache
        reserves that slack.
    """

    name: str
    build: Callable[[BackboneConfig], Graph]
    params: dict[str, Any] = field(default_factory=dict)
    overshoot: Callable[[BackboneConfig], int] = lambda config: 0

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args})"

"""The frontends: everything above the core, one room per sub-package.

* ``policies/`` -- the built-in modes, forward merging, policy files;
* ``cli/`` -- the ``graphrt`` command;
* ``serving/`` -- the OpenAI-compatible server;
* ``models/`` -- the transformer backbone, its KV cache and compiled shape buckets, checkpoint
  and GGUF loading, config, tokenizer, tensor parallel;
* ``training/`` -- training, evaluation, the release tools of the shipped model;
* ``fixtures`` -- small random checkpoints for tests and examples; ``model/`` -- the shipped
  model's files (data, not code).

Every room may import the core (``graphrt``) and ``graphrt.passes``; the core never imports
this package. It reaches the core as a plugin: :func:`register` is the ``graphrt.plugins``
entry point declared in ``pyproject.toml``, which :mod:`graphrt.modes` calls on the first
lookup of a mode by name or of the model loader behind :func:`graphrt.load`.
"""

from __future__ import annotations

from typing import Any


def register() -> None:
    """Register the built-in modes and the checkpoint loader in the core's registries (:mod:`graphrt.modes`)."""
    from graphrt.frontends.policies.modes import register_modes
    from graphrt.modes import register_loader

    register_modes()
    register_loader(load)


def load(*args: Any, **kwargs: Any) -> Any:
    """:func:`graphrt.frontends.models.loader.load_model` (imported on the first load, not on registration)."""
    from graphrt.frontends.models.loader import load_model

    return load_model(*args, **kwargs)

"""The policies room: the built-in decode modes, the forward-merging transformation, policy files.

* :mod:`.builtin` -- the built-in modes (``ar``, ``diffusion``, ``self-spec``, ...) written with the
  builder; :mod:`.auto` -- adaptive speculation, built from their pieces;
* :mod:`.modes` -- the modes by name and :func:`~.modes.register_modes`, which puts them in the core's
  mode registry;
* :mod:`.forward_merging` -- linear -> quadratic self-speculation (a policy transformation with its
  own contract, not a pass);
* :mod:`.files` -- policies from ``.py`` and ``.json`` files.

May import: the core (``graphrt``) and ``graphrt.passes``; no other room of ``graphrt.frontends``.
The built-in modes' names are re-exported here (``from graphrt.frontends.policies import MODES``).
"""

from graphrt.frontends.policies.builtin import *  # noqa: F401,F403
from graphrt.frontends.policies.builtin import __all__ as _builtin
from graphrt.frontends.policies.modes import *  # noqa: F401,F403
from graphrt.frontends.policies.modes import __all__ as _modes

__all__ = [*_builtin, *_modes]
